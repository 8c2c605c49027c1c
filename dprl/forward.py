"""Plain HTTP through the proxy: one absolute-form request relayed to its upstream.

The request is rewritten to origin-form with a Host that matches the target, hop-by-hop
fields are dropped (RFC 9110 7.6.1), ``Via`` is added, both bodies are streamed, and
the framing fields of each hop are the ones dprl computed and relays by (never the ones
that came). ``Expect: 100-continue`` is forwarded, so an origin can refuse an upload
before it starts; an origin that answers while the body is still coming gets its answer
relayed instead of a 502. The upstream connection outlives the request when both sides
allow keep-alive and the client's next request goes to the same host; the session owns
that decision.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .endpoint import Endpoint
from .errors import ClientProtocolError, ConnectionLost, UpstreamError
from .hosts import host_key, split_authority
from .http_body import relay_body
from .http_head import (
    FRAMING_FIELDS,
    HOP_BY_HOP,
    SAFE_METHODS,
    BodyFraming,
    Framing,
    MessageHead,
    RequestHead,
    ResponseHead,
    framing_fields,
    metadata_fields,
    parse_response_head,
    request_framing,
    response_framing,
)

if TYPE_CHECKING:
    from .session import ClientSession

MAX_RESPONSE_LINE = 8192
MAX_RESPONSE_HEAD = 65536
# RFC 9110 10.1.1: a client that sent 100-continue waits a while, then sends the body
# anyway; dprl waits as long for the origin's 100 (or its refusal) before relaying it.
CONTINUE_WAIT = 1.0
# After a write to the upstream failed, how long an answer it sent first may take to show.
EARLY_RESPONSE_WAIT = 1.0


class EarlyResponse(Exception):
    """The upstream answered with an error while the request body was still being sent."""


class ForwardTarget:
    """An absolute-form ``http://`` request target (or ``ws://`` for an upgrade), split and validated."""

    __slots__ = ("authority", "host", "key", "path", "port")

    def __init__(self, request: RequestHead) -> None:
        target = request.target
        lowered = target[:8].lower()
        if lowered.startswith(("https://", "wss://")):
            raise ClientProtocolError(
                f"{lowered.split(':')[0]}:// targets must be tunnelled: send CONNECT host:443 to this proxy"
            )
        if lowered.startswith("http://"):
            rest = target[7:]
        elif lowered.startswith("ws://") and is_upgrade(request):
            # Some WebSocket clients (aiohttp) send ws:// targets to an HTTP proxy: the
            # same request as http://, tunnelled after the 101.
            rest = target[5:]
        else:
            raise ClientProtocolError("this is a forward proxy: the request target must be an absolute http:// URL")
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


def is_upgrade(head: MessageHead) -> bool:
    return bool(head.values("upgrade")) and "upgrade" in head.connection_tokens()


def _end_to_end(head: MessageHead, keep_upgrade: bool = False) -> list[tuple[str, str]]:
    """Fields to forward: hop-by-hop ones, those named in Connection, and framing removed."""
    tokens = head.connection_tokens()
    drop = HOP_BY_HOP | FRAMING_FIELDS | tokens
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


def _expects_continue(request: RequestHead) -> bool:
    return any(v.lower() == "100-continue" for v in request.values("expect"))


def _request_head(request: RequestHead, target: ForwardTarget, framing: BodyFraming, upgrade: bool) -> bytes:
    headers = [(k, v) for k, v in _end_to_end(request, keep_upgrade=upgrade) if k.lower() != "host"]
    if request.version == "HTTP/1.0":
        # RFC 9110 10.1.1: a 100-continue expectation in an HTTP/1.0 request is ignored
        headers = [(k, v) for k, v in headers if k.lower() != "expect"]
    headers.insert(0, ("Host", target.authority))
    headers.extend(framing_fields(framing))
    headers.append(("Via", _via(request.version)))
    if upgrade:
        headers.append(("Connection", "upgrade"))
    elif not wants_keep_alive(request):
        headers.append(("Connection", "close"))
    return _serialize(f"{request.method} {target.path} HTTP/1.1", headers)


