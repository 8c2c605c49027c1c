"""Where a body ends (RFC 9112 6-7), and the framing fields a relay writes for the next hop.

Framing is per hop: Content-Length and Transfer-Encoding are read into a
``BodyFraming`` and never forwarded as they came; the relay writes the fields of the
framing it actually uses (``framing_fields``). So no ``Connection: content-length``
trick, odd spelling or leading zero can make the next hop see a different message
boundary than dprl did. Chunked bodies are relayed chunk by chunk, with each chunk-size
line and trailer re-written in canonical form.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from . import grammar
from .errors import ProtocolError
from .head import FRAMING_FIELDS, MessageHead, RequestHead, ResponseHead, parse_fields, show

MAX_CHUNK_LINE = 4096
MAX_TRAILER_FIELDS = 100
# RFC 9110 7.6.1: fields that describe one hop, never forwarded as they came.
HOP_BY_HOP = frozenset(
    (
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "upgrade",
    )
)
# RFC 9110 6.5.1: fields a sender must not put in trailers (framing, routing, request
# modifiers, authentication, response control, content processing), and hop-by-hop
# ones; dropped from relayed trailers so no trailer can change what a head decided.
_TRAILER_FORBIDDEN = frozenset(
    (
        *HOP_BY_HOP,
        *FRAMING_FIELDS,
        "host",
        "authorization",
        "www-authenticate",
        "authentication-info",
        "proxy-authentication-info",
        "cookie",
        "set-cookie",
        "cache-control",
        "expect",
        "max-forwards",
        "pragma",
        "range",
        "age",
        "expires",
        "date",
        "location",
        "retry-after",
        "vary",
        "warning",
        "content-encoding",
        "content-type",
        "content-range",
        "content-location",
        "via",
        "forwarded",
    )
)


class Framing:
    """How a message body ends (RFC 9112 6.3)."""

    NONE = "none"
    LENGTH = "length"
    CHUNKED = "chunked"
    CLOSE = "close"  # response only: read until the upstream closes


class BodyFraming(NamedTuple):
    """Where a body ends, and the transfer codings it carries (``chunked`` last, if any).

    A NamedTuple rather than a frozen dataclass: one is made for every message, and a
    tuple is made in C.
    """

    kind: str
    length: int = 0
    codings: tuple[str, ...] = ()

    @property
    def has_body(self) -> bool:
        return self.kind in (Framing.CHUNKED, Framing.CLOSE) or self.length > 0


NO_BODY = BodyFraming(Framing.NONE)


def _content_length(head: MessageHead) -> int | None:
    """RFC 9110 8.6: identical repeated values may be collapsed; anything else is invalid."""
    raw = head.raw_values("content-length")
    if not raw:
        return None
    values = {v.strip(" \t") for field in raw for v in field.split(",")}
    if len(values) != 1 or not grammar.CONTENT_LENGTH.fullmatch(next(iter(values))):
        raise ProtocolError(400, f"invalid Content-Length {', '.join(raw)!r}")
    return int(values.pop())


def _codings(head: MessageHead) -> tuple[str, ...]:
    """The transfer codings, canonical (lowercase, parameters without whitespace).

    Empty list elements are skipped (RFC 9110 5.6.1), so ``,chunked`` is ``chunked``;
    anything that is not a coding (quotes, spaces inside, an empty list) is refused.
    """
    codings = []
    for item in head.values("transfer-encoding"):
        match = grammar.CODING.fullmatch(item)
        if match is None:
            raise ProtocolError(400, f"invalid Transfer-Encoding {item!r}")
        codings.append(match[1].lower() + re.sub(r"[ \t]+", "", match[2]))
    if not codings:
        raise ProtocolError(400, "empty Transfer-Encoding")
    if codings.count("chunked") > 1 or ("chunked" in codings and codings[-1] != "chunked"):
        raise ProtocolError(400, f"invalid Transfer-Encoding {', '.join(codings)!r}")
    return tuple(codings)


def request_framing(head: RequestHead) -> BodyFraming:
    """Where a request body ends; ambiguous framing is refused (RFC 9112 6.1, 6.3).

    Codings other than chunked get 501 (RFC 9112 6.1 lets a server refuse what it does
    not implement): relaying them would rest the body's boundary on every origin agreeing
    about codings nobody uses in requests, which is where smuggling lives.
    """
    length = _content_length(head)
    if head.has("transfer-encoding"):
        if length is not None:
            raise ProtocolError(400, "both Transfer-Encoding and Content-Length")
        if head.version == "HTTP/1.0":
            raise ProtocolError(400, "Transfer-Encoding in an HTTP/1.0 request")
        codings = _codings(head)
        if codings[-1] != "chunked":
            raise ProtocolError(400, "request Transfer-Encoding must end in chunked")
        if len(codings) > 1:
            raise ProtocolError(501, f"transfer coding {codings[0]!r} is not supported in requests")
        return BodyFraming(Framing.CHUNKED, codings=codings)
    if length is not None:
        return BodyFraming(Framing.LENGTH, length)
    return NO_BODY


def response_framing(head: ResponseHead, request_method: str) -> BodyFraming:
    """Where a response body ends, from the request method and the status."""
    status = head.status
    if request_method == "HEAD" or status < 200 or status in (204, 304):
        return NO_BODY
    if head.has("transfer-encoding"):
        # RFC 9112 6.3: Transfer-Encoding overrides Content-Length, which is dropped
        codings = _codings(head)
        kind = Framing.CHUNKED if codings[-1] == "chunked" else Framing.CLOSE  # rule 4: until close
        return BodyFraming(kind, codings=codings)
    length = _content_length(head)
    if length is None:
        return BodyFraming(Framing.CLOSE)
    return BodyFraming(Framing.LENGTH, length)


def framing_fields(framing: BodyFraming) -> list[tuple[str, str]]:
    """The framing fields a relay writes for a body it relays as ``framing`` says."""
    if framing.kind == Framing.LENGTH:
        return [("Content-Length", str(framing.length))]
    if framing.codings:
        return [("Transfer-Encoding", ", ".join(framing.codings))]
    return []


def metadata_fields(head: ResponseHead, with_codings: bool) -> list[tuple[str, str]]:
    """Content-Length / Transfer-Encoding of a bodiless response to HEAD, or a 304.

    They describe the representation, not this message (RFC 9110 8.6, 15.4.5): passed on,
    canonical, when valid; never for 1xx and 204, which must not carry them.
    """
    if head.status < 200 or head.status == 204:
        return []
    fields: list[tuple[str, str]] = []
    try:
        length = _content_length(head)
        if length is not None:
            fields.append(("Content-Length", str(length)))
        if with_codings and head.has("transfer-encoding"):
            fields.append(("Transfer-Encoding", ", ".join(_codings(head))))
    except ProtocolError:
        return []
    return fields


# chunked bodies --------------------------------------------------------------------------
def find_line_end(buf: bytes | bytearray, limit: int = MAX_CHUNK_LINE) -> int:
    """Index of the CRLF ending the line at the start of ``buf``, or -1 while incomplete."""
    end = buf.find(b"\r\n", 0, limit + 2)
    if end < 0 and len(buf) > limit:
        raise ProtocolError(400, f"line longer than {limit} bytes in a chunked body")
    return end


def parse_chunk_line(line: bytes) -> int:
    """Size of the chunk announced by ``line`` (CRLF already stripped); extensions checked."""
    match = grammar.CHUNK_LINE.fullmatch(line)
    if match is None:
        raise ProtocolError(400, f"invalid chunk header {show(line)}")
    return int(match[1], 16)


def chunk_line(size: int) -> bytes:
    """A chunk-size line in canonical form: hex digits, no extensions."""
    return b"%x\r\n" % size


def trailer_field(line: bytes) -> bytes | None:
    """One trailer line, canonical (``name: value``), or None if it must not be relayed."""
    fields, _ = parse_fields([line])
    name, value = fields[0]
    if name.lower() in _TRAILER_FORBIDDEN or name.lower().startswith("if-"):
        return None
    return f"{name}: {value}".encode("latin-1")
