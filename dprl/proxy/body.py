"""Message bodies streamed from one endpoint to the other, never buffered whole.

A chunked body is relayed chunk by chunk in canonical form (or de-chunked for an
HTTP/1.0 client): every chunk-size line is parsed and written again as ``%x CRLF``
without extensions, and trailers are re-serialised with the fields that must not be
trailers dropped. The next hop sees exactly the boundaries dprl computed.
"""

from __future__ import annotations

from ..errors import ConnectionLost
from ..http.errors import ProtocolError
from ..http.framing import (
    MAX_TRAILER_FIELDS,
    BodyFraming,
    Framing,
    chunk_line,
    find_line_end,
    parse_chunk_line,
    trailer_field,
)
from ..net.endpoint import RECV_SIZE, Endpoint


def relay_body(src: Endpoint, dst: Endpoint, framing: BodyFraming, dechunk: bool = False) -> None:
    """Relay one body framed as ``framing``; dst's queued bytes are flushed at the end."""
    src.before_wait = dst.flush
    try:
        kind = framing.kind
        if kind == Framing.LENGTH:
            relay_exact(src, dst, framing.length)
        elif kind == Framing.CHUNKED:
            relay_chunked(src, dst, dechunk)
        elif kind == Framing.CLOSE:
            relay_until_close(src, dst)
        dst.flush()
    finally:
        src.before_wait = None


def relay_exact(src: Endpoint, dst: Endpoint, length: int) -> None:
    while length:
        data = src.take(min(length, RECV_SIZE))
        if not data:
            raise ConnectionLost(src.side, f"closed with {length} body bytes still due")
        dst.write(data)
        length -= len(data)


def relay_until_close(src: Endpoint, dst: Endpoint) -> None:
    while data := src.take(RECV_SIZE):
        dst.write(data)


def relay_chunked(src: Endpoint, dst: Endpoint, dechunk: bool) -> None:
    while size := parse_chunk_line(_read_line(src)):
        if not dechunk:
            dst.write(chunk_line(size))
        relay_exact(src, dst, size)
        if src.read_until(_two_bytes) != b"\r\n":
            raise ProtocolError(400, "chunk data not followed by CRLF")
        if not dechunk:
            dst.write(b"\r\n")
    if not dechunk:
        dst.write(b"0\r\n")
    for _ in range(MAX_TRAILER_FIELDS + 1):
        line = _read_line(src)
        if not line:
            break
        field = trailer_field(line)
        if field is not None and not dechunk:
            dst.write(field + b"\r\n")
    else:
        raise ProtocolError(400, f"more than {MAX_TRAILER_FIELDS} trailer fields")
    if not dechunk:
        dst.write(b"\r\n")


def _read_line(src: Endpoint) -> bytes:
    """One CRLF-terminated line of a chunked body, without its CRLF."""
    return src.read_until(_line_length)[:-2]


def _line_length(buf: bytearray) -> int:
    end = find_line_end(buf)
    return end + 2 if end >= 0 else -1


def _two_bytes(buf: bytearray) -> int:
    return 2 if len(buf) >= 2 else -1
