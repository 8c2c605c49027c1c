"""Plain HTTP through the proxy: one absolute-form request relayed to its upstream.

The request is rewritten to origin-form with a Host that matches the target, hop-by-hop
fields are dropped (RFC 9110 7.6.1), ``Via`` is added, and both bodies are streamed.
The upstream connection outlives the request when both sides allow keep-alive and the
client's next request goes to the same host; the session owns that decision.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .errors import ClientProtocolError, ConnectionLost, UpstreamError
from .hosts import host_key, split_authority
from .http_body import relay_body
from .http_head import (
    HOP_BY_HOP,
    Framing,
    MessageHead,
    RequestHead,
    ResponseHead,
    parse_response_head,
    request_framing,
    response_framing,
)

if TYPE_CHECKING:
    from .session import ClientSession

MAX_RESPONSE_LINE = 8192
MAX_RESPONSE_HEAD = 65536


class ForwardTarget:
    """An absolute-form ``http://`` request target, split and validated."""

    __slots__ = ("authority", "host", "key", "path", "port")

    def __init__(self, request: RequestHead) -> None:
        target = request.target
        lowered = target[:8].lower()
        if lowered.startswith("https://"):
            raise ClientProtocolError("https:// targets must be tunnelled: send CONNECT host:443 to this proxy")
        if not lowered.startswith("http://"):
            raise ClientProtocolError("this is a forward proxy: the request target must be an absolute http:// URL")
        rest = target[7:]
        cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
        authority, path = rest[:cut], rest[cut:]
        if "@" in authority:
            raise ClientProtocolError("userinfo is not allowed in the request target")
        if "#" in target:
            raise ClientProtocolError("fragment is not allowed in the request target")
        try:
            self.host, self.port = split_authority(authority, 80)
        except ValueError as exc:
            raise ClientProtocolError(f"bad request target: {exc}") from None
        self.authority = self.host if self.port == 80 else f"{self.host}:{self.port}"
        if not path or path.startswith("?"):
            path = ("*" if request.method == "OPTIONS" and not path else "/") + path
        self.path = path
        self.key = host_key(self.host, self.port)


def wants_keep_alive(head: MessageHead) -> bool:
    """RFC 9112 9.3: persistent by default in 1.1, opt-in with keep-alive in 1.0."""
    tokens = head.connection_tokens()
    if head.version == "HTTP/1.1":
        return "close" not in tokens
    # HTTP/1.0 clients of proxies often say it in Proxy-Connection instead.
    tokens |= {v.lower() for v in head.values("proxy-connection")}
    return "keep-alive" in tokens and "close" not in tokens


def _end_to_end(head: MessageHead, keep_upgrade: bool = False) -> list[tuple[str, str]]:
    """Fields to forward: hop-by-hop ones and those named in Connection removed."""
    tokens = head.connection_tokens()
    drop = HOP_BY_HOP | tokens if tokens else HOP_BY_HOP
    if keep_upgrade:
        drop = drop - {"upgrade"}
    return [(k, v) for k, v in head.headers if k.lower() not in drop]


def _via(version: str) -> str:
    return f"{version[5:]} dprl"


def _serialize(start_line: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [start_line]
    lines.extend(f"{k}: {v}" for k, v in headers)
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1")


def relay_request(session: ClientSession, request: RequestHead, target: ForwardTarget) -> bool:
    """Relay one request and its response; returns True if the client connection stays open."""
    framing, length = request_framing(request)
    if len(request.raw_values("host")) > 1:
        raise ClientProtocolError("more than one Host field")
    client_keep = wants_keep_alive(request)
    upgrade = request.values("upgrade") and "upgrade" in request.connection_tokens()
    session.request_has_body = framing != Framing.NONE

    headers = [(k, v) for k, v in _end_to_end(request, keep_upgrade=bool(upgrade)) if k.lower() != "host"]
    expect_continue = False
    if any(v.lower() == "100-continue" for v in request.values("expect")):
        # Answered here: waiting for an upstream that may never send 100 would stall.
        headers = [(k, v) for k, v in headers if k.lower() != "expect"]
        expect_continue = request.version == "HTTP/1.1" and framing != Framing.NONE
    headers.insert(0, ("Host", target.authority))
    if framing == Framing.CHUNKED:
        headers.append(("Transfer-Encoding", "chunked"))
    headers.append(("Via", _via(request.version)))
    if upgrade:
        headers.append(("Connection", "upgrade"))
    elif not client_keep:
        headers.append(("Connection", "close"))
    out_head = _serialize(f"{request.method} {target.path} HTTP/1.1", headers)

    client = session.client
    for attempt in (1, 2):
        upstream, reused = session.upstream_for(target)
        up = upstream.endpoint
        if expect_continue and attempt == 1:
            client.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            up.write(out_head)
            relay_body(client, up, framing, length)
            up.flush()
            response = _read_response(up)
            break
        except ConnectionLost as exc:
            # An idle upstream may close just as we reuse it; a request without a body
            # can be sent again on a fresh connection without anyone seeing twice.
            if exc.side == "upstream" and reused and framing == Framing.NONE and attempt == 1:
                session.close_upstream()
                continue
            if exc.side == "upstream":
                raise UpstreamError(f"upstream {target.key} failed: {exc}") from None
            raise

    while 100 <= response.status < 200 and response.status != 101:
        if request.version == "HTTP/1.1":
            client.write(_response_head(response, _end_to_end(response)))
            client.flush()
        response = _read_response(up)

    if response.status == 101:
        if not upgrade:
            raise UpstreamError("upstream switched protocols without an upgrade request")
        session.response_started = True
        client.send(_response_head(response, _end_to_end(response, keep_upgrade=True), "upgrade"))
        session.pipe_to_upstream()
        session.close_upstream()
        return False

    resp_framing, resp_length = response_framing(response, request.method)
    dechunk = resp_framing == Framing.CHUNKED and request.version == "HTTP/1.0"
    upstream_keep = wants_keep_alive(response) and resp_framing != Framing.CLOSE and client_keep
    client_keep = client_keep and resp_framing != Framing.CLOSE and not dechunk

    headers = _end_to_end(response)
    if resp_framing == Framing.CHUNKED and not dechunk:
        headers.append(("Transfer-Encoding", "chunked"))
    connection = "keep-alive" if client_keep and request.version == "HTTP/1.0" else None
    if not client_keep:
        connection = "close"
    session.response_started = True
    sent_before = client.bytes_out
    client.write(_response_head(response, headers, connection))
    try:
        relay_body(up, client, resp_framing, resp_length, dechunk)
    except ConnectionLost as exc:
        if exc.side == "upstream":
            session.log.info("upstream %s broke off a response: %s", target.key, exc)
        session.close_upstream()
        raise
    except UpstreamError:
        if client.bytes_out == sent_before:  # nothing left yet: a clean 502 is still possible
            client.out.clear()
            session.response_started = False
        raise
    client.flush()
    if upstream_keep:
        upstream.last_used = time.monotonic()
    else:
        session.close_upstream()
    return client_keep


def _read_response(up) -> ResponseHead:
    data = up.read_head(MAX_RESPONSE_LINE, MAX_RESPONSE_HEAD)
    if data is None:
        raise ConnectionLost("upstream", "closed before sending a response")
    return parse_response_head(data)


def _response_head(response: ResponseHead, headers: list[tuple[str, str]], connection: str | None = None) -> bytes:
    headers = [*headers, ("Via", _via(response.version))]
    if connection:
        headers.append(("Connection", connection))
    return _serialize(f"HTTP/1.1 {response.status} {response.reason}", headers)
