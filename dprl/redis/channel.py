"""One Redis connection shared by every greenlet of a worker, replies matched in order.

Commands are written in the order they are issued and Redis runs them in that order.
That ordering is what lets the lease refresh send this worker's *absolute* counts
without ever undercounting: a refresh is sent after every acquire it already counts, and
before every acquire it does not (see limiter.py). It also keeps the number of Redis
connections at one per worker, however many clients the proxy serves.

The channel owns its socket outright: a gevent socket (so it cooperates also in a
program that never monkey-patched, where the proxy runs in a hub thread of its own),
TLS through gevent's SSLContext, the AUTH / SELECT / CLIENT SETNAME handshake, and
replies read by ``protocol.new_reader()``. No redis-py internals are involved.
"""

from __future__ import annotations

import contextlib
import ssl
from collections import deque
from collections.abc import Callable, Sequence

import gevent
import gevent.event
from gevent import socket as gsocket
from gevent import ssl as gssl
from gevent.event import AsyncResult
from gevent.lock import Semaphore

from ..errors import RedisUnavailable
from ..net.endpoint import send_all
from .address import RedisAddress
from .protocol import ProtocolError, ReplyError, new_reader, pack

OnReply = Callable[[object], None]  # gets the reply, or the exception that stands for it
Build = Callable[[], Sequence[object] | bytes]
_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


class _Connection:
    __slots__ = ("reader", "sock")

    def __init__(self, sock: gsocket.socket) -> None:
        self.sock = sock
        self.reader = new_reader()


def open_socket(address: RedisAddress, timeout: float) -> gsocket.socket:
    """A connected (and, for rediss://, TLS-wrapped) gevent socket to ``address``."""
    if address.path:
        sock = gsocket.socket(gsocket.AF_UNIX, gsocket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(address.path)
        except OSError:
            sock.close()
            raise
        return sock
    sock = gsocket.create_connection((address.host, address.port), timeout=timeout)
    sock.setsockopt(gsocket.IPPROTO_TCP, gsocket.TCP_NODELAY, 1)
    sock.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_KEEPALIVE, 1)
    if not address.tls:
        return sock
    context = gssl.SSLContext(gssl.PROTOCOL_TLS_CLIENT)
    if address.ca_certs:
        context.load_verify_locations(cafile=address.ca_certs)
    else:
        context.load_default_certs()
    context.check_hostname = address.check_hostname
    context.verify_mode = _CERT_REQS[address.cert_reqs]
    if address.certfile:
        context.load_cert_chain(address.certfile, address.keyfile or None)
    try:
        return context.wrap_socket(sock, server_hostname=address.host)
    except OSError:
        sock.close()
        raise


def handshake_commands(address: RedisAddress, client_name: str) -> list[tuple[object, ...]]:
    commands: list[tuple[object, ...]] = []
    if address.password:
        commands.append(
            ("AUTH", address.username, address.password) if address.username else ("AUTH", address.password)
        )
    if address.db:
        commands.append(("SELECT", address.db))
    if client_name:
        commands.append(("CLIENT", "SETNAME", client_name))
    return commands


