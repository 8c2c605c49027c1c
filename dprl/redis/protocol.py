"""RESP2, sans I/O: commands to bytes, bytes to replies.

Replies are read by ``hiredis.Reader`` when hiredis is installed (C, fast) and otherwise
by ``RespReader``, a pure-Python reader with the same interface: ``feed(bytes)``, then
``gets()`` returns the next reply, or False while it is incomplete. Error replies come
back as ``ReplyError`` values (not raised), so a reply stays matched to its command.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

try:
    import hiredis
except ImportError:  # the pure-Python reader below serves instead
    hiredis = None  # type: ignore[assignment]  # an optional module: None when not installed


class ReplyError(Exception):
    """An error reply from Redis; ``code`` is its first word (ERR, NOSCRIPT, MOVED, BUSY...)."""

    @property
    def code(self) -> str:
        return str(self).split(" ", 1)[0]


class ProtocolError(Exception):
    """Bytes from Redis that are not RESP: the connection cannot be trusted any more."""


def pack(command: Sequence[object]) -> bytes:
    """RESP-encode a command (an array of bulk strings)."""
    out = [b"*%d\r\n" % len(command)]
    for arg in command:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


_INCOMPLETE = object()

# A decoded RESP reply: int, bytes, None, a list of replies, or a ReplyError. RESP is
# dynamically typed: each script's contract (scripts.py) names what its reply holds.
Reply = Any


class Reader(Protocol):
    """What dprl needs of a reply reader (hiredis.Reader, or RespReader)."""

    def feed(self, data: bytes) -> None: ...

    def gets(self) -> Reply: ...


class RespReader:
    """Replies from a RESP2 byte stream, in pure Python (``hiredis.Reader``'s interface)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def gets(self) -> Reply:
        value, end = self._parse(0)
        if value is _INCOMPLETE:
            return False
        del self._buf[:end]
        return value

    def _parse(self, pos: int) -> tuple[object, int]:
        buf = self._buf
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return _INCOMPLETE, pos
        kind, line, after = buf[pos : pos + 1], bytes(buf[pos + 1 : eol]), eol + 2
        try:
            if kind == b"+":
                return line, after
            if kind == b"-":
                return ReplyError(line.decode("utf-8", "replace")), after
            if kind == b":":
                return int(line), after
            if kind == b"$":
                size = int(line)
                if size < 0:
                    return None, after
                if len(buf) < after + size + 2:
                    return _INCOMPLETE, pos
                return bytes(buf[after : after + size]), after + size + 2
            if kind == b"*":
                count = int(line)
                if count < 0:
                    return None, after
                items = []
                for _ in range(count):
                    item, after = self._parse(after)
                    if item is _INCOMPLETE:
                        return _INCOMPLETE, pos
                    items.append(item)
                return items, after
        except ValueError:
            pass
        raise ProtocolError(f"not a RESP reply: {bytes(buf[pos : pos + 40])!r}")


def new_reader() -> Reader:
    """hiredis's reader if it is installed, else the pure-Python one."""
    if hiredis is not None:
        return hiredis.Reader(replyError=ReplyError, protocolError=ProtocolError)
    return RespReader()
