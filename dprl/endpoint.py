"""A buffered socket for one side of a relay (``client`` or ``upstream``).

It owns the read buffer the head parser needs, coalesces small writes (a head and the
first body bytes leave in one segment: with Nagle and delayed ACK, separate small writes
stalled plain HTTP below 100 req/s), and turns socket failures into ConnectionLost
naming the side, so the relay can tell "client went away" from "upstream broke".
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from gevent.socket import wait_read, wait_readwrite, wait_write

from .errors import ClientProtocolError, ConnectionLost, ProxyError, UpstreamError

RECV_SIZE = 65536
FLUSH_AT = 65536
# Lingering close (as nginx's lingering_time / lingering_timeout): after answering a client
# whose request body was not read, keep reading and discarding for a while, so that the
# close does not reset the connection before the client has read the answer.
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


class Endpoint:
    __slots__ = ("before_wait", "buf", "bytes_in", "bytes_out", "error", "out", "side", "sock", "watch")

    def __init__(self, sock: socket.socket, side: str) -> None:
        self.sock = sock
        self.side = side
        self.buf = bytearray()
        self.out = bytearray()
        self.bytes_in = 0
        self.bytes_out = 0
        # Called before blocking on this socket: flushes what the other side is owed, so
        # coalescing never holds bytes back while we wait for more.
        self.before_wait: Callable[[], None] | None = None
        # Called when the peer sent bytes (now in ``buf``) while a write to it was blocked:
        # an upstream that answers before it has read the whole request. Returns False
        # to stop watching; raises to abandon the write.
        self.watch: Callable[[], bool] | None = None
        self.error: type[ProxyError] = ClientProtocolError if side == "client" else UpstreamError

    # reading ---------------------------------------------------------------------------
    def _recv(self) -> bytes:
        if self.before_wait is not None:
            self.before_wait()
        try:
            data = self.sock.recv(RECV_SIZE)
        except OSError as exc:
            raise self._lost(exc) from None
        self.bytes_in += len(data)
        return data

    def fill(self) -> bool:
        """Read more into the buffer; False at end of stream."""
        data = self._recv()
        if not data:
            return False
        self.buf += data
        return True

    def read_head(
        self,
        max_line: int,
        max_head: int,
        first_byte_timeout: float | None = None,
        head_timeout: float | None = None,
    ) -> bytes | None:
        """Read up to and including the blank line that ends a message head.

        Returns None when the peer closes (or stays silent past ``first_byte_timeout``)
        before sending a byte: an idle keep-alive connection ending, not an error.
        """
        buf = self.buf
        deadline = None
        start = 0
        while True:
            while buf[:2] == b"\r\n":  # RFC 9112 2.2: ignore empty lines before a request
                del buf[:2]
            end = buf.find(b"\r\n\r\n", start)
            bare = buf.find(b"\n\n", start)
            if bare >= 0 and (end < 0 or bare < end):
                # LF-only lines: refused now, instead of waiting for a CRLF that never comes
                raise self.error("bare LF as a line terminator", 400)
            if end >= 0:
                head = bytes(buf[: end + 4])
                del buf[: end + 4]
                self._check_line(head, max_line)
                if len(head) > max_head:
                    raise self.error(f"header block over {max_head} bytes", 431)
                return head
            self._check_line(buf, max_line)
            if len(buf) > max_head:
                raise self.error(f"header block over {max_head} bytes", 431)
            start = max(0, len(buf) - 3)
            if not buf:
                timeout = first_byte_timeout
            else:
                if deadline is None:
                    deadline = time.monotonic() + head_timeout if head_timeout else None
                timeout = None if deadline is None else max(0.001, deadline - time.monotonic())
            self.sock.settimeout(timeout)
            try:
                more = self.fill()
            except ConnectionLost as exc:
                if not buf:
                    return None  # silent or gone before its first byte: an idle close
                if exc.timed_out:
                    raise self.error("timed out reading the message head", 408) from None
                raise
            if not more:
                if buf:
                    raise ConnectionLost(self.side, "closed in the middle of a message head")
                return None

    def _check_line(self, data: bytes | bytearray, max_line: int) -> None:
        eol = data.find(b"\r\n", 0, max_line + 2)
        if eol < 0 and len(data) > max_line:
            status = 414 if self.side == "client" else 502
            raise self.error(f"first line longer than {max_line} bytes", status)

    def read_line(self, limit: int) -> bytes:
        """One CRLF-terminated line without its CRLF (chunk sizes, trailer fields)."""
        buf = self.buf
        while True:
            end = buf.find(b"\r\n", 0, limit + 2)
            if end >= 0:
                line = bytes(buf[:end])
                del buf[: end + 2]
                return line
            if len(buf) > limit:
                raise self.error(f"line longer than {limit} bytes in message body", 400)
            if not self.fill():
                raise ConnectionLost(self.side, "closed in the middle of a message body")

    def wait_readable(self, timeout: float) -> bool:
        """True once bytes are buffered or the peer sent some (or closed); False after ``timeout``."""
        if self.buf:
            return True
        try:
            wait_read(self.sock.fileno(), timeout)
        except TimeoutError:
            return False
        return True

    def take(self, limit: int) -> bytes:
        """Up to ``limit`` bytes, buffered ones first; b"" at end of stream."""
        buf = self.buf
        if buf:
            data = bytes(buf[:limit])
            del buf[:limit]
            return data
        data = self._recv()
        if len(data) > limit:
            self.buf += data[limit:]
            data = data[:limit]
        return data

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
        timeout = sock.gettimeout()
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
                    wait_write(sock.fileno(), timeout)
                    continue
                wait_readwrite(sock.fileno(), timeout)
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
            sock.settimeout(timeout)

    def linger(self, total: float = LINGER_TIME, idle: float = LINGER_IDLE) -> None:
        """Half-close, then read and discard until the peer closes (bounded), before a close.

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