def relay_request(session: ClientSession, request: RequestHead, target: ForwardTarget) -> bool:
    """Relay one request and its response; returns True if the client connection stays open."""
    framing = request_framing(request)
    client_keep = wants_keep_alive(request)
    upgrade = is_upgrade(request)
    session.request_has_body = framing.has_body
    expect_continue = framing.has_body and request.version == "HTTP/1.1" and _expects_continue(request)
    out_head = _request_head(request, target, framing, upgrade)

    client = session.client
    for attempt in (1, 2):
        upstream, reused = session.upstream_for(target)
        up = upstream.endpoint
        try:
            up.write(out_head)
            if expect_continue:
                up.flush()
                refusal = _await_continue(up, client)
                if refusal is not None:
                    return _relay_early_response(session, request, target, refusal)
            _send_body(client, up, request, framing)
            up.flush()
            response = _read_response(up)
            break
        except EarlyResponse:
            return _relay_early_response(session, request, target)
        except ConnectionLost as exc:
            if exc.side != "upstream":
                raise
            # RFC 9112 9.3.1: only a request that cannot have done harm is sent again, and
            # only when the upstream closed a reused connection without answering a byte.
            if attempt == 1 and reused and not framing.has_body and request.method in SAFE_METHODS and not up.buf:
                session.close_upstream()
                continue
            if framing.has_body:
                # it broke while taking the body: it may have answered first (413, 401...)
                return _relay_early_response(session, request, target, failure=exc)
            raise UpstreamError(f"upstream {target.key} failed: {exc}") from None

    while 100 <= response.status < 200 and response.status != 101:
        _relay_interim(client, request.version, response)
        response = _read_response(up)

    if response.status == 101:
        if not upgrade:
            raise UpstreamError("upstream switched protocols without an upgrade request")
        session.response_started = True
        client.send(_response_head(response, _end_to_end(response, keep_upgrade=True), "upgrade"))
        session.pipe_to_upstream()
        session.close_upstream()
        return False

    resp_framing = response_framing(response, request.method)
    client_keep = client_keep and resp_framing.kind != Framing.CLOSE
    upstream_keep = wants_keep_alive(response) and resp_framing.kind != Framing.CLOSE and client_keep
    session.response_started = True
    sent_before = client.bytes_out
    try:
        dechunk, client_keep = _write_response_head(client, request, response, resp_framing, client_keep)
        relay_body(up, client, resp_framing, dechunk)
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


def _send_body(client: Endpoint, up: Endpoint, request: RequestHead, framing: BodyFraming) -> None:
    """Relay the request body, watching for an upstream that refuses it before the end.

    RFC 9112 9.3: a client sending a body should monitor the connection for an error
    response and stop sending. Checked only while a write is blocked (the upstream stopped
    reading), so a request whose upstream keeps up costs nothing more.
    """
    if not framing.has_body:
        return

    def watch() -> bool:
        if up.buf.find(b"\r\n\r\n") < 0:
            return len(up.buf) < MAX_RESPONSE_HEAD  # wait for the whole head
        status = _peek_status(up.buf)
        if status is not None and 100 <= status < 200 and status != 101:
            _relay_interim(client, request.version, _read_response(up))
            return True
        if status is None or status >= 400:
            raise EarlyResponse
        return False  # a success sent early (a full-duplex origin): keep sending, read it after

    up.watch = watch
    try:
        relay_body(client, up, framing)
    finally:
        up.watch = None


def _peek_status(buf: bytearray) -> int | None:
    status = bytes(buf[9:12])
    return int(status) if buf[:7] == b"HTTP/1." and status.isdigit() else None


