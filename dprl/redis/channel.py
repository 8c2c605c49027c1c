"""One Redis connection shared by every greenlet of a worker, replies matched in order.

Commands are written in the order they are issued and Redis runs them in that order.
That ordering is what lets the lease refresh send this worker's *absolute* counts
without ever undercounting: a refresh is sent after every acquire it already counts, and
before every acquire it does not (see limiter.py). It also keeps the number of Redis
connections at one per worker (per Cluster primary), however many clients the proxy serves.

The channel owns its socket outright: a gevent socket (so it cooperates also in a
program that never monkey-patched, where the proxy runs in a hub thread of its own),
TLS through gevent's SSLContext, its own handshake, and replies read by
``protocol.new_reader()``. No redis-py internals are involved.

Failure rules (what a worker's callers see while Redis is unreachable):
- Every wait is bounded by the caller's deadline: for the connection, for the send lock,
  for the reply. One connect attempt is shared by every caller that needs it, so the
  k-th caller is not answered after k timeouts.
- A connection given up on (no reply in time) is replaced, and the next connection's
  handshake kills the previous one at Redis (``CLIENT KILL ID``) before anything else
  is sent: bytes of the dead connection still in flight can never run after what the
  new connection sends (a late release would undercount).
"""

from __future__ import annotations

import contextlib
import ssl
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import gevent
import gevent.event
from gevent import socket as gsocket
from gevent import ssl as gssl
from gevent.event import AsyncResult
from gevent.lock import Semaphore

from ..errors import RedisTimeout, RedisUnavailable
from ..net.endpoint import send_all
from .address import RedisAddress
from .protocol import ProtocolError, Reader, Reply, ReplyError, new_reader, pack

OnReply = Callable[[object], None]  # gets the reply, or the exception that stands for it
Build = Callable[[], Sequence[object] | bytes]
_ASKING = lambda: ("ASKING",)  # noqa: E731
_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


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


def query(address: RedisAddress, timeout: float, *commands: Sequence[object]) -> list[object]:
    """Send ``commands`` on a short-lived connection and return their replies (errors as values).

    For the questions asked outside the ordered channel: a sentinel's view of the master,
    a cluster's slot map. The whole exchange is bounded by ``timeout``.
    """
    with gevent.Timeout(timeout, RedisTimeout(f"no answer from {address} within {timeout:g}s")):
        try:
            sock = open_socket(address, timeout)
        except OSError as exc:
            raise RedisUnavailable(f"cannot connect to {address}: {exc}") from None
        try:
            reader = new_reader()
            auth = [auth_command(address)] if address.password else []
            sock.sendall(b"".join(pack(command) for command in [*auth, *commands]))
            for _ in auth:
                if isinstance(reply := read_reply(sock, reader), ReplyError):
                    raise RedisUnavailable(f"AUTH refused by {address}: {reply}")
            return [read_reply(sock, reader) for _ in commands]
        except OSError as exc:
            raise RedisUnavailable(f"connection to {address} lost: {exc}") from None
        finally:
            sock.close()


def auth_command(address: RedisAddress) -> tuple[object, ...]:
    return ("AUTH", address.username, address.password) if address.username else ("AUTH", address.password)


def read_reply(sock: gsocket.socket, reader: Reader) -> Reply:
    while (reply := reader.gets()) is False:
        data = sock.recv(65536)
        if not data:
            raise ConnectionResetError("Redis closed the connection")
        reader.feed(data)
    return reply


def _info_field(info: bytes, name: bytes) -> str:
    for line in info.split(b"\r\n"):
        if line.startswith(name + b":"):
            return line[len(name) + 1 :].decode()
    return ""


class _ReplyOverdue(BaseException):
    """Thrown into a caller whose reply is past its deadline (``Channel.wait``)."""


@dataclass(frozen=True, slots=True)
class Connected:
    """What a new connection learned in its handshake, for the channel's owner."""

    address: RedisAddress
    server_id: str  # Redis's run_id: it changes when Redis restarts, and differs on another server
    first: bool  # the channel's first connection


class _Connection:
    __slots__ = ("client_id", "reader", "sock")

    def __init__(self, sock: gsocket.socket) -> None:
        self.sock = sock
        self.reader = new_reader()
        self.client_id = 0


