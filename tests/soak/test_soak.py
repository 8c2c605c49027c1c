"""Soak and load: bounded, loopback only, in the ``soak`` group (scripts/test runs it).

Connections are churned through one proxy process with random client aborts, upstream
resets and slow readers; afterwards no slot is held, descriptors are back where they
started and RSS has not grown. Sizes can be lowered with DPRL_SOAK_CONNECTIONS.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import random
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import types
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pytest

from ..support.network import read_head, wait_for
from ..support.proxy_process import ProxyProcess
from ..support.redis_server import leftover_keys

pytestmark = pytest.mark.soak

CONNECTIONS = int(os.environ.get("DPRL_SOAK_CONNECTIONS", "20000"))
RST = b"\x01\x00\x00\x00\x00\x00\x00\x00"


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def _slots_held(proc: ProxyProcess) -> str:
    start = len(proc.lines)
    proc.proc.send_signal(signal.SIGUSR1)
    return proc.wait_line(r"status: clients=(\d+) slots-held=(\S+)", start=start)[2]


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


class Scenarios:
    """One connection each; returns a short outcome name for the tally."""

    def __init__(self, proxy_port: int, upstream_port: int) -> None:
        self.proxy = ("127.0.0.1", proxy_port)
        self.target = f"127.0.0.1:{upstream_port}"
        self.capped = f"localhost:{upstream_port}"  # limit 2: refusals happen all the time

    def connect(self) -> socket.socket:
        sock = socket.create_connection(self.proxy, timeout=20)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def plain(self) -> str:
        with self.connect() as sock:
            sock.sendall(f"GET http://{self.target}/p HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".encode())
            assert _read_all(sock).endswith(b"ok:/p")
        return "plain"

    def keep_alive(self) -> str:
        with self.connect() as sock:
            for i in range(3):
                close = "Connection: close\r\n" if i == 2 else ""
                sock.sendall(f"GET http://{self.target}/k{i} HTTP/1.1\r\nHost: h\r\n{close}\r\n".encode())
                head = read_head(sock)
                assert head.startswith(b"HTTP/1.1 200"), head
                sock.recv(int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]), socket.MSG_WAITALL)
        return "keep-alive"

    def tunnel(self) -> str:
        with self.connect() as sock:
            sock.sendall(f"CONNECT {self.target} HTTP/1.1\r\n\r\n".encode())
            assert read_head(sock).startswith(b"HTTP/1.1 200")
            sock.sendall(b"GET /t HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            assert _read_all(sock).endswith(b"ok:/t")
        return "tunnel"

    def capped_host(self) -> str:
        with self.connect() as sock:
            sock.sendall(f"GET http://{self.capped}/c HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".encode())
            status = _read_all(sock)[9:12]
            assert status in (b"200", b"500"), status
        return "refused" if status == b"500" else "capped-ok"

    def client_abort_mid_response(self) -> str:
        sock = self.connect()
        sock.sendall(f"GET http://{self.target}/bytes?n=2000000 HTTP/1.1\r\nHost: h\r\n\r\n".encode())
        sock.recv(1000)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST)
        sock.close()
        return "abort-response"

    def client_abort_mid_body(self) -> str:
        sock = self.connect()
        sock.sendall(
            f"POST http://{self.target}/echo HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\npartial".encode()
        )
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST)
        sock.close()
        return "abort-body"

    def client_abort_tunnel(self) -> str:
        sock = self.connect()
        sock.sendall(f"CONNECT {self.target} HTTP/1.1\r\n\r\n".encode())
        read_head(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST)
        sock.close()
        return "abort-tunnel"

    def upstream_reset(self) -> str:
        with self.connect() as sock:
            sock.sendall(f"GET http://{self.target}/reset HTTP/1.1\r\nHost: h\r\n\r\n".encode())
            with contextlib.suppress(ConnectionResetError):
                _read_all(sock)
        return "upstream-reset"

    def slow_reader(self) -> str:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # before connect: a small window
            sock.settimeout(20)
            sock.connect(self.proxy)
            sock.sendall(
                f"GET http://{self.target}/bytes?n=200000 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".encode()
            )
            total = 0
            while chunk := sock.recv(4096):
                total += len(chunk)
                time.sleep(0.0002)
            assert total > 200000
        return "slow-reader"

    def run_one(self, rng: random.Random) -> str:
        return rng.choices(
            [
                self.plain,
                self.keep_alive,
                self.tunnel,
                self.capped_host,
                self.client_abort_mid_response,
                self.client_abort_mid_body,
                self.client_abort_tunnel,
                self.upstream_reset,
                self.slow_reader,
            ],
            weights=[30, 10, 15, 15, 8, 6, 6, 6, 4],
        )[0]()


def _churn_part(proxy_port: int, upstream_port: int, first: int, count: int, seed: int) -> dict[str, int]:
    scenarios = Scenarios(proxy_port, upstream_port)
    tally: dict[str, int] = {}
    lock = threading.Lock()

    def one(i: int) -> None:
        outcome = scenarios.run_one(random.Random(seed * 1_000_003 + i))
        with lock:
            tally[outcome] = tally.get(outcome, 0) + 1

    with ThreadPoolExecutor(16) as pool:
        for future in [pool.submit(one, i) for i in range(first, first + count)]:
            future.result()
    return tally


def _churn(proc: ProxyProcess, upstream_port: int, count: int, seed: int) -> dict[str, int]:
    """``count`` connections from two client processes of 16 threads each."""
    half = count // 2
    parts = [(0, half), (half, count - half)]
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
        results = [pool.submit(_churn_part, proc.port, upstream_port, first, n, seed) for first, n in parts]
        tally: dict[str, int] = {}
        for result in results:
            for outcome, n in result.result().items():
                tally[outcome] = tally.get(outcome, 0) + n
    return tally


@pytest.fixture
def upstream_process():
    """The counting upstream in a process of its own, so the load generator has this one."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.upstream"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=str(Path(__file__).resolve().parents[2]),  # the repository: python -m tests.support.upstream
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    yield types.SimpleNamespace(port=port)
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(10)


