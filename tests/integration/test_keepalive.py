"""Slots that a dead peer cannot hold for ever: TCP keepalive and the upstream response timeout."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from ..support.network import proxy_connect, raw_request, wait_for
from ..support.upstream import read_request_head

ROOT = Path(__file__).resolve().parents[2]


def _socket_options(sock: socket.socket) -> dict[str, int]:
    return {
        "keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        "idle": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        "interval": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
        "user_timeout": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
    }


@pytest.mark.parametrize(("keepalive", "expected"), [(60, (1, 60, 10, 90000)), (0, (0, None, None, 0))])
def test_client_and_upstream_sockets_carry_the_keepalive_options(make_proxy, echo_server, keepalive, expected):
    proxy = make_proxy(tcp_keepalive=keepalive)
    sock, head = proxy_connect(proxy, f"127.0.0.1:{echo_server.port}")
    assert head.startswith(b"HTTP/1.1 200")
    (session,) = proxy._server.sessions  # the proxy runs in this process: look at its sockets
    # the client's from the listener at once; the upstream's once the connection lived a second
    upstream = session.upstream.endpoint.sock
    wait_for(lambda: _socket_options(upstream)["keepalive"] == expected[0], what="the upstream's keepalive")
    for endpoint in (session.client, session.upstream.endpoint):
        options = _socket_options(endpoint.sock)
        assert options["keepalive"] == expected[0], (endpoint.side, options)
        if keepalive:
            seen = (
                options["keepalive"],
                options["idle"],
                options["interval"],
                options["user_timeout"],
            )
            assert seen == expected, (endpoint.side, options)
        else:
            assert options["user_timeout"] == 0, (endpoint.side, options)
    sock.close()


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2 for a network namespace"
)
def test_a_vanished_peer_gives_its_slot_back_through_keepalive():
    """No FIN, no RST: the namespace's loopback goes down under an open tunnel."""
    namespace = f"dprl-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", namespace, "ip", "link", "set", "lo", "up"], check=True)
        result = subprocess.run(
            ["ip", "netns", "exec", namespace, sys.executable, "-m", "tests.support.vanishing_peer"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    held = report["held_for"]
    # idle 1 s, then 3 probes 1 s apart (TCP_USER_TIMEOUT 4 s): the slot is back within ~5 s
    assert held["keepalive"] is not None and held["keepalive"] <= 8, report
    assert held["no_keepalive"] is None, f"without keepalive the slot should stay held: {report}"


def test_upstream_that_never_answers_gets_504_and_the_slot_back(make_proxy, make_origin):
    def serve(conn, index):
        read_request_head(conn)
        conn.recv(1)  # holds the connection open, never answers

    origin = make_origin(serve)
    proxy = make_proxy(upstream_timeout=0.5)
    started = time.monotonic()
    reply = raw_request(
        proxy.port, f"GET http://{origin.authority}/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    assert reply.startswith(b"HTTP/1.1 504"), reply[:80]
    assert b"no response within 0.5s" in reply
    assert time.monotonic() - started < 5
    wait_for(lambda: not proxy.limiter.process_counts(), what="the slot released")


def test_upstream_timeout_does_not_cut_a_streaming_response(make_proxy, make_origin):
    def serve(conn, index):
        read_request_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        for i in range(6):  # 1.2 s of body, more than twice the response timeout
            conn.sendall(b"2\r\n%02d\r\n" % i)
            time.sleep(0.2)
        conn.sendall(b"0\r\n\r\n")

    origin = make_origin(serve)
    proxy = make_proxy(upstream_timeout=0.5)
    reply = raw_request(
        proxy.port, f"GET http://{origin.authority}/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    assert reply.startswith(b"HTTP/1.1 200"), reply[:80]
    assert reply.endswith(b"2\r\n05\r\n0\r\n\r\n"), reply[-40:]