class RedisChannel:
    def __init__(
        self,
        locate: Callable[[float], RedisAddress],
        timeout: float,
        client_name: str = "",
        require_master: bool = False,
        cluster: bool = False,
    ) -> None:
        """``locate(timeout)`` names the server at every connection (a sentinel's answer may
        change); ``require_master`` refuses a server that is a replica (after a failover);
        ``cluster``: whether the server must be a Cluster node (its keys are spread by slot)."""
        self.locate = locate
        self.timeout = timeout
        self.client_name = client_name
        self.require_master = require_master
        self.cluster = cluster
        # Called in the connecting greenlet once a connection is up, before anything else
        # is sent on it; returns commands that must go first (a re-assertion of counts).
        self.on_connect: Callable[[Connected], Sequence[tuple[Build, OnReply | None]]] | None = None
        self.server_id = ""
        self.kill_refused = False  # CLIENT KILL not allowed (ACL): late bytes of a dead connection may land
        self._conn: _Connection | None = None
        self._attempt: AsyncResult | None = None
        self._previous_client_id = 0
        self._connects = 0
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

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def deadline(self) -> float:
        return time.monotonic() + self.timeout

    def send(
        self, build: Build, on_reply: OnReply | None = None, deadline: float | None = None, asking: bool = False
    ) -> AsyncResult:
        """Queue the command ``build()`` returns (arguments, or bytes from ``pack``).

        ``build`` runs under the send lock, right before the bytes go out: a snapshot
        taken there is ordered exactly like the command that carries it. ``on_reply`` is
        called exactly once, by the reader, as the reply (or the error that replaces it)
        arrives and before any later reply is read: bookkeeping done there is never seen
        half-done by a snapshot. RedisUnavailable past ``deadline``. ``asking`` sends ASKING
        right before (a Cluster slot being migrated: see topology.py).
        """
        deadline = deadline or self.deadline()
        self._ensure_connected(deadline)
        self._lock(deadline)
        try:
            if asking:
                self._send_locked(_ASKING)
            return self._send_locked(build, on_reply)
        finally:
            self._send.release()

    def send_drained(self, builds: Sequence[Build], deadline: float | None = None) -> list[AsyncResult]:
        """Wait until every reply is in, then send ``builds`` before anything else.

        Nothing is in flight when the builds run, so a snapshot they take is exact: every
        earlier command has been answered and no later one can overtake them. Other
        senders wait meanwhile (one round trip), each within its own deadline.
        """
        deadline = deadline or self.deadline()
        self._ensure_connected(deadline)
        self._lock(deadline)
        try:
            if not self._drained.wait(max(0.0, deadline - time.monotonic())):
                self._give_up()
                raise RedisTimeout(f"no reply from Redis within {self.timeout:g}s")
            return [self._send_locked(build) for build in builds]
        finally:
            self._send.release()

    def call(self, *args: object, deadline: float | None = None) -> Reply:
        """Send one command and wait for its reply (a ReplyError is raised)."""
        deadline = deadline or self.deadline()
        return self.wait(self.send(lambda: args, deadline=deadline), deadline)

    def wait(self, result: AsyncResult, deadline: float | None = None) -> Reply:
        """The reply, or RedisTimeout past ``deadline``.

        The deadline is one hub timer that throws into this greenlet, as a gevent Timeout
        would, without the Timeout object around it (two replies are waited for per
        admitted connection: the acquire and the release)."""
        deadline = deadline or self.deadline()
        timer = gevent.get_hub().loop.timer(max(0.0, deadline - time.monotonic()))
        timer.start(gevent.getcurrent().throw, _ReplyOverdue)
        try:
            return result.get()
        except _ReplyOverdue:
            # A late reply would be matched to the wrong caller: the connection is done.
            self._give_up()
            raise RedisTimeout(f"no reply from Redis within {self.timeout:g}s") from None
        finally:
            timer.close()

    def close(self) -> None:
        conn = self._conn
        if conn is not None:
            self._broken(conn, RedisUnavailable("channel closed"))

    # connecting ------------------------------------------------------------------------
    def _lock(self, deadline: float) -> None:
        if not self._send.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise RedisTimeout(f"Redis busy past the {self.timeout:g}s timeout (a reply is overdue)")
        if self._conn is None:  # lost while we waited for the lock
            self._send.release()
            raise RedisUnavailable("Redis connection lost")

    def _ensure_connected(self, deadline: float) -> None:
        """Connect if needed: one attempt at a time, shared by every caller that waits for it."""
        if self._conn is not None:
            return
        attempt = self._attempt
        if attempt is None:
            attempt = self._attempt = AsyncResult()
            gevent.spawn(self._run_attempt, attempt)
        try:
            attempt.get(timeout=max(0.0, deadline - time.monotonic()))
        except gevent.Timeout:
            raise RedisTimeout(f"cannot connect to Redis within {self.timeout:g}s") from None

    def _run_attempt(self, attempt: AsyncResult) -> None:
        try:
            self._open_connection()
        except RedisUnavailable as exc:
            attempt.set_exception(exc)
        else:
            attempt.set(True)
        finally:
            self._attempt = None

    def _open_connection(self) -> None:
        timer = gevent.Timeout(self.timeout)
        timer.start()
        sock = None
        address: RedisAddress | None = None
        try:
            address = self.locate(self.timeout)
            sock = open_socket(address, self.timeout)
            conn = _Connection(sock)
            server_id = self._handshake(conn, address)
        except (gevent.Timeout, OSError, ReplyError, ProtocolError, RedisUnavailable) as exc:
            if isinstance(exc, gevent.Timeout) and exc is not timer:
                raise
            if sock is not None:
                sock.close()
            where = f" at {address}" if address is not None else ""
            reason = f"timed out after {self.timeout:g}s" if isinstance(exc, gevent.Timeout) else exc
            error = RedisTimeout if isinstance(exc, gevent.Timeout) else RedisUnavailable
            raise error(f"cannot connect to Redis{where}: {reason}") from None
        finally:
            timer.close()
        sock.settimeout(None)  # the channel enforces each call's deadline itself
        self._connects += 1
        connected = Connected(address, server_id, first=self._connects == 1)
        self.server_id = server_id
        self._previous_client_id = conn.client_id
        self._conn = conn
        self._drained.set()
        self._reader = gevent.spawn(self._read_replies, conn)
        self._writer = gevent.spawn(self._write_commands, conn)
        # Nothing has yielded since the connection went up: what the owner wants sent
        # first (the re-assertion of this worker's counts) is queued before any caller's.
        if self.on_connect is not None:
            for build, on_reply in self.on_connect(connected):
                self._send_locked(build, on_reply)

    def _handshake(self, conn: _Connection, address: RedisAddress) -> str:
        """AUTH, SELECT, name; learn the connection's id and Redis's run_id; kill the previous connection."""
        commands: list[tuple[object, ...]] = []
        if address.password:
            commands.append(auth_command(address))
        if address.db:
            commands.append(("SELECT", address.db))
        if self.client_name:
            commands.append(("CLIENT", "SETNAME", self.client_name))
        commands += [("CLIENT", "ID"), ("INFO", "server")]
        if self.require_master:
            commands.append(("ROLE",))
        if self._previous_client_id:
            commands.append(("CLIENT", "KILL", "ID", self._previous_client_id))
        conn.sock.sendall(b"".join(pack(command) for command in commands))
        server_id = ""
        for command in commands:
            reply = read_reply(conn.sock, conn.reader)
            name = " ".join(str(part) for part in command[:2])
            if command[:2] == ("CLIENT", "KILL"):
                self.kill_refused = isinstance(reply, ReplyError) and reply.code != "ERR"  # NOPERM: ACL
                continue
            if isinstance(reply, ReplyError):
                raise ReplyError(f"{name.split()[0]} refused: {reply}")
            if command == ("CLIENT", "ID"):
                conn.client_id = int(reply)
            elif command[0] == "INFO":
                server_id = _info_field(reply, b"run_id")
                if (_info_field(reply, b"redis_mode") == "cluster") != self.cluster:
                    raise RedisUnavailable(
                        f"{address} is a Redis Cluster node: give dprl a redis+cluster:// URL"
                        if not self.cluster
                        else f"{address} is not a Redis Cluster node: give dprl a redis:// URL"
                    )
            elif command[0] == "ROLE" and reply[0] != b"master":
                raise RedisUnavailable(f"{address} is a {reply[0].decode()}, not the master")
        return server_id

    # reading and writing ---------------------------------------------------------------
    def _send_locked(self, build: Build, on_reply: OnReply | None = None) -> AsyncResult:
        result = AsyncResult()
        command = build()
        self._pending.append((result, on_reply))
        self._drained.clear()
        self._outbox.append(command if isinstance(command, bytes) else pack(command))
        self._outbox_ready.set()
        return result

    def _give_up(self) -> None:
        conn = self._conn
        if conn is not None:
            self._broken(conn, RedisTimeout(f"no reply within {self.timeout:g}s"))

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
            if reply.code == "READONLY":  # a master demoted to replica: find the master again
                self._broken(conn, RedisUnavailable(f"{reply}"))
                return False
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
