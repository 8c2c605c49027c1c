"""Streaming message bodies from one Endpoint to another, never buffering a whole body.

A chunked body is relayed chunk by chunk in canonical form (or de-chunked for an
HTTP/1.0 client): every chunk-size line is parsed and written again as ``%x CRLF``
without extensions, and trailers are re-serialised with the fields that must not be
trailers dropped. The next hop sees exactly the boundaries dprl computed, whatever
whitespace or extension syntax its own parser would have read differently.
"""

from __future__ import annotations

from .endpoint import RECV_SIZE, Endpoint
from .errors import ConnectionLost
from .http_head import BodyFraming, Framing, parse_chunk_line, trailer_field

MAX_CHUNK_LINE = 4096
MAX_TRAILER_FIELDS = 100


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
    while True:
        data = src.take(RECV_SIZE)
        if not data:
            return
        dst.write(data)


def relay_chunked(src: Endpoint, dst: Endpoint, dechunk: bool) -> None:
    while True:
        line = src.read_line(MAX_CHUNK_LINE)
        size = parse_chunk_line(line, src.error)
        if size == 0:
            break
        if not dechunk:
            dst.write(b"%x\r\n" % size)
        relay_exact(src, dst, size)
        _expect_crlf(src)
        if not dechunk:
            dst.write(b"\r\n")
    if not dechunk:
        dst.write(b"0\r\n")
    for _ in range(MAX_TRAILER_FIELDS + 1):
        line = src.read_line(MAX_CHUNK_LINE)
        if not line:
            break
        field = trailer_field(line, src.error)
        if field is not None and not dechunk:
            dst.write(field + b"\r\n")
    else:
        raise src.error(f"more than {MAX_TRAILER_FIELDS} trailer fields", 400)
    if not dechunk:
        dst.write(b"\r\n")


def _expect_crlf(src: Endpoint) -> None:
    while len(src.buf) < 2:
        if not src.fill():
            raise ConnectionLost(src.side, "closed in the middle of a chunk")
    if src.buf[:2] != b"\r\n":
        raise src.error("chunk data not followed by CRLF", 400)
    del src.buf[:2]
