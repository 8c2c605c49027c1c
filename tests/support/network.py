"""Helpers the tests, the benchmarks and the fault drill share: free ports, waiting for a
condition, and raw exchanges with a proxy. One copy each."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dprl import ProxyRateLimiter


def free_port() -> int:
    """A TCP port nothing listens on now (bound and released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(
    predicate: Callable[[], object],
    timeout: float = 5.0,
    what: str = "condition",
    ignore: tuple[type[BaseException], ...] = (),
    interval: float = 0.005,
    sleep: Callable[[float], object] = time.sleep,
) -> None:
    """Poll ``predicate`` until it holds, for state another thread or process changes without
    an event; ``ignore``: errors that mean "not yet" (a server still starting); ``sleep``:
    ``gevent.sleep`` where the condition is made by greenlets of the polling thread."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except ignore:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        sleep(interval)


def wait_port(port: int, timeout: float = 10.0) -> None:
    """Until something accepts on ``port`` (loopback)."""

    def accepts() -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
        return False

    wait_for(accepts, timeout, f"a listener on port {port}", interval=0.02)


def read_head(sock: socket.socket, end: bytes = b"\r\n\r\n") -> bytes:
    """Bytes up to and including the first ``end`` (CRLF CRLF: a head), or what came before a close."""
    data = b""
    while end not in data:
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data


def proxy_connect(proxy: ProxyRateLimiter | int, target: str) -> tuple[socket.socket, bytes]:
    """Open a CONNECT tunnel by hand (``proxy``: a library proxy, or a port); returns the
    socket and the proxy's response head."""
    port = proxy if isinstance(proxy, int) else proxy.port
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    return sock, read_head(sock)


def raw_request(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes to the proxy and read until it closes (or times out)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return out


def assert_no_slots(proxy: ProxyRateLimiter) -> None:
    """Every slot given back: the destinations', and each parent proxy's own count."""
    wait_for(lambda: not proxy.limiter.process_counts(), what="all slots released")
    wait_for(lambda: not any(p["in_use"] for p in proxy.parent_states()), what="every parent's connections closed")