def _soak(proc: ProxyProcess, upstream, count: int) -> tuple[dict[str, int], int, int, int, int]:
    warm_up = max(500, count // 10)
    _churn(proc, upstream.port, warm_up, seed=1)
    wait_for(lambda: _slots_held(proc) == "none", timeout=30, what="slots released after warm-up")
    # descriptors are counted from here: the Redis connection and the like exist by now
    start_fds = _fds(proc.proc.pid)
    warm_rss = _rss(proc.proc.pid)
    started = time.monotonic()
    tally = _churn(proc, upstream.port, count - warm_up, seed=2)
    elapsed = time.monotonic() - started
    wait_for(lambda: _slots_held(proc) == "none", timeout=30, what="every slot released")
    wait_for(lambda: _fds(proc.proc.pid) <= start_fds, timeout=30, what="descriptors back to the start")
    end_rss = _rss(proc.proc.pid)
    print(
        f"\nsoak: {count} connections ({count - warm_up} measured in {elapsed:.1f}s) {tally}; "
        f"fds {start_fds} -> {_fds(proc.proc.pid)}; RSS after warm-up {warm_rss} KiB -> {end_rss} KiB "
        f"({(end_rss - warm_rss) / warm_rss:+.1%})"
    )
    return tally, start_fds, _fds(proc.proc.pid), warm_rss, end_rss


def test_soak_local_mode(upstream_process):
    upstream = upstream_process
    proc = ProxyProcess("--max-connections", "200", "--host-limit", f"localhost:{upstream.port}=2")
    try:
        tally, start_fds, end_fds, warm_rss, end_rss = _soak(proc, upstream, CONNECTIONS)
        assert tally.get("refused", 0) > 0 and tally.get("tunnel", 0) > 0
        assert end_fds <= start_fds
        assert end_rss < warm_rss * 1.10, f"RSS grew from {warm_rss} to {end_rss} KiB after warm-up"
    finally:
        assert proc.stop() == 0


def test_soak_distributed_mode(upstream_process, redis_server, redis_prefix):
    upstream = upstream_process
    proc = ProxyProcess(
        "--max-connections",
        "200",
        "--host-limit",
        f"localhost:{upstream.port}=2",
        "--redis-url",
        redis_server.url,
        "--redis-prefix",
        redis_prefix,
        "--lease-ttl",
        "3",
    )
    try:
        tally, start_fds, end_fds, warm_rss, end_rss = _soak(proc, upstream, max(2000, CONNECTIONS // 4))
        assert tally.get("refused", 0) > 0
        assert end_fds <= start_fds
        assert end_rss < warm_rss * 1.10, f"RSS grew from {warm_rss} to {end_rss} KiB after warm-up"
        client = redis_server.client()
        wait_for(lambda: not leftover_keys(client, redis_prefix), timeout=5, what="no keys while idle")
        client.close()
    finally:
        assert proc.stop() == 0


class IdleAcceptor:
    """Accepts and holds connections without a thread each (thousands of idle tunnels)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=4096)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self.sock, selectors.EVENT_READ)
        while not self._stop.is_set():
            for _ in selector.select(0.05):
                while True:
                    try:
                        conn, _ = self.sock.accept()
                    except BlockingIOError:
                        break
                    self.held.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for conn in self.held:
            conn.close()
        self.sock.close()


def test_five_thousand_idle_tunnels(upstream):
    count = 5000
    acceptor = IdleAcceptor()
    proc = ProxyProcess("--max-connections", str(count + 10))
    socks: list[socket.socket] = []
    try:
        before = _rss(proc.proc.pid)

        def open_tunnel(_: int) -> bytes:
            sock = socket.create_connection(("127.0.0.1", proc.port), timeout=30)
            socks.append(sock)
            sock.sendall(f"CONNECT 127.0.0.1:{acceptor.port} HTTP/1.1\r\n\r\n".encode())
            return read_head(sock)

        with ThreadPoolExecutor(16) as pool:
            heads = list(pool.map(open_tunnel, range(count)))
        admitted = sum(head.startswith(b"HTTP/1.1 200") for head in heads)
        assert admitted == count, f"{count - admitted} tunnels were not admitted"
        wait_for(lambda: len(acceptor.held) == count, timeout=30, what="all tunnels at the upstream")
        after = _rss(proc.proc.pid)
        print(f"\n{count} idle tunnels: RSS {before} -> {after} KiB, {(after - before) * 1024 / count:.0f} bytes each")
        assert _slots_held(proc) == f"127.0.0.1:{acceptor.port}={count}"
    finally:
        for sock in socks:
            sock.close()
        assert proc.stop() == 0
        acceptor.close()


def _peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


@pytest.mark.parametrize("path", ["relay", "tunnel"])
def test_slow_reader_gets_a_gib_with_flat_proxy_memory(upstream, path):
    size = (1 << 30) if path == "relay" else (256 << 20)
    proc = ProxyProcess()
    try:
        target = f"127.0.0.1:{upstream.port}"
        sock = socket.create_connection(("127.0.0.1", proc.port), timeout=30)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        base = _rss(proc.proc.pid)
        if path == "tunnel":
            sock.sendall(f"CONNECT {target} HTTP/1.1\r\n\r\n".encode())
            assert read_head(sock).startswith(b"HTTP/1.1 200")
            sock.sendall(f"GET /bytes?n={size} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n".encode())
        else:
            sock.sendall(
                f"GET http://{target}/bytes?n={size} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".encode()
            )
        head = read_head(sock)
        assert head.startswith(b"HTTP/1.1 200")
        buf = bytearray(65536)
        received, reads = 0, 0
        while n := sock.recv_into(buf):
            received += n
            reads += 1
            if reads % 64 == 0:
                time.sleep(0.002)  # a reader slower than the upstream
        sock.close()
        assert received == size
        growth = _peak_rss(proc.proc.pid) - base
        assert growth < 20 * 1024, f"peak RSS grew {growth} KiB relaying {size >> 20} MiB to a slow reader"
    finally:
        proc.stop()
