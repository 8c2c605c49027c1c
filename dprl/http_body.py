"""Streaming message bodies from one Endpoint to another, never buffering a whole body.

A chunked body is relayed as it came (or de-chunked for an HTTP/1.0 client), but every
chunk size is still parsed: the proxy must know where the message ends to know where
the next one starts.
"""

from __future__ import annotations

from .endpoint import RECV_SIZE, Endpoint
from .errors import ConnectionLost
from .http_head import Framing, check_trailer_line, parse_chunk_line

MAX_CHUNK_LINE = 4096
MAX_TRAILER_FIELDS = 100


def relay_body(src: Endpoint, dst: Endpoint, framing: str, length: int, dechunk: bool = False) -> None:
    """Relay one body framed as ``framing``; dst's queued bytes are flushed at the end."""
    src.before_wait = dst.flush
    try:
        if framing == Framing.LENGTH:
            relay_exact(src, dst, length)
        elif framing == Framing.CHUNKED:
            relay_chunked(src, dst, dechunk)
        elif framing == Framing.CLOSE:
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
            dst.write(line + b"\r\n")
        relay_exact(src, dst, size)
        _expect_crlf(src)
        if not dechunk:
            dst.write(b"\r\n")
    if not dechunk:
        dst.write(line + b"\r\n")
    for _ in range(MAX_TRAILER_FIELDS + 1):
        field = src.read_line(MAX_CHUNK_LINE)
        if not field:
            break
        check_trailer_line(field, src.error)
        if not dechunk:
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
