"""Message heads: where one ends in a byte stream, and what it says (RFC 9112 2-5).

Pure functions over bytes; the reader that feeds them lives with the sockets. Limits are
checked while a head is still arriving, so an endless line or header block is refused
as soon as it passes the limit, not when (if ever) it ends.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from . import grammar
from .errors import ProtocolError

# RFC 9110 2.5: a 1.x message of a higher minor version is processed as the highest minor
# version we implement (1.1); HTTP/1.0 keeps its own rules (no chunked, opt-in keep-alive).
_VERSIONS = {"HTTP/1.0": "HTTP/1.0", **{f"HTTP/1.{minor}": "HTTP/1.1" for minor in range(1, 10)}}
# Framing fields: read into a BodyFraming (framing.py), never forwarded as they came.
FRAMING_FIELDS = frozenset(("content-length", "transfer-encoding"))

Fields = list[tuple[str, str]]
_NO_TOKENS: frozenset[str] = frozenset()


@dataclass(slots=True)
class MessageHead:
    version: str  # the version it is processed as: HTTP/1.0 or HTTP/1.1
    fields: Fields  # as received: original case and order, for forwarding
    index: dict[str, list[str]]  # lowercase name -> values as received, one per field line
    connection: frozenset[str]  # the Connection field's options, lowercased (read once: asked often)

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

    def tokens(self, name: str) -> set[str]:
        """A list field's items, lowercased (``Connection``, ``Upgrade``...)."""
        return {v.lower() for v in self.values(name)} if name in self.index else set()


@dataclass(slots=True)
class RequestHead(MessageHead):
    method: str
    target: str


@dataclass(slots=True)
class ResponseHead(MessageHead):
    status: int
    reason: str


def is_interim(status: int) -> bool:
    """A 1xx answer that another answer follows (RFC 9110 15.2); 101 ends HTTP on the
    connection instead, so it is final for a relay."""
    return 100 <= status < 200 and status != 101


# delimiting ------------------------------------------------------------------------------
def head_finder(max_line: int, max_head: int, requests: bool = False) -> Callable[[bytearray], int]:
    """Where a head ends in a buffer that grows as bytes arrive: its length, or -1 while incomplete.

    Make one per connection: it remembers how far the current head was searched (each
    byte is searched once), and starts over after each head it finds. Raises
    ProtocolError: 414 first line over ``max_line``, 431 head over ``max_head``, 400 for
    a line ended by a bare LF (refused now, not after waiting for a CRLF). For
    ``requests``, empty lines before a request-line are dropped from the buffer (RFC
    9112 2.2: they are ignored).
    """
    searched = 0

    def find(buf: bytearray) -> int:
        nonlocal searched
        if requests and buf[:2] == b"\r\n":
            while buf[:2] == b"\r\n":
                del buf[:2]
            searched = 0
        end = buf.find(b"\r\n\r\n", searched)
        bare = buf.find(b"\n\n", searched)
        if bare >= 0 and (end < 0 or bare < end):
            raise ProtocolError(400, "bare LF as a line terminator")
        length = end + 4 if end >= 0 else len(buf)
        if length > max_line and buf.find(b"\r\n", 0, min(length, max_line + 2)) < 0:
            raise ProtocolError(414, f"first line longer than {max_line} bytes")
        if length > max_head:
            raise ProtocolError(431, f"header block over {max_head} bytes")
        if end < 0:
            searched = max(0, len(buf) - 3)
            return -1
        searched = 0
        return length

    return find


def find_head_end(buf: bytes | bytearray, max_line: int, max_head: int) -> int:
    """The length of a complete head at the start of ``buf``, or -1 (one-shot ``head_finder``)."""
    return head_finder(max_line, max_head)(bytearray(buf) if isinstance(buf, bytes) else buf)


# parsing ---------------------------------------------------------------------------------
def parse_request_head(data: bytes, max_fields: int = 100) -> RequestHead:
    """Parse a request head ending in CRLF CRLF."""
    match, version, fields, index, connection = _parse_head(data, grammar.REQUEST_LINE, 3, "request", max_fields)
    return RequestHead(version, fields, index, connection, match[1].decode("ascii"), match[2].decode("ascii"))


@functools.lru_cache(maxsize=1024)
def parse_connect_head(data: bytes, max_fields: int = 100) -> RequestHead:
    """``parse_request_head`` and ``check_host_field`` of a CONNECT head, done once per
    distinct head: a client sends the same few again and again (its targets, its
    credentials), and a tunnel has no other per-request work to spread the parse over.
    Refused heads raise each time (nothing is kept of them). The head returned is shared
    by every connection that sent those bytes: read it, never change it."""
    request = parse_request_head(data, max_fields)
    check_host_field(request)
    return request


