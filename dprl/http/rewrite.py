"""What a proxy writes for the next hop (RFC 9110 7.6, RFC 9112 9): heads, keep-alive, errors.

Requests go out in origin-form with a Host that matches the target, hop-by-hop fields
and the framing fields that came are dropped, the framing dprl relays by is written, and
``Via`` is added. Responses get the same treatment towards the client.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import NamedTuple

from .errors import ProtocolError
from .framing import HOP_BY_HOP, BodyFraming, Framing, framing_fields, metadata_fields
from .head import FRAMING_FIELDS, MessageHead, RequestHead, ResponseHead
from .target import Target

Fields = list[tuple[str, str]]
# RFC 9110 9.2.1: the safe methods, the only ones a proxy sends again by itself.
SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS", "TRACE"))
_NOT_FORWARDED = HOP_BY_HOP | FRAMING_FIELDS


def wants_keep_alive(head: MessageHead) -> bool:
    """RFC 9112 9.3: persistent by default in 1.1, opt-in with keep-alive in 1.0."""
    tokens = head.connection
    if head.version == "HTTP/1.1":
        return "close" not in tokens
    # HTTP/1.0 clients of proxies often say it in Proxy-Connection instead.
    tokens = tokens | head.tokens("proxy-connection")
    return "keep-alive" in tokens and "close" not in tokens


def is_upgrade(head: MessageHead) -> bool:
    return "upgrade" in head.connection and bool(head.values("upgrade"))


def expects_continue(request: RequestHead) -> bool:
    return any(v.lower() == "100-continue" for v in request.values("expect"))


def end_to_end(head: MessageHead, keep_upgrade: bool = False) -> Fields:
    """Fields to forward: hop-by-hop ones, those named in Connection, and framing removed."""
    drop = _NOT_FORWARDED | head.connection if head.connection else _NOT_FORWARDED
    if keep_upgrade:
        drop = drop - {"upgrade"}
    return [(k, v) for k, v in head.fields if k.lower() not in drop]


def drop_field(head: MessageHead, name: str) -> None:
    """Remove every line of the field ``name`` (lowercase) from ``head``: one meant for the
    proxy alone (the tenant header)."""
    if name in head.index:
        del head.index[name]
        head.fields = [(k, v) for k, v in head.fields if k.lower() != name]


def via(version: str) -> tuple[str, str]:
    return ("Via", f"{version[5:]} dprl")


def serialize(start_line: str, fields: Fields) -> bytes:
    lines = [start_line]
    lines.extend(f"{k}: {v}" for k, v in fields)
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1")


def request_head(
    request: RequestHead,
    target: Target,
    framing: BodyFraming,
    upgrade: bool,
    keep_alive: bool,
    parent_authorization: str | None = None,
) -> bytes:
    """The request head for the upstream: origin-form, our Host, our framing, Via. To an HTTP
    parent proxy (``parent_authorization`` not None): absolute-form, with that
    Proxy-Authorization when it is not empty."""
    drop = {"host", "expect"} if request.version == "HTTP/1.0" else {"host"}
    # RFC 9110 10.1.1: a 100-continue expectation in an HTTP/1.0 request is ignored
    fields = [(k, v) for k, v in end_to_end(request, keep_upgrade=upgrade) if k.lower() not in drop]
    fields.insert(0, ("Host", target.authority))
    fields.extend(framing_fields(framing))
    fields.append(via(request.version))
    if upgrade:
        fields.append(("Connection", "upgrade"))
    elif not keep_alive:
        fields.append(("Connection", "close"))
    if parent_authorization is None:
        return serialize(f"{request.method} {target.path} HTTP/1.1", fields)
    if parent_authorization:
        fields.append(("Proxy-Authorization", parent_authorization))
    return serialize(f"{request.method} http://{target.authority}{target.path} HTTP/1.1", fields)


def response_head(response: ResponseHead, fields: Fields, connection: str | None = None) -> bytes:
    fields = [*fields, via(response.version)]
    if connection:
        fields.append(("Connection", connection))
    return serialize(f"HTTP/1.1 {response.status} {response.reason}", fields)


def interim_head(response: ResponseHead) -> bytes:
    """A 1xx answer, passed on (to HTTP/1.1 clients only: HTTP/1.0 has none)."""
    return response_head(response, end_to_end(response))


def upgrade_head(response: ResponseHead) -> bytes:
    """The 101 that turns a forwarded request into a tunnel."""
    return response_head(response, end_to_end(response, keep_upgrade=True), "upgrade")


class FinalHead(NamedTuple):
    head: bytes  # serialised, for the client
    dechunk: bool  # the body is relayed de-chunked (an HTTP/1.0 client)
    keep_client: bool  # the client connection may carry another request


def final_head(response: ResponseHead, client_version: str, framing: BodyFraming, keep_client: bool) -> FinalHead:
    """The final response head for the client, how to relay its body, whether to keep the client.

    An HTTP/1.0 client gets a chunked body de-chunked (and the connection closed after);
    a coding it cannot receive (gzip...) is the upstream's ProtocolError (a 502).
    """
    http10 = client_version == "HTTP/1.0"
    if http10 and framing.codings and framing.codings != ("chunked",):
        raise ProtocolError(502, f"transfer coding {framing.codings[0]!r} cannot reach an HTTP/1.0 client")
    dechunk = http10 and framing.kind == Framing.CHUNKED
    keep_client = keep_client and not dechunk and framing.kind != Framing.CLOSE
    fields = end_to_end(response)
    if framing.kind == Framing.NONE:
        fields.extend(metadata_fields(response, with_codings=not http10))
    elif not dechunk:
        fields.extend(framing_fields(framing))
    connection = "keep-alive" if keep_client and http10 else None
    if not keep_client:
        connection = "close"
    return FinalHead(response_head(response, fields, connection), dechunk, keep_client)


def error_response(status: int, message: str, close: bool, extra: Fields | None = None) -> bytes:
    """A short text/plain answer of dprl's own."""
    body = f"{message}\n".encode()
    fields = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))), *(extra or [])]
    if close:
        fields.append(("Connection", "close"))
    return serialize(f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", fields) + body


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
CONNECTION_ESTABLISHED = b"HTTP/1.1 200 Connection Established\r\n\r\n"
