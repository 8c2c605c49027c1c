"""The pipe: opaque bytes both ways between two sockets, until both directions end.

Each direction is driven by I/O watchers on the hub's loop rather than by a greenlet of
its own: an idle pipe costs two watchers, not a greenlet stack, and a busy one no
greenlet switches. A direction starts with read()/write() and switches to os.splice
(zero-copy, through a kernel buffer made of an OS pipe) once a single read fills the
buffer, i.e. once it carries bulk data: the buffer's two descriptors are only spent on
pipes that move real volume.

End of stream on one side is passed on as a half-close (shutdown of writes on the
other); the pipe ends when both directions have ended. A reset or write error ends both,
and so does any other exception in a watcher callback: it is reported, never swallowed,
so whoever holds a slot for the pipe gets it back.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from typing import Any, NamedTuple

import gevent
import gevent.event

CHUNK = 65536
SPLICE_CHUNK = 1 << 20
_SPLICE_BUFFER_SIZE = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_SPLICE = hasattr(os, "splice")
_SPLICE_FLAGS = (getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)) if _SPLICE else 0
_READ, _WRITE = 1, 2


class _Direction:
    """Bytes from ``src`` to ``dst``; every method runs in the hub, and never blocks."""

    __slots__ = (
        "done",
        "dst",
        "dst_fd",
        "eof",
        "in_buffer",
        "pending",
        "pipe",
        "reader",
        "splice_buffer",
        "src",
        "src_fd",
        "total",
        "writer",
    )

    def __init__(self, pipe: _Pipe, src: socket.socket, dst: socket.socket, pending: bytes) -> None:
        loop = pipe.loop
        self.pipe = pipe
        self.src, self.dst = src, dst
        self.src_fd, self.dst_fd = src.fileno(), dst.fileno()
        self.reader = loop.io(self.src_fd, _READ)
        self.writer = loop.io(self.dst_fd, _WRITE)
        self.pending = memoryview(pending) if pending else None
        self.splice_buffer: tuple[int, int] | None = None  # (read end, write end) of an OS pipe
        self.in_buffer = 0
        self.eof = False
        self.done = False
        self.total = 0

    def start(self) -> None:
        if self.pending is not None:
            self.writer.start(self.on_writable)
        else:
            self.reader.start(self.on_readable)

    def on_readable(self) -> None:
        try:
            if self.splice_buffer is not None:
                self._splice_in()
                return
            try:
                data = os.read(self.src_fd, CHUNK)
            except BlockingIOError:
                return
            if not self._arrived(len(data)):
                return
            written = self._write(memoryview(data))
            if written < len(data):
                self.pending = memoryview(data)[written:]
                self.reader.stop()
                self.writer.start(self.on_writable)
            elif len(data) == CHUNK and _SPLICE:
                self._start_splicing()
        except OSError:
            self.pipe.abort()
        except Exception as exc:  # a bug must end the pipe, not leave it waiting for ever
            self.pipe.fail(exc)

    def on_writable(self) -> None:
        try:
            if self.splice_buffer is not None:
                if self._drain_buffer():
                    self.writer.stop()
                    self._resume()
                return
            assert self.pending is not None
            written = self._write(self.pending)
            self.pending = self.pending[written:] if written < len(self.pending) else None
            if self.pending is None:
                self.writer.stop()
                self._resume()
        except OSError:
            self.pipe.abort()
        except Exception as exc:
            self.pipe.fail(exc)

    def _write(self, data: memoryview) -> int:
        try:
            written = os.write(self.dst_fd, data)
        except BlockingIOError:
            return 0
        self.total += written
        return written

    def _resume(self) -> None:
        if self.eof:
            self._finish()
        else:
            self.reader.start(self.on_readable)

    # zero-copy path ----------------------------------------------------------------------
    def _start_splicing(self) -> None:
        read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):  # a smaller buffer still works
            fcntl.fcntl(write_end, _F_SETPIPE_SZ, _SPLICE_BUFFER_SIZE)
        self.splice_buffer = (read_end, write_end)

    def _arrived(self, size: int) -> bool:
        """After a read of ``size`` bytes from src: False at its end of stream (handled here)."""
        if not size:
            self._end_of_stream()
            return False
        self.pipe.activity = time.monotonic()
        return True

    def _splice_in(self) -> None:
        """Move everything src has now, through the splice buffer, for as long as dst keeps up."""
        assert self.splice_buffer is not None
        src, buffer_in = self.src_fd, self.splice_buffer[1]
        while True:
            try:
                moved = os.splice(src, buffer_in, SPLICE_CHUNK, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                return
            if not self._arrived(moved):
                return
            self.in_buffer += moved
            if not self._drain_buffer():
                self.reader.stop()
                self.writer.start(self.on_writable)
                return

    def _drain_buffer(self) -> bool:
        """Move what the splice buffer holds to dst; False if dst cannot take it all now."""
        assert self.splice_buffer is not None
        while self.in_buffer:
            try:
                moved = os.splice(self.splice_buffer[0], self.dst_fd, self.in_buffer, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                return False
            self.in_buffer -= moved
            self.total += moved
        return True

    # ending --------------------------------------------------------------------------------
    def _end_of_stream(self) -> None:
        self.eof = True
        self.reader.stop()
        if self.pending is None and not self.in_buffer:
            self._finish()

    def _finish(self) -> None:
        self.done = True
        self.reader.stop()
        self.writer.stop()
        with contextlib.suppress(OSError):
            self.dst.shutdown(socket.SHUT_WR)
        self.pipe.direction_done()

    def close(self) -> None:
        for watcher in (self.reader, self.writer):
            watcher.stop()
            watcher.close()
        if self.splice_buffer is not None:
            for fd in self.splice_buffer:
                os.close(fd)
            self.splice_buffer = None
        del self.pipe  # the pipe and its directions point at each other: freed now, not by the collector


class _Pipe:
    __slots__ = ("a_to_b", "activity", "b_to_a", "failure", "finished", "idle_timeout", "idle_timer", "loop")

    def __init__(self, a: socket.socket, b: socket.socket, to_b: bytes, to_a: bytes) -> None:
        self.loop = gevent.get_hub().loop
        self.finished = gevent.event.Event()
        self.activity = time.monotonic()
        self.failure: BaseException | None = None
        self.a_to_b = _Direction(self, a, b, to_b)
        self.b_to_a = _Direction(self, b, a, to_a)
        self.idle_timeout = 0.0
        self.idle_timer: Any = None  # a gevent loop timer (untyped)

    def end_when_idle(self, idle_timeout: float) -> None:
        """Abort once no byte moved either way for ``idle_timeout`` seconds: one hub timer,
        set again for the rest of the period whenever it finds bytes moved meanwhile."""
        self.idle_timeout = idle_timeout
        self._arm(idle_timeout)

    def _arm(self, seconds: float) -> None:
        self.idle_timer = timer = self.loop.timer(max(0.01, seconds))
        timer.start(self._idle_check)

    def _idle_check(self) -> None:
        self.idle_timer.close()
        quiet = time.monotonic() - self.activity
        if quiet >= self.idle_timeout:
            self.idle_timer = None
            self.abort()
        else:
            self._arm(self.idle_timeout - quiet)

    def direction_done(self) -> None:
        if self.a_to_b.done and self.b_to_a.done:
            self.finished.set()

    def abort(self) -> None:
        """A reset or write error: the pipe is over in both directions."""
        for direction in (self.a_to_b, self.b_to_a):
            direction.done = True
            direction.reader.stop()
            direction.writer.stop()
        self.finished.set()

    def fail(self, exc: BaseException) -> None:
        """An unexpected exception in a callback: kept (the first one) and the pipe ended."""
        if self.failure is None:
            self.failure = exc
        self.abort()

    def close(self) -> None:
        self.a_to_b.close()
        self.b_to_a.close()
        if self.idle_timer is not None:
            self.idle_timer.close()
            self.idle_timer = None


class PipeResult(NamedTuple):
    a_to_b: int  # bytes moved from a to b
    b_to_a: int
    failure: BaseException | None  # an unexpected exception that ended the pipe (a bug)


def pipe(
    a: socket.socket,
    b: socket.socket,
    to_b: bytes = b"",
    to_a: bytes = b"",
    idle_timeout: float = 0.0,
) -> PipeResult:
    """Move bytes both ways until both directions end (or the pipe fails).

    ``to_b``/``to_a`` are bytes already read from the other side (past a message head),
    sent first. ``idle_timeout`` (0 = none) ends the pipe once no byte moved either way
    for so long; one quiet direction alone is normal and does not count.
    """
    state = _Pipe(a, b, to_b, to_a)
    try:
        state.a_to_b.start()
        state.b_to_a.start()
        if idle_timeout:
            state.end_when_idle(idle_timeout)
        state.finished.wait()
        return PipeResult(state.a_to_b.total, state.b_to_a.total, state.failure)
    finally:
        state.close()  # watchers off before the owner closes the sockets
