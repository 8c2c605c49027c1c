"""A buffered socket for one side of a relay (``client`` or ``upstream``), with deadlines.

It owns the read buffer that parsers look into, coalesces small writes (a head and the
first body bytes leave in one segment: with Nagle and delayed ACK, separate small writes
stalled plain HTTP below 100 req/s), and turns socket failures into ConnectionLost
naming the side, so a relay can tell "client went away" from "upstream broke". It knows
nothing of HTTP: what a complete message is, is the caller's ``find`` function.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterator

import gevent
import gevent.event
from gevent.socket import wait_read, wait_readwrite, wait_write

from ..errors import ConnectionLost

RECV_SIZE = 65536
FLUSH_AT = 65536
# Lingering close (as nginx's lingering_time / lingering_timeout): after answering a peer
# whose input was not all read, keep reading and discarding for a while, so that the
# close does not reset the connection before the peer has read the answer.
LINGER_TIME = 30.0
LINGER_IDLE = 5.0


def send_all(sock: socket.socket, data: bytes | bytearray | memoryview) -> None:
    """``sock.sendall``, without its cost on the common path.

    gevent's sendall asks the kernel for SO_SNDBUF on every call (a system call per
    write, over a tenth of the proxy's time under small-response load); one send() that
    takes everything is the usual case, and sendall only finishes what it left.
    """
    sent = sock.send(data)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


def peer_text(address: tuple) -> str:
    """``host:port`` of a socket address, IPv6 hosts in brackets (as logs show peers)."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Endpoint:
    __slots__ = ("before_wait", "buf", "bytes_in", "bytes_out", "out", "side", "sock", "timeout", "watch")

    def __init__(self, sock: socket.socket, side: str, timeout: float | None = None) -> None:
        self.sock = sock
        self.side = side
        self.buf = bytearray()
        self.out = bytearray()
        self.bytes_in = 0
        self.bytes_out = 0
        self.timeout = timeout  # the longest stall of one read or write, unless a deadline is given
        if timeout is not None:  # gevent sockets start without one
            sock.settimeout(timeout)
        # Called before blocking on this socket: flushes what the other side is owed, so
        # coalescing never holds bytes back while we wait for more.
        self.before_wait: Callable[[], None] | None = None
        # Called when the peer sent bytes (now in ``buf``) while a write to it was blocked:
        # an upstream that answers before it has read the whole request. Returns False
        # to stop watching; raises to abandon the write.
        self.watch: Callable[[], bool] | None = None

    def set_timeout(self, timeout: float | None) -> None:
        self.timeout = timeout
        self.sock.settimeout(timeout)

    # reading ---------------------------------------------------------------------------
    def _recv(self, deadline: float | None = None) -> bytes:
        if self.before_wait is not None:
            self.before_wait()
        sock = self.sock
        if deadline is not None:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            data = sock.recv(RECV_SIZE)
        except OSError as exc:
            raise self._lost(exc) from None
        finally:
            if deadline is not None:
                sock.settimeout(self.timeout)
        self.bytes_in += len(data)
        return data

    def fill(self, deadline: float | None = None) -> bool:
        """Read more into the buffer; False at end of stream. ConnectionLost past ``deadline``."""
        data = self._recv(deadline)
        if not data:
            return False
        self.buf += data
        return True

    def fill_ready(self) -> bool | None:
        """Read what has arrived, without waiting: True, False at end of stream, None if
        nothing has (then ``fill`` waits). A request usually has arrived when its
        connection is accepted (deferred accept): no timeout to set, no watcher to start."""
        if self.before_wait is not None:
            return None  # owed bytes go out before a read that might wait: fill() sees to it
        try:
            data = os.read(self.sock.fileno(), RECV_SIZE)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise self._lost(exc) from None
        self.bytes_in += len(data)
        if not data:
            return False
        self.buf += data
        return True

    def read_until(self, find: Callable[[bytearray], int], deadline: float | None = None) -> bytes:
        """Read until ``find(buf)`` returns a length (>= 0); take that many bytes off the buffer.

        ``find`` may raise to refuse what it sees (a line too long). End of stream first
        is ConnectionLost: "closed" with nothing buffered, else "closed in the middle".
        """
        buf = self.buf
        while (end := find(buf)) < 0:
            if not self.fill(deadline):
                raise ConnectionLost(self.side, "closed in the middle of a message" if buf else "closed")
        data = bytes(buf[:end])
        del buf[:end]
        return data

    def take_buffered(self) -> bytes:
        """Everything buffered, removed from the buffer."""
        if not self.buf:
            return b""
        data = bytes(self.buf)
        self.buf.clear()
        return data

    def consume(self, size: int) -> bytes:
        """The first ``size`` buffered bytes, removed from the buffer."""
        data = bytes(self.buf[:size])
        del self.buf[:size]
        return data

    def take(self, limit: int) -> bytes:
        """Up to ``limit`` bytes, buffered ones first; b"" at end of stream."""
        if self.buf:
            return self.consume(limit)
        data = self._recv()
        if len(data) > limit:
            self.buf += data[limit:]
            data = data[:limit]
        return data

    def wait_readable(self, timeout: float) -> bool:
        """True once bytes are buffered or the peer sent some (or closed); False after ``timeout``."""
        if self.buf:
            return True
        try:
            wait_read(self.sock.fileno(), timeout)
        except TimeoutError:
            return False
        return True

    # writing ---------------------------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue bytes; they leave at ``flush`` or once enough have gathered."""
        out = self.out
        if len(out) + len(data) >= FLUSH_AT:
            if out:
                self.flush()
            self._sendall(data)
        else:
            out += data

    def flush(self) -> None:
        if self.out:
            data = bytes(self.out)
            self.out.clear()
            self._sendall(data)

    def send(self, data: bytes | bytearray | memoryview) -> None:
        """Queued bytes and ``data`` now."""
        if self.out:
            self.out += data
            self.flush()
        else:
            self._sendall(data)

    def _sendall(self, data: bytes | bytearray | memoryview) -> None:
        try:
            if self.watch is None:
                send_all(self.sock, data)
            else:
                self._send_watching(data)
        except OSError as exc:
            raise self._lost(exc) from None
        self.bytes_out += len(data)

    def _send_watching(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of ``data``; while the peer does not take it, notice what it sends back."""
        sock = self.sock
        view = memoryview(data)
        sock.settimeout(0.0)
        try:
            while view:
                try:
                    view = view[sock.send(view) :]
                    continue
                except BlockingIOError:
                    pass
                if self.watch is None:
                    wait_write(sock.fileno(), self.timeout)
                    continue
                wait_readwrite(sock.fileno(), self.timeout)
                try:
                    received = sock.recv(RECV_SIZE)
                except BlockingIOError:
                    continue  # writable, not readable
                if not received:
                    self.watch = None  # peer closed: the next send fails, the caller looks at buf
                    continue
                self.buf += received
                self.bytes_in += len(received)
                if not self.watch():
                    self.watch = None
        finally:
            sock.settimeout(self.timeout)

    # closing ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def watch_gone(self) -> Iterator[gevent.event.Event]:
        """While this side is expected to stay silent (a client waiting for a slot): an
        event set if the peer leaves.

        Readable means closed (or reset), or bytes sent ahead (a pipelined request, a body):
        a peek tells which; after bytes nothing more can be told, and the watch stops."""
        left = gevent.event.Event()
        fd = self.sock.fileno()
        watcher = gevent.get_hub().loop.io(fd, 1)

        def readable() -> None:
            peek = socket.socket(fileno=fd)  # the same descriptor, for one non-blocking peek
            try:
                if not peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
                    left.set()
            except BlockingIOError:
                return
            except OSError:
                left.set()
            finally:
                peek.detach()
            watcher.stop()

        watcher.start(readable)
        try:
            yield left
        finally:
            watcher.stop()
            watcher.close()

    def linger(self, total: float = LINGER_TIME, idle: float = LINGER_IDLE) -> None:
        """Half-close, then read and discard until the peer closes (bounded).

        A close with unread input makes the kernel send a reset, which can destroy the
        answer we just sent before the peer reads it (RFC 9112 9.6).
        """
        sock = self.sock
        try:
            self.flush()
            sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + total
            while (remaining := deadline - time.monotonic()) > 0:
                sock.settimeout(min(idle, remaining))
                if not sock.recv(RECV_SIZE):
                    return
        except (OSError, ConnectionLost):
            return

    def _lost(self, exc: OSError) -> ConnectionLost:
        if isinstance(exc, TimeoutError):
            return ConnectionLost(self.side, "timed out", timed_out=True)
        return ConnectionLost(self.side, exc.strerror or str(exc))
