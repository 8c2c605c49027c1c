"""Opaque byte pipe between two sockets (CONNECT tunnels, upgraded connections).

Each direction is driven by I/O watchers on the hub's loop rather than by a greenlet of
its own: an idle tunnel costs two watchers, not a greenlet stack, and a busy one no
greenlet switches. A direction starts with read()/write() and switches to os.splice
(zero-copy, through a pipe) once a single read fills the buffer, i.e. once it carries
bulk data: the pipe's two descriptors are only spent on tunnels that move real volume.

End of stream on one side is passed on as a half-close (shutdown of writes on the
other); the pipe ends when both directions have ended. A reset or write error ends both.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time

import gevent
import gevent.event

CHUNK = 65536
SPLICE_CHUNK = 1 << 20
_PIPE_SIZE = 1 << 20
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
        "in_pipe",
        "pending",
        "pipe",
        "reader",
        "src",
        "src_fd",
        "total",
        "tunnel",
        "writer",
    )

    def __init__(self, tunnel: _Tunnel, src: socket.socket, dst: socket.socket, pending: bytes) -> None:
        loop = tunnel.loop
        self.tunnel = tunnel
        self.src, self.dst = src, dst
        self.src_fd, self.dst_fd = src.fileno(), dst.fileno()
        self.reader = loop.io(self.src_fd, _READ)
        self.writer = loop.io(self.dst_fd, _WRITE)
        self.pending = memoryview(pending) if pending else None
        self.pipe: tuple[int, int] | None = None
        self.in_pipe = 0
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
            if self.pipe is not None:
                self._splice_in()
                return
            try:
                data = os.read(self.src_fd, CHUNK)
            except BlockingIOError:
                return
            if not data:
                self._end_of_stream()
                return
            self.tunnel.activity = time.monotonic()
            written = self._write(memoryview(data))
            if written < len(data):
                self.pending = memoryview(data)[written:]
                self.reader.stop()
                self.writer.start(self.on_writable)
            elif len(data) == CHUNK and _SPLICE:
                self._start_splicing()
        except OSError:
            self.tunnel.abort()

    def on_writable(self) -> None:
        try:
            if self.pipe is not None:
                if self._drain_pipe():
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
            self.tunnel.abort()

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
        with contextlib.suppress(OSError):  # a smaller pipe still works
            fcntl.fcntl(write_end, _F_SETPIPE_SZ, _PIPE_SIZE)
        self.pipe = (read_end, write_end)

    def _splice_in(self) -> None:
        """Move everything src has now, through the pipe, for as long as dst keeps up."""
        assert self.pipe is not None
        src, pipe_in = self.src_fd, self.pipe[1]
        while True:
            try:
                moved = os.splice(src, pipe_in, SPLICE_CHUNK, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                return
            if not moved:
                self._end_of_stream()
                return
            self.tunnel.activity = time.monotonic()
            self.in_pipe += moved
            if not self._drain_pipe():
                self.reader.stop()
                self.writer.start(self.on_writable)
                return

    def _drain_pipe(self) -> bool:
        """Move what the pipe holds to dst; False if dst cannot take it all now."""
        assert self.pipe is not None
        while self.in_pipe:
            try:
                moved = os.splice(self.pipe[0], self.dst_fd, self.in_pipe, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                return False
            self.in_pipe -= moved
            self.total += moved
        return True

    # ending --------------------------------------------------------------------------------
    def _end_of_stream(self) -> None:
        self.eof = True
        self.reader.stop()
        if self.pending is None and not self.in_pipe:
            self._finish()

    def _finish(self) -> None:
        self.done = True
        self.reader.stop()
        self.writer.stop()
        with contextlib.suppress(OSError):
            self.dst.shutdown(socket.SHUT_WR)
        self.tunnel.direction_done()

    def close(self) -> None:
        for watcher in (self.reader, self.writer):
            watcher.stop()
            watcher.close()
        if self.pipe is not None:
            for fd in self.pipe:
                os.close(fd)
            self.pipe = None


class _Tunnel:
    def __init__(self, client: socket.socket, upstream: socket.socket, to_upstream: bytes, to_client: bytes) -> None:
        self.loop = gevent.get_hub().loop
        self.finished = gevent.event.Event()
        self.activity = time.monotonic()
        self.up = _Direction(self, client, upstream, to_upstream)
        self.down = _Direction(self, upstream, client, to_client)

    def direction_done(self) -> None:
        if self.up.done and self.down.done:
            self.finished.set()

    def abort(self) -> None:
        """A reset or write error: the tunnel is over in both directions."""
        for direction in (self.up, self.down):
            direction.done = True
            direction.reader.stop()
            direction.writer.stop()
        self.finished.set()

    def close(self) -> None:
        self.up.close()
        self.down.close()


def pipe(
    client: socket.socket,
    upstream: socket.socket,
    to_upstream: bytes = b"",
    to_client: bytes = b"",
    idle_timeout: float = 0.0,
) -> tuple[int, int]:
    """Relay until both directions end; returns (bytes client->upstream, upstream->client).

    ``to_upstream``/``to_client`` are bytes already read past a message head, sent first.
    ``idle_timeout`` (0 = none) ends the tunnel once no byte moved either way for so long;
    one quiet direction alone is normal and does not count.
    """
    tunnel = _Tunnel(client, upstream, to_upstream, to_client)
    try:
        tunnel.up.start()
        tunnel.down.start()
        if not idle_timeout:
            tunnel.finished.wait()
        else:
            while not tunnel.finished.wait(max(0.01, tunnel.activity + idle_timeout - time.monotonic())):
                if time.monotonic() - tunnel.activity >= idle_timeout:
                    tunnel.abort()
        return tunnel.up.total, tunnel.down.total
    finally:
        tunnel.close()  # watchers off before the session closes the sockets
