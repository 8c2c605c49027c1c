"""Strict parsing of HTTP/1.x message heads (RFC 9112), and the framing they imply.

Every regex sits next to the ABNF it implements. Anything outside the grammar is an
error, never a guess: bare CR or LF, obs-fold, NUL, whitespace before the colon, and
ambiguous framing (Content-Length with Transfer-Encoding, differing Content-Lengths) are
the classic request-smuggling holes, so they are refused rather than repaired.

Framing is per hop: the fields that say where a body ends (Content-Length,
Transfer-Encoding) are read here into a ``BodyFraming`` and never forwarded as they
came; the relay writes the fields of the framing it actually uses (``framing_fields``).
So no ``Connection: content-length`` trick, odd spelling or leading zero can make the
next hop see a different message boundary than dprl did.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import ClientProtocolError, ProxyError, UpstreamError

# RFC 9110 5.6.2  token = 1*tchar
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
# RFC 9112 5.1   field-line = field-name ":" OWS field-value OWS
# RFC 9110 5.5   field-value = *field-content ; field-vchar = VCHAR / obs-text
# The lazy value and the trailing [ \t]* strip OWS; control bytes (CR, LF, NUL...) never match.
_FIELD_LINE = re.compile(rb"(" + _TOKEN + rb"):[ \t]*([\t\x20-\x7e\x80-\xff]*?)[ \t]*")
# RFC 9112 3     request-line = method SP request-target SP HTTP-version
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) (HTTP/[0-9]\.[0-9])")
# RFC 9112 4     status-line = HTTP-version SP status-code SP [ reason-phrase ]
# (the SP before an empty reason is often missing in the wild; accepted)
_STATUS_LINE = re.compile(rb"(HTTP/[0-9]\.[0-9]) ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*))?")
# RFC 9112 7.1   chunk = chunk-size [ chunk-ext ] CRLF ; chunk-size = 1*HEXDIG
#                chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
# At most 16 digits (leading zeros included): a size that needs more is refused, not parsed.
_QUOTED = rb'"(?:[\t\x20\x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t\x20-\x7e\x80-\xff])*"'
_CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]{1,16})"
    rb"((?:[ \t]*;[ \t]*" + _TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?)*)"
)
# RFC 9110 8.6   Content-Length = 1*DIGIT (leading zeros allowed; 18 digits fit in an int64)
_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")
# RFC 9112 6.1   transfer-coding = token *( OWS ";" OWS transfer-parameter )
#                transfer-parameter = token BWS "=" BWS ( token / quoted-string )
_CODING = re.compile(
    r"(" + _TOKEN.decode() + r")((?:[ \t]*;[ \t]*" + _TOKEN.decode() + r"[ \t]*=[ \t]*(?:"
    r"" + _TOKEN.decode() + r"|" + _QUOTED.decode("latin-1") + r"))*)"
)
# RFC 9110 7.2 / RFC 3986 3.2.2   Host = uri-host [ ":" port ]
#   uri-host = IP-literal / IPv4address / reg-name ; reg-name = *( unreserved / pct-encoded / sub-delims )
_HOST_FIELD = re.compile(r"(?:\[[0-9A-Za-z:.]+\]|(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*)(?::[0-9]*)?")

# RFC 9110 2.5: a 1.x message of a higher minor version is processed as the highest minor
# version we implement (1.1); HTTP/1.0 keeps its own rules (no chunked, opt-in keep-alive).
_VERSIONS = {"HTTP/1.0": "HTTP/1.0", **{f"HTTP/1.{minor}": "HTTP/1.1" for minor in range(1, 10)}}

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
# Framing fields: read into a BodyFraming, then written anew for the next hop.
FRAMING_FIELDS = frozenset(("content-length", "transfer-encoding"))
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
# RFC 9110 9.2.1: the safe methods, the only ones a proxy sends again by itself (below).
SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS", "TRACE"))

Headers = list[tuple[str, str]]


class Framing:
    """How a message body ends (RFC 9112 6.3)."""

    NONE = "none"
    LENGTH = "length"
    CHUNKED = "chunked"
    CLOSE = "close"  # response only: read until the upstream closes


@dataclass(frozen=True, slots=True)
class BodyFraming:
    """Where a body ends, and the transfer codings it carries (``chunked`` last, if any)."""

    kind: str
    length: int = 0
    codings: tuple[str, ...] = ()

    @property
    def has_body(self) -> bool:
        return self.kind in (Framing.CHUNKED, Framing.CLOSE) or self.length > 0


NO_BODY = BodyFraming(Framing.NONE)


@dataclass(slots=True)
class MessageHead:
    version: str  # the version we process it as: HTTP/1.0 or HTTP/1.1
    headers: Headers  # as received: original case and order, for forwarding
    index: dict[str, list[str]]  # lowercase name -> raw values, for lookups

    def has(self, name: str) -> bool:
        return name in self.index

    def raw_values(self, name: str) -> list[str]:
        """Values of a field (``name`` lowercase) as they came, one per field line."""
        return self.index.get(name, [])

    def values(self, name: str) -> list[str]:
        """Values of a field (``name`` lowercase), comma-separated lists split."""
        raw = self.index.get(name)
        if not raw:
            return []
        # OWS is SP and HTAB only: str.strip() would also eat NBSP and NEL (obs-text)
        return [item for value in raw for v in value.split(",") if (item := v.strip(" \t"))]

    def connection_tokens(self) -> set[str]:
        raw = self.index.get("connection")
        return {v.lower() for v in self.values("connection")} if raw else set()


@dataclass(slots=True)
class RequestHead(MessageHead):
    method: str
    target: str


@dataclass(slots=True)
class ResponseHead(MessageHead):
    status: int
    reason: str


def _fields(lines: list[bytes], error: type[ProxyError]) -> tuple[Headers, dict[str, list[str]]]:
    headers: Headers = []
    index: dict[str, list[str]] = {}
    match_line = _FIELD_LINE.fullmatch
    for line in lines:
        match = match_line(line)
        if match is None:
            if line[:1] in (b" ", b"\t"):
                raise error("obsolete line folding in header field", 400)
            raise error(f"malformed header field {_show(line)}", 400)
        name, value = match[1].decode("ascii"), match[2].decode("latin-1")
        headers.append((name, value))
        lower = name.lower()
        if lower in index:
            index[lower].append(value)
        else:
            if "_" in lower and lower.replace("_", "-") in FRAMING_FIELDS:
                # CGI-style servers map "_" to "-": Content_Length would frame the body
                # there while every parser on the way ignored it.
                raise error(f"field name {name!r} spells a framing field with '_'", 400)
            index[lower] = [value]
    return headers, index


def _split_head(data: bytes) -> list[bytes]:
    # data ends with CRLF CRLF (the reader guarantees it); a lone CR or LF inside a line
    # stays in that line and fails the grammar.
    return data[:-4].split(b"\r\n")


def parse_request_head(data: bytes, max_fields: int = 100) -> RequestHead:
    """Parse a request head ending in CRLF CRLF; raise ClientProtocolError with its status."""
    lines = _split_head(data)
    match = _REQUEST_LINE.fullmatch(lines[0])
    if match is None:
        raise ClientProtocolError(f"malformed request line {_show(lines[0])}")
    received = match[3].decode("ascii")
    version = _VERSIONS.get(received)
    if version is None:
        raise ClientProtocolError(f"unsupported HTTP version {received}", 505)
    if len(lines) - 1 > max_fields:
        raise ClientProtocolError(f"more than {max_fields} header fields", 431)
    headers, index = _fields(lines[1:], ClientProtocolError)
    return RequestHead(
        version=version,
        headers=headers,
        index=index,
        method=match[1].decode("ascii"),
        target=match[2].decode("ascii"),
    )


def parse_response_head(data: bytes, max_fields: int = 200) -> ResponseHead:
    """Parse a response head; any violation is the upstream's fault (502)."""
    lines = _split_head(data)
    match = _STATUS_LINE.fullmatch(lines[0])
    if match is None:
        raise UpstreamError(f"malformed status line {_show(lines[0])}")
    received = match[1].decode("ascii")
    version = _VERSIONS.get(received)
    if version is None:
        raise UpstreamError(f"unsupported HTTP version {received} from upstream")
    if len(lines) - 1 > max_fields:
        raise UpstreamError(f"more than {max_fields} header fields from upstream")
    headers, index = _fields(lines[1:], UpstreamError)
    return ResponseHead(
        version=version,
        headers=headers,
        index=index,
        status=int(match[2]),
        reason=(match[3] or b"").decode("latin-1"),
    )


