"""Upstream misbehaviour: the client gets 502 (or a clean close once bytes were sent), and
the slot is released (the fixture checks)."""

from __future__ import annotations

import socket
import threading

import pytest

from ..support.network import raw_request, read_head, wait_for
from ..support.upstream import RawOrigin


class ScriptedUpstream(RawOrigin):
    """Reads one request head, sends ``reply``, then closes (``reset``: with an RST)."""

    def __init__(self, reply: bytes, reset: bool = False) -> None:
        self.reply, self.reset = reply, reset
        super().__init__()

    def serve(self, conn: socket.socket, index: int) -> None:
        read_head(conn)
        conn.sendall(self.reply)
        if self.reset:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"


@pytest.mark.parametrize(
    ("reply", "reset", "expected"),
    [
        (b"", False, 502),  # closes before the head
        (b"", True, 502),  # resets before the head
        (b"NOT HTTP AT ALL\r\n\r\n", False, 502),  # invalid status line
        (b"HTTP/1.1 2000 OK\r\n\r\n", False, 502),
        (b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70000 + b"\r\n\r\n", False, 502),  # oversize head
        (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 300 + b"\r\n", False, 502),
        (b"HTTP/1.1 200 OK\nContent-Length: 0\n\n", False, 502),  # bare LF
        (b"HTTP/1.1 200 OK\r\nBad Field: x\r\n\r\n", False, 502),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", False, 502),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", False, 502),  # nothing relayed yet
        (OK_HEAD + b"short", False, "close"),  # truncated body: head already relayed
        (OK_HEAD + b"short", True, "close"),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", False, 502),  # nobody asked
        (b"HTTP/2.0 200 OK\r\n\r\n", False, 502),
    ],
)
def test_upstream_misbehaviour(proxy, reply, reset, expected):
    upstream = ScriptedUpstream(reply, reset)
    try:
        request = f"GET http://127.0.0.1:{upstream.port}/ HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        answer = raw_request(proxy.port, request.encode())
    finally:
        upstream.close()
    if expected == "close":
        assert answer.startswith(b"HTTP/1.1 200"), answer[:100]  # what was relayed, then a close
        assert len(answer.partition(b"\r\n\r\n")[2]) < 10
    else:
        assert answer.startswith(f"HTTP/1.1 {expected}".encode()), answer[:100]


def test_ipv6_listener_and_ipv6_destination(make_proxy):
    upstream = socket.create_server(("::1", 0), family=socket.AF_INET6)
    port = upstream.getsockname()[1]

    def serve() -> None:
        conn, _ = upstream.accept()
        with conn:
            conn.sendall(b"v6:" + conn.recv(100))

    threading.Thread(target=serve, daemon=True).start()
    proxy = make_proxy(bind="::")
    assert proxy.proxy_url == f"http://[::1]:{proxy.port}"
    with socket.create_connection(("::1", proxy.port), timeout=5) as sock:
        sock.sendall(f"CONNECT [::1]:{port} HTTP/1.1\r\n\r\n".encode())
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
        sock.sendall(b"hello")
        assert sock.recv(100) == b"v6:hello"
        # the upstream has closed; the tunnel lives until the client closes too
        assert proxy.limiter.fleet_count(f"[::1]:{port}") == 1
    wait_for(lambda: proxy.limiter.fleet_count(f"[::1]:{port}") == 0, what="the IPv6 tunnel's slot released")
    # an IPv4 client reaches the dual-stack listener too
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 400")
    upstream.close()