class RedisChannel:
    def __init__(self, address: RedisAddress, timeout: float, client_name: str = "") -> None:
        self.address = address
        self.timeout = timeout
        self.client_name = client_name
        self._conn: _Connection | None = None
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

    def send(self, build: Build, on_reply: OnReply | None = None) -> AsyncResult:
        """Queue the command ``build()`` returns (arguments, or bytes from ``pack``).

        ``build`` runs under the send lock, right before the bytes go out: a snapshot
        taken there is ordered exactly like the command that carries it. ``on_reply`` is
        called exactly once, by the reader, as the reply (or the error that replaces it)
        arrives and before any later reply is read: bookkeeping done there is never seen
        half-done by a snapshot.
        """
        with self._send:
            return self._send_locked(build, on_reply)

    def send_drained(self, builds: Sequence[Build]) -> list[AsyncResult]:
        """Wait until every reply is in, then send ``builds`` before anything else.

        Nothing is in flight when the builds run, so a snapshot they take is exact: every
        earlier command has been answered and no later one can overtake them. Other
        senders wait meanwhile (one round trip).
        """
        with self._send:
            if not self._drained.wait(self.timeout):
                self._give_up()
                raise RedisUnavailable(f"no reply from Redis within {self.timeout:g}s")
            return [self._send_locked(build) for build in builds]

    def _send_locked(self, build: Build, on_reply: OnReply | None = None) -> AsyncResult:
        if self._conn is None:
            self._open_connection()
        result = AsyncResult()
        command = build()
        self._pending.append((result, on_reply))
        self._drained.clear()
        self._outbox.append(command if isinstance(command, bytes) else pack(command))
        self._outbox_ready.set()
        return result

    def call(self, *args: object) -> object:
        """Send one command and wait for its reply (a ReplyError is raised)."""
        return self.wait(self.send(lambda: args))

    def wait(self, result: AsyncResult) -> object:
        try:
            return result.get(timeout=self.timeout)
        except gevent.Timeout:
            # A late reply would be matched to the wrong caller: the connection is done.
            self._give_up()
            raise RedisUnavailable(f"no reply from Redis within {self.timeout:g}s") from None

    def close(self) -> None:
        conn = self._conn
        if conn is not None:
            self._broken(conn, RedisUnavailable("channel closed"))

    # internals -------------------------------------------------------------------------
    def _give_up(self) -> None:
        conn = self._conn
        if conn is not None:
            self._broken(conn, RedisUnavailable(f"no reply within {self.timeout:g}s"))

    def _open_connection(self) -> None:
        timer = gevent.Timeout(self.timeout)
        timer.start()
        sock = None
        try:
            sock = open_socket(self.address, self.timeout)
            conn = _Connection(sock)
            self._handshake(conn)
        except (gevent.Timeout, OSError, ReplyError, ProtocolError) as exc:
            if isinstance(exc, gevent.Timeout) and exc is not timer:
                raise
            if sock is not None:
                sock.close()
            reason = f"timed out after {self.timeout:g}s" if isinstance(exc, gevent.Timeout) else exc
            raise RedisUnavailable(f"cannot connect to Redis at {self.address}: {reason}") from None
        finally:
            timer.close()
        sock.settimeout(None)  # the channel enforces each call's deadline itself
        self._conn = conn
        self._reader = gevent.spawn(self._read_replies, conn)
        self._writer = gevent.spawn(self._write_commands, conn)

    def _handshake(self, conn: _Connection) -> None:
        commands = handshake_commands(self.address, self.client_name)
        if not commands:
            return
        conn.sock.sendall(b"".join(pack(command) for command in commands))
        for command in commands:
            reply = self._read_one(conn)
            if isinstance(reply, ReplyError):
                raise ReplyError(f"{command[0]} refused: {reply}")

    @staticmethod
    def _read_one(conn: _Connection) -> object:
        while (reply := conn.reader.gets()) is False:
            data = conn.sock.recv(65536)
            if not data:
                raise ConnectionResetError("Redis closed the connection")
            conn.reader.feed(data)
        return reply

    def _write_commands(self, conn: _Connection) -> None:
        sock = conn.sock
        while self._conn is conn:
            self._outbox_ready.wait()
            self._outbox_ready.clear()
            batch, self._outbox = self._outbox, []
            if not batch:
                continue
            try:
                send_all(sock, b"".join(batch))
            except Exception as exc:
                self._broken(conn, exc)
                return

    def _read_replies(self, conn: _Connection) -> None:
        sock, reader = conn.sock, conn.reader
        while self._conn is conn:
            try:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionResetError("Redis closed the connection")
                reader.feed(data)
                while (reply := reader.gets()) is not False:
                    if not self._dispatch(conn, reply):
                        return
            except Exception as exc:
                self._broken(conn, exc)
                return

    def _dispatch(self, conn: _Connection, reply: object) -> bool:
        if not self._pending:
            self._broken(conn, RedisUnavailable("reply nobody asked for"))
            return False
        waiter, on_reply = self._pending.popleft()
        if on_reply is not None:
            on_reply(reply)
        if not self._pending:
            self._drained.set()
        if isinstance(reply, ReplyError):
            waiter.set_exception(reply)
        else:
            waiter.set(reply)
        return True

    def _broken(self, conn: _Connection, exc: BaseException) -> None:
        if self._conn is not conn:
            return
        self._conn = None
        pending, self._pending = self._pending, deque()
        self._outbox = []
        self._drained.set()
        reader, self._reader = self._reader, None
        writer, self._writer = self._writer, None
        with contextlib.suppress(OSError):
            conn.sock.close()
        error = exc if isinstance(exc, RedisUnavailable) else RedisUnavailable(f"Redis connection lost: {exc}")
        for waiter, on_reply in pending:
            if on_reply is not None:
                on_reply(error)
            waiter.set_exception(error)
        for greenlet in (reader, writer):
            if greenlet is not None and greenlet is not gevent.getcurrent():
                greenlet.kill(block=False)
