"""Strict parsing of HTTP/1.x message heads (RFC 9112), and the framing they imply.

Every regex sits next to the ABNF it implements. Anything outside the grammar is an
error, never a guess: bare CR or LF, obs-fold, NUL, whitespace before the colon, and
ambiguous framing (Content-Length with Transfer-Encoding, differing Content-Lengths) are
the classic request-smuggling holes, so they are refused rather than repaired.
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
_QUOTED = rb'"(?:[\t\x20\x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t\x20-\x7e\x80-\xff])*"'
_CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]{1,16})"
    rb"((?:[ \t]*;[ \t]*" + _TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?)*)"
)
_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")

SUPPORTED_VERSIONS = ("HTTP/1.1", "HTTP/1.0")

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
        "transfer-encoding",  # re-added by the relay when it forwards a chunked body as it came
    )
)

Headers = list[tuple[str, str]]


class Framing:
    """How a message body ends (RFC 9112 6.3)."""

    NONE = "none"
    LENGTH = "length"
    CHUNKED = "chunked"
    CLOSE = "close"  # response only: read until the upstream closes


@dataclass(slots=True)
class MessageHead:
    version: str
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
        return [item for value in raw for v in value.split(",") if (item := v.strip())]

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
    version = match[3].decode("ascii")
    if version not in SUPPORTED_VERSIONS:
        raise ClientProtocolError(f"unsupported HTTP version {version}", 505)
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
    version = match[1].decode("ascii")
    if version not in SUPPORTED_VERSIONS:
        raise UpstreamError(f"unsupported HTTP version {version} from upstream")
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


def _content_length(head: MessageHead, error: type[ProxyError]) -> int | None:
    """RFC 9110 8.6: identical repeated values may be collapsed; anything else is invalid."""
    raw = head.raw_values("content-length")
    if not raw:
        return None
    values = {v.strip() for field in raw for v in field.split(",")}
    if len(values) != 1 or not _CONTENT_LENGTH.fullmatch(next(iter(values))):
        raise error(f"invalid Content-Length {', '.join(raw)!r}", 400)
    return int(values.pop())


def _is_chunked(head: MessageHead, error: type[ProxyError]) -> bool:
    """True if chunked is the final coding; False if codings end otherwise."""
    codings = [c.lower() for c in head.values("transfer-encoding")]
    if codings.count("chunked") > 1 or ("chunked" in codings and codings[-1] != "chunked"):
        raise error(f"invalid Transfer-Encoding {', '.join(codings)!r}", 400)
    return codings[-1] == "chunked"


def request_framing(head: RequestHead) -> tuple[str, int]:
    """(Framing, length) of a request body; ambiguous framing is refused (RFC 9112 6.1, 6.3)."""
    has_te = head.has("transfer-encoding")
    length = _content_length(head, ClientProtocolError)
    if has_te:
        if length is not None:
            raise ClientProtocolError("both Transfer-Encoding and Content-Length")
        if head.version == "HTTP/1.0":
            raise ClientProtocolError("Transfer-Encoding in an HTTP/1.0 request")
        if not head.values("transfer-encoding") or not _is_chunked(head, ClientProtocolError):
            raise ClientProtocolError("request Transfer-Encoding must end in chunked")
        return Framing.CHUNKED, 0
    if length:
        return Framing.LENGTH, length
    return Framing.NONE, 0


def response_framing(head: ResponseHead, request_method: str) -> tuple[str, int]:
    """(Framing, length) of a response body, from the request method and the status."""
    status = head.status
    if request_method == "HEAD" or status < 200 or status in (204, 304):
        return Framing.NONE, 0
    if head.has("transfer-encoding"):
        if head.values("transfer-encoding") and _is_chunked(head, UpstreamError):
            return Framing.CHUNKED, 0
        return Framing.CLOSE, 0  # RFC 9112 6.3 rule 4: read until close
    length = _content_length(head, UpstreamError)
    if length is None:
        return Framing.CLOSE, 0
    return (Framing.LENGTH, length) if length else (Framing.NONE, 0)


def parse_chunk_line(line: bytes, error: type[ProxyError]) -> int:
    """Size of the chunk announced by ``line`` (CRLF already stripped); extensions checked."""
    match = _CHUNK_LINE.fullmatch(line)
    if match is None:
        raise error(f"invalid chunk header {_show(line)}", 400)
    return int(match[1], 16)


def check_trailer_line(line: bytes, error: type[ProxyError]) -> None:
    _fields([line], error)


def _show(line: bytes, limit: int = 60) -> str:
    text = repr(line[:limit])[2:-1]
    return f"'{text}...'" if len(line) > limit else f"'{text}'"