def _await_continue(up: Endpoint, client: Endpoint) -> ResponseHead | None:
    """After a forwarded ``Expect: 100-continue``: None to send the body, or the refusal.

    The origin's 1xx answers are relayed; a final answer (417, 413, 401...) is returned
    and the body never sent. An origin that stays silent for CONTINUE_WAIT gets the body
    anyway, and the client a 100 of ours, as RFC 9110 10.1.1 tells both sides to do.
    """
    deadline = time.monotonic() + CONTINUE_WAIT
    while (remaining := deadline - time.monotonic()) > 0 and up.wait_readable(remaining):
        response = _read_response(up)
        if not 100 <= response.status < 200 or response.status == 101:
            return response
        _relay_interim(client, "HTTP/1.1", response)
        if response.status == 100:
            return None
    client.send(b"HTTP/1.1 100 Continue\r\n\r\n")
    return None


def _relay_early_response(
    session: ClientSession,
    request: RequestHead,
    target: ForwardTarget,
    response: ResponseHead | None = None,
    failure: ConnectionLost | None = None,
) -> bool:
    """Relay a final answer the upstream gave before it took the whole body; close after.

    The rest of the client's body is never read, so the client connection cannot carry
    another request: the answer says ``Connection: close``, and the close lingers until
    the client has read it. Without such an answer, it is the 502 of a failed upload.
    """
    client = session.client
    up = session.upstream.endpoint  # type: ignore[union-attr]
    if response is None:
        up.sock.settimeout(EARLY_RESPONSE_WAIT)
        try:
            response = _read_response(up)
            while 100 <= response.status < 200:
                response = _read_response(up)
        except (ConnectionLost, UpstreamError):
            reason = failure or "closed while taking the request body"
            raise UpstreamError(f"upstream {target.key} failed: {reason}") from None
    framing = response_framing(response, request.method)
    session.response_started = True
    try:
        dechunk, _ = _write_response_head(client, request, response, framing, client_keep=False)
        relay_body(up, client, framing, dechunk)
        client.flush()
    except (ConnectionLost, UpstreamError) as exc:
        session.log.debug("upstream %s: early answer %d cut off: %s", target.key, response.status, exc)
    session.close_upstream()  # the slot goes back before the lingering close
    client.linger()
    return False


def _write_response_head(
    client: Endpoint, request: RequestHead, response: ResponseHead, framing: BodyFraming, client_keep: bool
) -> tuple[bool, bool]:
    """Queue the response head for the client; returns (dechunk the body?, keep the client?)."""
    http10 = request.version == "HTTP/1.0"
    if http10 and framing.codings and framing.codings != ("chunked",):
        # RFC 9112 6.1: no Transfer-Encoding to an HTTP/1.0 client, and these codings
        # cannot be undone by dechunking: only the upstream's error is honest.
        raise UpstreamError(f"upstream used transfer coding {framing.codings[0]!r}, which HTTP/1.0 cannot carry")
    dechunk = http10 and framing.kind == Framing.CHUNKED
    client_keep = client_keep and not dechunk
    headers = _end_to_end(response)
    if framing.kind == Framing.NONE:
        headers.extend(metadata_fields(response, with_codings=not http10))
    elif not dechunk:
        headers.extend(framing_fields(framing))
    connection = "keep-alive" if client_keep and http10 else None
    if not client_keep:
        connection = "close"
    client.write(_response_head(response, headers, connection))
    return dechunk, client_keep


def _relay_interim(client: Endpoint, client_version: str, response: ResponseHead) -> None:
    """A 1xx answer goes to HTTP/1.1 clients only (HTTP/1.0 has none)."""
    if client_version == "HTTP/1.1":
        client.write(_response_head(response, _end_to_end(response)))
        client.flush()


def _read_response(up: Endpoint) -> ResponseHead:
    data = up.read_head(MAX_RESPONSE_LINE, MAX_RESPONSE_HEAD)
    if data is None:
        raise ConnectionLost("upstream", "closed before sending a response")
    return parse_response_head(data)


def _response_head(response: ResponseHead, headers: list[tuple[str, str]], connection: str | None = None) -> bytes:
    headers = [*headers, ("Via", _via(response.version))]
    if connection:
        headers.append(("Connection", connection))
    return _serialize(f"HTTP/1.1 {response.status} {response.reason}", headers)
