"""Bad input gets a precise status and never takes the proxy down or leaks a slot."""

from __future__ import annotations

import socket

import pytest

from ..support.network import raw_request, read_head


def _status(reply: bytes) -> int:
    assert reply.startswith(b"HTTP/1.1 "), reply[:100]
    return int(reply[9:12])


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /relative HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET https://127.0.0.1/ HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET ftp://127.0.0.1/ HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"GET http://user:pw@127.0.0.1:{port}/ HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"GET http://127.0.0.1:99999/ HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"GET http://bad_host!/ HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"GET http://127.0.0.1:{port}/ HTTP/2.0\r\n\r\n", 505),
        (b"GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: h\r\nBad Header: x\r\n\r\n", 400),
        (b"GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: h\r\nX: a\r\n folded\r\n\r\n", 400),
        (b"GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n", 400),
        (b"GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: h\r\nX: a\nY: b\r\n\r\n", 400),
        (b"GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: h\r\nX: a\x00\r\n\r\n", 400),
        (
            b"POST http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: h\r\n"
            b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        (
            b"POST http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            400,
        ),
        (b"POST http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: h\r\nContent-Length: -3\r\n\r\n", 400),
        (b"POST http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
        (b"POST http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400),
        (b"POST http://127.0.0.1:{port}/echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        (b"CONNECT 127.0.0.1 HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT /path HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 400),
        (b"GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: h\r\n" + b"X-Big: " + b"a" * 70000 + b"\r\n\r\n", 431),
        (b"GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: h\r\n" + b"X: y\r\n" * 101 + b"\r\n", 431),
        (b"GET http://127.0.0.1:{port}/" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414),
    ],
)
def test_malformed_requests_get_a_precise_status(proxy, upstream, request_bytes, status):
    data = request_bytes.replace(b"{port}", str(upstream.port).encode())
    reply = raw_request(proxy.port, data)
    assert _status(reply) == status, reply[:200]
    assert b"Connection: close" in reply.partition(b"\r\n\r\n")[0]
    # the proxy is still up and serving
    ok = raw_request(proxy.port, f"GET http://127.0.0.1:{upstream.port}/ok HTTP/1.0\r\n\r\n".encode())
    assert _status(ok) == 200


def test_dns_failure_is_502(make_proxy):
    def resolve(name: str, port: int):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    proxy = make_proxy(resolver=resolve)
    reply = raw_request(proxy.port, b"GET http://no-such-host.test/ HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _status(reply) == 502 and b"cannot resolve no-such-host.test" in reply


def test_connect_timeout_is_504(make_proxy):
    # A listener whose accept queue is full drops further SYNs: the dial never completes.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    proxy = make_proxy(connect_timeout=0.5)
    try:
        reply = raw_request(proxy.port, f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode())
        assert _status(reply) == 504, reply
    finally:
        for sock in [*fillers, listener]:
            sock.close()


def test_slow_request_head_gets_408(make_proxy):
    proxy = make_proxy(header_timeout=0.3)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(b"GET http://127.0.0.1/ HTTP/1.1\r\nHost: h\r\nX-Slow: ")
        assert read_head(sock).startswith(b"HTTP/1.1 408")


def test_idle_keep_alive_connection_is_closed(make_proxy, upstream):
    proxy = make_proxy(idle_timeout=0.3)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(f"GET http://127.0.0.1:{upstream.port}/a HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert read_head(sock).startswith(b"HTTP/1.1 200")
        assert sock.recv(100) == b"ok:/a"
        assert sock.recv(100) == b""  # closed by the proxy after the idle timeout
