"""A corpus of malformed and malicious requests (request smuggling vectors first).

Each one gets the right 4xx (or a clean close where no answer is possible), the proxy
keeps serving, and no slot leaks (the fixture checks).
"""

from __future__ import annotations

import re
import socket

import pytest

from ..support.network import read_head

T = b"{t}"  # replaced by the upstream's authority
GET = b"GET http://" + T + b"/ HTTP/1.1\r\nHost: " + T + b"\r\n"
POST = b"POST http://" + T + b"/echo HTTP/1.1\r\nHost: " + T + b"\r\n"
CLOSE = None  # a clean close: no answer, connection closed

CORPUS: list[tuple[str, bytes, int | None]] = [
    # framing ambiguity (request smuggling)
    ("cl-and-te", POST + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-and-cl", POST + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n", 400),
    ("differing-cl", POST + b"Content-Length: 4\r\nContent-Length: 5\r\n\r\nabcde", 400),
    ("differing-cl-list", POST + b"Content-Length: 4, 5\r\n\r\nabcde", 400),
    ("signed-cl", POST + b"Content-Length: +4\r\n\r\nabcd", 400),
    ("negative-cl", POST + b"Content-Length: -4\r\n\r\n", 400),
    ("cl-inner-space", POST + b"Content-Length: 4 4\r\n\r\n", 400),
    ("cl-hex", POST + b"Content-Length: 0x4\r\n\r\nabcd", 400),
    ("cl-huge", POST + b"Content-Length: 99999999999999999999\r\n\r\n", 400),
    ("cl-empty", POST + b"Content-Length:\r\n\r\n", 400),
    ("te-not-final-chunked", POST + b"Transfer-Encoding: chunked, identity\r\n\r\n", 400),
    ("te-xchunked", POST + b"Transfer-Encoding: xchunked\r\n\r\n", 400),
    ("te-double-chunked", POST + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    ("te-in-http10", b"POST http://" + T + b"/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-space-before-colon", POST + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-tab-before-colon", POST + b"Transfer-Encoding\t: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-folded", POST + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", 400),
    # chunked bodies
    ("chunk-size-not-hex", POST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    ("chunk-size-leading-space", POST + b"Transfer-Encoding: chunked\r\n\r\n 5\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-size-negative", POST + b"Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-size-overflow", POST + b"Transfer-Encoding: chunked\r\n\r\n" + b"f" * 17 + b"\r\n", 400),
    ("chunk-size-empty", POST + b"Transfer-Encoding: chunked\r\n\r\n\r\nhello\r\n", 400),
    ("chunk-ext-no-name", POST + b"Transfer-Encoding: chunked\r\n\r\n5;=x\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-ext-bare-cr", POST + b"Transfer-Encoding: chunked\r\n\r\n5;a\rb\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-ext-bad-quote", POST + b'Transfer-Encoding: chunked\r\n\r\n5;a="x\r\nhello\r\n0\r\n\r\n', 400),
    ("chunk-data-overrun", POST + b"Transfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-line-lf-only", POST + b"Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n", 400),
    ("chunk-bad-trailer", POST + b"Transfer-Encoding: chunked\r\n\r\n0\r\nBad Trailer: x\r\n\r\n", 400),
    # header syntax
    ("obs-fold", GET + b"X-A: one\r\n two\r\n\r\n", 400),
    ("bare-cr-in-value", GET + b"X-A: one\rtwo\r\n\r\n", 400),
    ("bare-lf-in-head", GET + b"X-A: one\nX-B: two\r\n\r\n", 400),
    ("lf-only-request", b"GET http://" + T + b"/ HTTP/1.1\nHost: x\n\n", 400),
    ("nul-in-value", GET + b"X-A: a\x00b\r\n\r\n", 400),
    ("del-in-value", GET + b"X-A: a\x7fb\r\n\r\n", 400),
    ("non-ascii-name", GET + "X-Ä: v\r\n\r\n".encode(), 400),
    ("space-in-name", GET + b"X A: v\r\n\r\n", 400),
    ("empty-name", GET + b": v\r\n\r\n", 400),
    ("no-colon", GET + b"JustAName\r\n\r\n", 400),
    ("connect-two-hosts", b"CONNECT {t} HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n", 400),
    # request line and target
    ("nul-in-request-line", b"GET http://" + T + b"/\x00 HTTP/1.1\r\n\r\n", 400),
    ("non-ascii-method", "GËT http://{t}/ HTTP/1.1\r\n\r\n".encode(), 400),
    ("bad-method-char", b"GE(T http://" + T + b"/ HTTP/1.1\r\n\r\n", 400),
    ("tab-separators", b"GET\thttp://" + T + b"/\tHTTP/1.1\r\n\r\n", 400),
    ("double-space", b"GET  http://" + T + b"/ HTTP/1.1\r\n\r\n", 400),
    ("missing-version", b"GET http://" + T + b"/\r\n\r\n", 400),
    ("lowercase-version", b"GET http://" + T + b"/ http/1.1\r\n\r\n", 400),
    ("http09", b"GET /\r\n\r\n", 400),
    ("http2-version", b"GET http://" + T + b"/ HTTP/2.0\r\n\r\n", 505),
    ("h2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    ("origin-form", b"GET / HTTP/1.1\r\nHost: " + T + b"\r\n\r\n", 400),
    ("asterisk-form", b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("https-absolute-form", b"GET https://" + T + b"/ HTTP/1.1\r\n\r\n", 400),
    ("userinfo", b"GET http://user:pw@" + T + b"/ HTTP/1.1\r\n\r\n", 400),
    ("fragment", b"GET http://" + T + b"/#frag HTTP/1.1\r\n\r\n", 400),
    ("port-not-numeric", b"GET http://127.0.0.1:abc/ HTTP/1.1\r\n\r\n", 400),
    ("port-zero", b"GET http://127.0.0.1:0/ HTTP/1.1\r\n\r\n", 400),
    ("port-too-big", b"GET http://127.0.0.1:70000/ HTTP/1.1\r\n\r\n", 400),
    ("ipv6-without-brackets", b"GET http://::1/ HTTP/1.1\r\n\r\n", 400),
    ("ipv6-unterminated", b"GET http://[::1/ HTTP/1.1\r\n\r\n", 400),
    ("percent-in-host", b"GET http://exa%6dple.com/ HTTP/1.1\r\n\r\n", 400),
    ("empty-host", b"GET http:/// HTTP/1.1\r\n\r\n", 400),
    # oversize
    ("long-request-line", b"GET http://" + T + b"/" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414),
    ("huge-header", GET + b"X-Big: " + b"b" * 70000 + b"\r\n\r\n", 431),
    ("many-headers", GET + b"X-N: 1\r\n" * 150 + b"\r\n", 431),
    ("endless-line", b"GET http://" + T + b"/" + b"c" * 100000, 414),
    # CONNECT
    ("connect-no-port", b"CONNECT 127.0.0.1 HTTP/1.1\r\n\r\n", 400),
    ("connect-path", b"CONNECT /x HTTP/1.1\r\n\r\n", 400),
    ("connect-absolute", b"CONNECT http://" + T + b"/ HTTP/1.1\r\n\r\n", 400),
    ("connect-userinfo", b"CONNECT u@127.0.0.1:443 HTTP/1.1\r\n\r\n", 400),
    ("connect-with-cl-body", b"CONNECT " + T + b" HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 400),
    ("connect-with-te-body", b"CONNECT " + T + b" HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    # pipelined bytes after a refused CONNECT are never parsed as a request
    (
        "junk-after-denied-connect",
        b"CONNECT 169.254.169.254:80 HTTP/1.1\r\n\r\nGET http://" + T + b"/smuggled HTTP/1.1\r\n\r\n",
        403,
    ),
    ("junk-after-connect-to-bad-port", b"CONNECT 127.0.0.1:0 HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n", 400),
    # truncated input: nothing to answer
    ("empty-lines-then-eof", b"\r\n\r\n", CLOSE),
    ("partial-head-then-eof", b"GET http://" + T + b"/ HTTP/1.1\r\nX-A: b", CLOSE),
    ("short-body-then-eof", POST + b"Content-Length: 100\r\n\r\nabc", CLOSE),
]


def test_corpus_is_large_enough():
    assert len(CORPUS) >= 50
    assert len({name for name, _, _ in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize(("name", "data", "expected"), CORPUS, ids=[c[0] for c in CORPUS])
def test_malformed_request(make_proxy, upstream, name, data, expected):
    proxy = make_proxy(max_connections_per_host=2, header_timeout=2)
    data = data.replace(b"{t}", f"127.0.0.1:{upstream.port}".encode())
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the proxy may answer and close before all of an oversize request is sent
        head, rest, reset = b"", b"", False
        try:
            head = read_head(sock)
            while chunk := sock.recv(65536):
                rest += chunk
        except ConnectionResetError:
            reset = True  # after an answer: the proxy closed with our unread bytes in its buffer
    if expected is CLOSE:
        assert not reset, f"{name}: expected a clean close, got a reset"
        assert head == b"", f"{name}: expected a clean close, got {head[:80]!r}"
    else:
        assert head.startswith(f"HTTP/1.1 {expected} ".encode()), f"{name}: expected {expected}, got {head[:80]!r}"
        assert b"Connection: close" in head, f"{name}: the connection must not be reused"
        assert not re.search(rb"(^|\n)HTTP/1\.[01] \d{3} ", rest), f"{name}: later bytes answered as a request"
    assert b"/smuggled" not in b"".join(path.encode() for _, path, _ in upstream.requests)
    # still serving
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(f"GET http://127.0.0.1:{upstream.port}/ok HTTP/1.0\r\n\r\n".encode())
        assert read_head(sock).startswith(b"HTTP/1.1 200")
