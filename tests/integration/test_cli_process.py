"""The proxy as users run it: ``python -m dprl`` in its own process."""

from __future__ import annotations

import signal
import socket
from concurrent.futures import ThreadPoolExecutor

import requests

from ..support.network import proxy_connect
from ..support.proxy_process import ProxyProcess


class _Proxy:  # proxy_connect wants .port
    def __init__(self, port: int) -> None:
        self.port = port


def test_startup_line_names_bind_mode_and_limits():
    proc = ProxyProcess("--max-connections", "7", "--host-limit", "api.example.com=2")
    try:
        line = proc.matching("listening on")[0]
        assert "mode=local" in line and "max-connections=7" in line and "api.example.com=2" in line, line
        assert any(level in line for level in ("INFO",)) and line[:4].isdigit(), line  # timestamped
    finally:
        assert proc.stop() == 0


def test_debug_log_tracks_each_upstream_connection(upstream):
    proc = ProxyProcess("--log-level", "debug")
    try:
        response = requests.get(
            f"http://127.0.0.1:{upstream.port}/x", proxies={"http": proc.url}, headers={"Connection": "close"}
        )
        assert response.status_code == 200
        opened = proc.wait_line(rf"upstream open host=127\.0\.0\.1:{upstream.port} client=127\.0\.0\.1:\d+")
        closed = proc.wait_line(
            rf"upstream close host=127\.0\.0\.1:{upstream.port} client=\S+ parent=- status=200 requests=1 "
            r"duration=[\d.]+ms sent=(\d+) received=(\d+)"
        )
        assert opened and int(closed[1]) > 0 and int(closed[2]) > 0
    finally:
        proc.stop()


def test_refusals_are_logged_in_aggregate(upstream):
    proc = ProxyProcess("--max-connections", "1", "--log-level", "info", env={"DPRL_REFUSAL_LOG_INTERVAL": "0.5"})
    try:
        proxy = _Proxy(proc.port)
        holder, head = proxy_connect(proxy, f"127.0.0.1:{upstream.port}")
        assert b" 200 " in head
        for _ in range(50):
            sock, head = proxy_connect(proxy, f"127.0.0.1:{upstream.port}")
            assert b" 500 " in head
            sock.close()
        line = proc.wait_line(rf"refused (\d+) connections to 127\.0\.0\.1:{upstream.port}: limit 1 reached")
        assert line[1] == "50", line[0]
        assert len(proc.matching("refused")) == 1, proc.matching("refused")
        assert "WARNING" in line.string
        holder.close()
    finally:
        proc.stop()


def test_sigterm_lets_open_connections_finish_then_exits(upstream):
    proc = ProxyProcess("--shutdown-timeout", "10")
    try:
        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(
                requests.get, f"http://127.0.0.1:{upstream.port}/hold", proxies={"http": proc.url}, timeout=30
            )
            upstream.wait_active(1)
            proc.proc.send_signal(signal.SIGTERM)
            proc.wait_line("stopped accepting; 1 client connection")
            # no longer accepting
            try:
                socket.create_connection(("127.0.0.1", proc.port), timeout=2).close()
                accepted = True
            except OSError:
                accepted = False
            assert not accepted, "the listener is still open during shutdown"
            upstream.release()
            assert future.result().text == "held"
        assert proc.stop() == 0
    finally:
        proc.stop()


def test_shutdown_timeout_closes_what_is_still_open(upstream):
    proc = ProxyProcess("--shutdown-timeout", "0.5")
    proxy = _Proxy(proc.port)
    sock, head = proxy_connect(proxy, f"127.0.0.1:{upstream.port}")
    assert b" 200 " in head
    upstream.wait_active(1)
    assert proc.stop(signal.SIGINT, timeout=10) == 0
    assert sock.recv(10) == b""  # the tunnel was closed by the proxy
    sock.close()
    proc.wait_line("dprl stopped")