def parse_response_head(data: bytes, max_fields: int = 200) -> ResponseHead:
    """Parse a response head ending in CRLF CRLF."""
    match, version, fields, index, connection = _parse_head(data, grammar.STATUS_LINE, 1, "status", max_fields)
    return ResponseHead(version, fields, index, connection, int(match[2]), (match[3] or b"").decode("latin-1"))


class _Parsed(NamedTuple):
    match: re.Match[bytes]  # the start line's
    version: str  # as it is processed
    fields: Fields
    by_name: dict[str, list[str]]  # (not "index": that is a tuple method)
    connection: frozenset[str]  # Connection's options


def _parse_head(data: bytes, start_line: re.Pattern[bytes], version_group: int, kind: str, max_fields: int) -> _Parsed:
    lines = data[:-4].split(b"\r\n")
    match = start_line.fullmatch(lines[0])
    if match is None:
        raise ProtocolError(400, f"malformed {kind} line {show(lines[0])}")
    version = _VERSIONS.get(match[version_group].decode("ascii")) or _unsupported(match[version_group])
    if len(lines) - 1 > max_fields:
        raise ProtocolError(431, f"more than {max_fields} header fields")
    fields, index = parse_fields(lines[1:])
    connection = _NO_TOKENS if "connection" not in index else _tokens(index["connection"])
    return _Parsed(match, version, fields, index, connection)


def _tokens(raw: list[str]) -> frozenset[str]:
    return frozenset(item.lower() for value in raw for v in value.split(",") if (item := v.strip(" \t")))


def _unsupported(version: bytes) -> str:
    raise ProtocolError(505, f"unsupported HTTP version {version.decode('ascii')}")


def parse_fields(lines: list[bytes]) -> tuple[Fields, dict[str, list[str]]]:
    """Field lines (CRLF stripped) into (fields as received, lowercase index)."""
    fields: Fields = []
    index: dict[str, list[str]] = {}
    match_line = grammar.FIELD_LINE.fullmatch
    for line in lines:
        match = match_line(line)
        if match is None:
            if line[:1] in (b" ", b"\t"):
                raise ProtocolError(400, "obsolete line folding in header field")
            raise ProtocolError(400, f"malformed header field {show(line)}")
        name, value = match[1].decode("ascii"), match[2].decode("latin-1")
        fields.append((name, value))
        lower = name.lower()
        if lower in index:
            index[lower].append(value)
        else:
            if "_" in lower and lower.replace("_", "-") in FRAMING_FIELDS:
                # CGI-style servers map "_" to "-": Content_Length would frame the body
                # there while every parser on the way ignored it.
                raise ProtocolError(400, f"field name {name!r} spells a framing field with '_'")
            index[lower] = [value]
    return fields, index


def check_host_field(request: RequestHead) -> None:
    """RFC 9112 3.2: 400 for an HTTP/1.1 request without Host, with several, or an invalid one.

    Absolute-form targets are exempt (RFC 9112 3.2.2): a proxy MUST ignore the received
    Host there and generate it from the target, so duplicates and malformed values
    (curl 7.88 sends ``Host: ::1:PORT`` on a reused connection) are dropped, not refused.
    CONNECT is exempt from "without" (as in Go's net/http): its target is the authority.
    """
    if is_absolute_form(request.target):
        return
    hosts = request.raw_values("host")
    if len(hosts) > 1:
        raise ProtocolError(400, "more than one Host field")
    if not hosts:
        if request.version != "HTTP/1.0" and request.method != "CONNECT":
            raise ProtocolError(400, "HTTP/1.1 request without a Host field")
        return
    if not grammar.HOST_FIELD.fullmatch(hosts[0]):
        raise ProtocolError(400, f"invalid Host field {hosts[0][:60]!r}")


def is_absolute_form(target: str) -> bool:
    """``scheme://...`` (RFC 9112 3.2.2): the target names the origin, not the Host field."""
    scheme, sep, _ = target.partition("://")
    return bool(sep) and grammar.SCHEME.fullmatch(scheme) is not None


def show(line: bytes, limit: int = 60) -> str:
    """A line for an error message: escaped, and cut at ``limit`` bytes."""
    text = repr(line[:limit])[2:-1]
    return f"'{text}...'" if len(line) > limit else f"'{text}'"
