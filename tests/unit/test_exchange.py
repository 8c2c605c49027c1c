"""One plain-HTTP exchange (proxy/forward.py) over in-memory socket pairs, as httpcore tests
its connections over mock streams: no listener, no process, no network. The test plays
both the client and the upstream by writing their bytes ahead and reading what the
exchange wrote them."""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass

import gevent
import pytest
from gevent import socket as gsocket

from dprl.errors import UpstreamError
from dprl.http import rewrite
from dprl.http.framing import request_framing
from dprl.http.head import parse_request_head
from dprl.http.target import forward_target
from dprl.net.endpoint import Endpoint
from dprl.proxy.forward import ForwardExchange, Outcome

ORIGIN = "origin.test:8080"


@dataclass
class Seen:
    outcome: Outcome | None  # None: the exchange raised (see error)
    error: BaseException | None
    client_got: bytes  # what the client was sent
    upstream_got: bytes  # what the upstream was sent


def _drain(sock: gsocket.socket) -> bytes:
    out = b""
    sock.settimeout(5)
    while chunk := sock.recv(65536):
        out += chunk
    return out


def exchange(
    request: bytes,
    response: bytes,
    *,
    reused: bool = False,
    upstream_closes: bool = False,
    body: bytes = b"",
) -> Seen:
    """``request``: its head (and a body that fits the buffers); ``body``: more of it, fed
    while the exchange runs; ``response``: what the upstream has sent before it reads."""
    client_peer, client_sock = gsocket.socketpair()
    upstream_peer, upstream_sock = gsocket.socketpair()
    end = request.index(b"\r\n\r\n") + 4
    head = parse_request_head(request[:end])
    client_peer.sendall(request[end:])
    feeder = gevent.spawn(client_peer.sendall, body) if body else None
    upstream_peer.sendall(response)
    if upstream_closes:
        upstream_peer.shutdown(socket.SHUT_WR)
    client, upstream = Endpoint(client_sock, "client", 5.0), Endpoint(upstream_sock, "upstream", 5.0)
    forward = ForwardExchange(
        client,
        upstream,
        head,
        forward_target(head, rewrite.is_upgrade(head)),
        request_framing(head),
        reused=reused,
        response_timer=None,
        log=logging.getLogger("dprl.test"),
        label=ORIGIN,
    )
    outcome, error = None, None
    try:
        outcome = forward.run()
        client.flush()
    except Exception as exc:
        error = exc
    if feeder is not None:
        feeder.kill()
    for sock in (client_sock, upstream_sock, upstream_peer):  # unread bytes stay: a close would reset
        sock.shutdown(socket.SHUT_WR)
    seen = Seen(outcome, error, _drain(client_peer), _drain(upstream_peer))
    for sock in (client_peer, client_sock, upstream_peer, upstream_sock):
        sock.close()
    return seen


GET = f"GET http://{ORIGIN}/p?q=1 HTTP/1.1\r\nHost: {ORIGIN}\r\nUser-Agent: t\r\n\r\n".encode()
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


def test_a_get_goes_out_in_origin_form_and_both_connections_stay_open():
    seen = exchange(GET, OK)
    assert seen.outcome == Outcome(keep_client=True, keep_upstream=True)
    assert seen.upstream_got.startswith(f"GET /p?q=1 HTTP/1.1\r\nHost: {ORIGIN}\r\n".encode())
    assert b"Via: 1.1 dprl" in seen.upstream_got
    assert seen.client_got.startswith(b"HTTP/1.1 200 OK\r\n")
    assert seen.client_got.endswith(b"\r\n\r\nhello")


def test_hop_by_hop_fields_stay_on_their_hop():
    request = (
        f"GET http://{ORIGIN}/ HTTP/1.1\r\nHost: {ORIGIN}\r\nConnection: X-Secret, keep-alive\r\n"
        "X-Secret: s\r\nProxy-Authorization: Basic eDp5\r\nKeep-Alive: 5\r\nTE: trailers\r\n\r\n"
    ).encode()
    seen = exchange(request, OK)
    for name in (b"X-Secret", b"Proxy-Authorization", b"Keep-Alive", b"TE:", b"Connection: X-Secret"):
        assert name not in seen.upstream_got