def check_host_field(request: RequestHead) -> None:
    """RFC 9112 3.2: 400 for an HTTP/1.1 request without Host, with several, or an invalid one.

    CONNECT is exempt from "without" (as in Go's net/http): its target is the authority.
    """
    hosts = request.raw_values("host")
    if len(hosts) > 1:
        raise ClientProtocolError("more than one Host field")
    if not hosts:
        if request.version != "HTTP/1.0" and request.method != "CONNECT":
            raise ClientProtocolError("HTTP/1.1 request without a Host field")
        return
    if not _HOST_FIELD.fullmatch(hosts[0]):
        raise ClientProtocolError(f"invalid Host field {hosts[0][:60]!r}")


def _content_length(head: MessageHead, error: type[ProxyError]) -> int | None:
    """RFC 9110 8.6: identical repeated values may be collapsed; anything else is invalid."""
    raw = head.raw_values("content-length")
    if not raw:
        return None
    values = {v.strip(" \t") for field in raw for v in field.split(",")}
    if len(values) != 1 or not _CONTENT_LENGTH.fullmatch(next(iter(values))):
        raise error(f"invalid Content-Length {', '.join(raw)!r}", 400)
    return int(values.pop())


def _codings(head: MessageHead, error: type[ProxyError]) -> tuple[str, ...]:
    """The transfer codings, canonical (lowercase, parameters without whitespace).

    Empty list elements are skipped (RFC 9110 5.6.1), so ``,chunked`` is ``chunked``;
    anything that is not a coding (quotes, spaces inside, an empty list) is refused.
    """
    codings = []
    for item in head.values("transfer-encoding"):
        match = _CODING.fullmatch(item)
        if match is None:
            raise error(f"invalid Transfer-Encoding {item!r}", 400)
        params = re.sub(r"[ \t]+", "", match[2])
        codings.append(match[1].lower() + params)
    if not codings:
        raise error("empty Transfer-Encoding", 400)
    if codings.count("chunked") > 1 or ("chunked" in codings and codings[-1] != "chunked"):
        raise error(f"invalid Transfer-Encoding {', '.join(codings)!r}", 400)
    return tuple(codings)


