"""One Redis connection shared by every greenlet of a worker, replies matched in order.

Commands are written in the order they are issued and Redis runs them in that order.
That ordering is what lets the lease refresh send this worker's *absolute* counts
without ever undercounting: a refresh is sent after every acquire it already counts, and
before every acquire it does not (see redis_limiter.py). It also keeps the number of
Redis connections at one per worker, however many clients the proxy serves: redis-py's
pool (100 connections, MaxConnectionsError beyond) is not in the path.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Sequence

import gevent
import gevent.event
from gevent.event import AsyncResult
from gevent.lock import Semaphore
from redis.connection import AbstractConnection
from redis.exceptions import ResponseError

from .endpoint import send_all


class RedisUnavailable(Exception):
    """Redis could not be reached or did not answer in time."""


OnReply = Callable[[object], None]  # gets the reply, or the exception that stands for it


def pack(command: Sequence[object]) -> bytes:
    """RESP-encode a command (what redis-py's pack_command does, without its per-call cost)."""
    out = [b"*%d\r\n" % len(command)]
    for arg in command:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class RedisChannel:
    def __init__(self, factory: Callable[[], AbstractConnection], timeout: float) -> None:
        self._factory = factory
        self.timeout = timeout
        self._conn: AbstractConnection | None = None
        self._pending: deque[tuple[AsyncResult, OnReply | None]] = deque()
        self._send = Semaphore()
        self._drained = gevent.event.Event()  # set while no reply is outstanding
        self._drained.set()
        self._reader: gevent.Greenlet | None = None
        # Commands wait in the outbox until the writer greenlet runs: what many greenlets
        # send in one turn of the loop leaves in one system call, in the order sent.
        self._outbox: list[bytes] = []
        self._outbox_ready = gevent.event.Event()
        self._writer: gevent.Greenlet | None = None

    def send(self, build: Callable[[], Sequence[object] | bytes], on_reply: OnReply | None = None) -> AsyncResult:
        """Queue the command ``build()`` returns (arguments, or bytes from ``pack``).

        ``build`` runs under the send lock, right before the bytes go out: a snapshot
        taken there is ordered exactly like the command that carries it. ``on_reply`` is
        called exactly once, by the reader, as the reply (or the error that replaces it)
        arrives and before any later reply is read: bookkeeping done there is never seen
        half-done by a snapshot.
        """
        with self._send:
            return self._send_locked(build, on_reply)

    def send_drained(self, builds: Sequence[Callable[[], Sequence[object] | bytes]]) -> list[AsyncResult]:
        """Wait until every reply is in, then send ``builds`` before anything else.

        Nothing is in flight when the builds run, so a snapshot they take is exact: every
        earlier command has been answered and no later one can overtake them. Other
        senders wait meanwhile (one round trip).
        """
        with self._send:
            if not self._drained.wait(self.timeout):
                conn = self._conn
                if conn is not None:
                    self._broken(conn, RedisUnavailable(f"no reply within {self.timeout:g}s"))
                raise RedisUnavailable(f"no reply from Redis within {self.timeout:g}s")
            return [self._send_locked(build) for build in builds]

    def _send_locked(
        self, build: Callable[[], Sequence[object] | bytes], on_reply: OnReply | None = None
    ) -> AsyncResult:
        if self._conn is None:
            self._connect()
        result = AsyncResult()
        command = build()
        packed = command if isinstance(command, bytes) else pack(command)
        self._pending.append((result, on_reply))
        self._drained.clear()
        self._outbox.append(packed)
        self._outbox_ready.set()
        return result

    def call(self, *args: object) -> object:
        return self.call_built(lambda: args)

    def call_built(self, build: Callable[[], Sequence[object] | bytes]) -> object:
        """Send ``build()`` and wait for its reply, at most ``timeout`` seconds."""
        return self.wait(self.send(build))

    def wait(self, result: AsyncResult) -> object:
        try:
            return result.get(timeout=self.timeout)
        except gevent.Timeout:
            conn = self._conn
            if conn is not None:
                # A late reply would be matched to the wrong caller: the connection is done.
                self._broken(conn, RedisUnavailable(f"no reply within {self.timeout:g}s"))
            raise RedisUnavailable(f"no reply from Redis within {self.timeout:g}s") from None

    def close(self) -> None:
        conn = self._conn
        if conn is not None:
            self._broken(conn, RedisUnavailable("channel closed"))

    # internals -------------------------------------------------------------------------
    def _connect(self) -> AbstractConnection:
        conn = self._factory()
        try:
            timer = gevent.Timeout(self.timeout)
            timer.start()
            try:
                conn.connect()
            finally:
                timer.close()
        except (gevent.Timeout, Exception) as exc:
            conn.disconnect()
            raise RedisUnavailable(f"cannot connect to Redis: {exc or 'timed out'}") from None
        self._conn = conn
        self._reader = gevent.spawn(self._read_replies, conn)
        self._writer = gevent.spawn(self._write_commands, conn)
        return conn

    def _write_commands(self, conn: AbstractConnection) -> None:
        sock = conn._sock
        while self._conn is conn:
            self._outbox_ready.wait()
            self._outbox_ready.clear()
            batch, self._outbox = self._outbox, []
            if not batch:
                continue
            try:
                send_all(sock, b"".join(batch))  # redis-py's sendall asks for SO_SNDBUF each call
            except Exception as exc:
                self._broken(conn, exc)
                return

    def _read_replies(self, conn: AbstractConnection) -> None:
        while self._conn is conn:
            try:
                reply: object = conn.read_response(disconnect_on_error=False)
            except ResponseError as exc:
                reply = exc
            except Exception as exc:
                self._broken(conn, exc)
                return
            if not self._pending:
                self._broken(conn, RedisUnavailable("reply nobody asked for"))
                return
            waiter, on_reply = self._pending.popleft()
            if on_reply is not None:
                on_reply(reply)
            if not self._pending:
                self._drained.set()
            if isinstance(reply, ResponseError):
                waiter.set_exception(reply)
            else:
                waiter.set(reply)

    def _broken(self, conn: AbstractConnection, exc: BaseException) -> None:
        if self._conn is not conn:
            return
        self._conn = None
        pending, self._pending = self._pending, deque()
        self._outbox = []
        self._drained.set()
        reader, self._reader = self._reader, None
        writer, self._writer = self._writer, None
        with contextlib.suppress(Exception):
            conn.disconnect()
        error = exc if isinstance(exc, RedisUnavailable) else RedisUnavailable(f"Redis connection lost: {exc}")
        for waiter, on_reply in pending:
            if on_reply is not None:
                on_reply(error)
            waiter.set_exception(error)
        for greenlet in (reader, writer):
            if greenlet is not None and greenlet is not gevent.getcurrent():
                greenlet.kill(block=False)