def test_a_chunked_body_is_reframed_canonically():
    request = (
        f"POST http://{ORIGIN}/u HTTP/1.1\r\nHost: {ORIGIN}\r\nTransfer-Encoding: chunked\r\n\r\n"
        "5 ; ext = v\r\nhello\r\n0\r\n\r\n"
    ).encode()
    seen = exchange(request, OK)
    assert seen.outcome is not None and seen.outcome.keep_client
    assert seen.upstream_got.endswith(b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n")


def test_interim_answers_are_relayed_before_the_final_one():
    request = (
        f"POST http://{ORIGIN}/u HTTP/1.1\r\nHost: {ORIGIN}\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nhi"
    ).encode()
    seen = exchange(request, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK)
    statuses = [line for line in seen.client_got.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]
    assert statuses == [b"HTTP/1.1 100 Continue", b"HTTP/1.1 103 Early Hints", b"HTTP/1.1 200 OK"]
    assert seen.client_got.endswith(b"hello")
    assert seen.upstream_got.endswith(b"\r\n\r\nhi")


def test_a_reused_connection_closed_unanswered_retries_a_safe_request():
    seen = exchange(GET, b"", reused=True, upstream_closes=True)
    assert seen.outcome is not None and seen.outcome.retry
    assert seen.client_got == b""


@pytest.mark.parametrize("method", ["POST", "DELETE"])
def test_an_unsafe_request_is_never_sent_twice(method):
    request = f"{method} http://{ORIGIN}/x HTTP/1.1\r\nHost: {ORIGIN}\r\nContent-Length: 0\r\n\r\n".encode()
    seen = exchange(request, b"", reused=True, upstream_closes=True)
    assert seen.outcome is None and isinstance(seen.error, UpstreamError)
    assert seen.error.status == 502


def test_a_fresh_connection_closed_unanswered_is_a_502_not_a_retry():
    seen = exchange(GET, b"", reused=False, upstream_closes=True)
    assert isinstance(seen.error, UpstreamError) and seen.error.status == 502


def test_an_early_refusal_is_relayed_while_the_upload_is_still_coming():
    request = f"PUT http://{ORIGIN}/big HTTP/1.1\r\nHost: {ORIGIN}\r\nContent-Length: 8000000\r\n\r\n".encode()
    refusal = b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\n\r\nbig"
    seen = exchange(request, refusal, body=b"x" * 8_000_000)
    assert seen.outcome is not None and seen.outcome.linger and not seen.outcome.keep_client
    assert seen.client_got.startswith(b"HTTP/1.1 413 ")
    assert b"Connection: close" in seen.client_got


def test_an_http10_client_gets_a_chunked_body_dechunked_and_a_close():
    request = f"GET http://{ORIGIN}/ HTTP/1.0\r\n\r\n".encode()
    seen = exchange(request, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert seen.outcome is not None and not seen.outcome.keep_client
    assert b"Transfer-Encoding" not in seen.client_got
    assert seen.client_got.endswith(b"\r\n\r\nhello")


@pytest.mark.parametrize(
    ("method", "status_line"),
    [("HEAD", b"HTTP/1.1 200 OK"), ("GET", b"HTTP/1.1 204 No Content"), ("GET", b"HTTP/1.1 304 Not Modified")],
)
def test_answers_without_a_body_end_at_their_head(method, status_line):
    request = f"{method} http://{ORIGIN}/ HTTP/1.1\r\nHost: {ORIGIN}\r\n\r\n".encode()
    seen = exchange(request, status_line + b"\r\nContent-Length: 5\r\n\r\n")
    assert seen.outcome == Outcome(keep_client=True, keep_upstream=True)
    assert seen.client_got.endswith(b"\r\n\r\n")


def test_a_101_turns_the_exchange_into_a_tunnel():
    request = (
        f"GET http://{ORIGIN}/ws HTTP/1.1\r\nHost: {ORIGIN}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    ).encode()
    seen = exchange(request, b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    assert seen.outcome is not None and seen.outcome.upgrade
    assert b"Upgrade: websocket" in seen.upstream_got
    assert seen.client_got.startswith(b"HTTP/1.1 101 ")


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Field\r\n\r\n",
    ],
)
def test_a_broken_response_is_a_502_for_the_client(response):
    seen = exchange(GET, response, upstream_closes=True)
    if seen.error is not None:
        assert isinstance(seen.error, UpstreamError) and seen.error.status == 502
        assert seen.client_got == b""
    else:  # the head was relayed before the body broke: only a close is left
        assert seen.outcome is not None and not seen.outcome.keep_client