def request_framing(head: RequestHead) -> BodyFraming:
    """Where a request body ends; ambiguous framing is refused (RFC 9112 6.1, 6.3).

    Codings other than chunked get 501 (RFC 9112 6.1 lets a server refuse what it does
    not implement): relaying them would rest the body's boundary on every origin agreeing
    about codings nobody uses in requests, which is where smuggling lives.
    """
    length = _content_length(head, ClientProtocolError)
    if head.has("transfer-encoding"):
        if length is not None:
            raise ClientProtocolError("both Transfer-Encoding and Content-Length")
        if head.version == "HTTP/1.0":
            raise ClientProtocolError("Transfer-Encoding in an HTTP/1.0 request")
        codings = _codings(head, ClientProtocolError)
        if codings[-1] != "chunked":
            raise ClientProtocolError("request Transfer-Encoding must end in chunked")
        if len(codings) > 1:
            raise ClientProtocolError(f"transfer coding {codings[0]!r} is not supported in requests", 501)
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
        codings = _codings(head, UpstreamError)
        kind = Framing.CHUNKED if codings[-1] == "chunked" else Framing.CLOSE  # rule 4: until close
        return BodyFraming(kind, codings=codings)
    length = _content_length(head, UpstreamError)
    if length is None:
        return BodyFraming(Framing.CLOSE)
    return BodyFraming(Framing.LENGTH, length)


def framing_fields(framing: BodyFraming) -> Headers:
    """The framing fields a relay writes for a body it relays as ``framing`` says."""
    if framing.kind == Framing.LENGTH:
        return [("Content-Length", str(framing.length))]
    if framing.codings:
        return [("Transfer-Encoding", ", ".join(framing.codings))]
    return []


def metadata_fields(head: ResponseHead, with_codings: bool) -> Headers:
    """Content-Length / Transfer-Encoding of a bodiless response to HEAD, or a 304.

    They describe the representation, not this message (RFC 9110 8.6, 15.4.5): passed on,
    canonical, when valid; never for 1xx and 204, which must not carry them.
    """
    if head.status < 200 or head.status == 204:
        return []
    fields: Headers = []
    try:
        length = _content_length(head, UpstreamError)
        if length is not None:
            fields.append(("Content-Length", str(length)))
        if with_codings and head.has("transfer-encoding"):
            fields.append(("Transfer-Encoding", ", ".join(_codings(head, UpstreamError))))
    except UpstreamError:
        return []
    return fields


def parse_chunk_line(line: bytes, error: type[ProxyError]) -> int:
    """Size of the chunk announced by ``line`` (CRLF already stripped); extensions checked."""
    match = _CHUNK_LINE.fullmatch(line)
    if match is None:
        raise error(f"invalid chunk header {_show(line)}", 400)
    return int(match[1], 16)


def trailer_field(line: bytes, error: type[ProxyError]) -> bytes | None:
    """One trailer line, canonical (``name: value``), or None if it must not be relayed."""
    headers, _ = _fields([line], error)
    name, value = headers[0]
    if name.lower() in _TRAILER_FORBIDDEN or name.lower().startswith("if-"):
        return None
    return f"{name}: {value}".encode("latin-1")


def _show(line: bytes, limit: int = 60) -> str:
    text = repr(line[:limit])[2:-1]
    return f"'{text}...'" if len(line) > limit else f"'{text}'"
