"""The listening server: accept, one greenlet per client, graceful stop.

Client connections are counted by the server itself rather than by a gevent Pool (a
Pool links every greenlet and runs a callback when it ends): at --max-clients it stops
accepting, and the session that ends below the bound starts it again; the rest wait in
the kernel's accept queue.

The server knows the Limiter interface only; it cannot tell the in-memory limiter from
the Redis one. What every session shares (settings, access policy, refusal log, limiter,
dialer) is built once here and handed to each session as a ``SessionContext``.
"""

from __future__ import annotations

import contextlib
import logging
import socket

import gevent
import gevent.event
from gevent import socket as gsocket
from gevent.server import StreamServer

from ..config import Config
from ..errors import ListenError, Reason
from ..limits.limiter import Limiter
from ..net.dial import OUT_OF_DESCRIPTORS, Resolver, keepalive_options
from ..parents.health import Health
from ..parents.pool import Parents
from .access import AccessPolicy
from .refusals import RefusalLog
from .session import ClientSession, ServerState, SessionContext
from .tenancy import TenantOf
from .upstream import Dialer, KeepaliveTuner

_FORBIDDEN_BODY = b"dprl: this client address is not allowed to use the proxy\n"
FORBIDDEN_CLIENT = (
    b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_FORBIDDEN_BODY), _FORBIDDEN_BODY)
)


class ProxyServer(StreamServer):
    def __init__(
        self,
        settings: Config,
        limiter: Limiter,
        log: logging.Logger,
        resolve: Resolver | None = None,
        reuse_port: bool = False,
        parents: Parents | None = None,
    ) -> None:
        super().__init__((settings.bind, settings.port), backlog=1024)
        self.max_clients = settings.max_clients
        self._clients = 0  # client connections handed to a greenlet and not finished yet
        self._full = False  # accepting stopped at --max-clients
        self._drained: gevent.event.Event | None = None  # set at stop: the last client finished
        # --workers: every worker listens on the same port; the kernel spreads connections
        self.reuse_port = reuse_port
        self.settings = settings
        self.limiter = limiter
        self.log = log
        self.refusals = RefusalLog(log, settings.refusal_log_interval)
        self.access = AccessPolicy(
            settings.client_networks, settings.credentials, settings.connect_port_set, settings.deny_networks
        )
        self.keepalive = keepalive_options(settings.tcp_keepalive)
        self.keepalive_tuner = KeepaliveTuner(self.keepalive)
        self.parents = parents if parents is not None else Parents(settings.parent_pools, settings.routes)
        self.health = Health(self.parents, settings.parent_failures, settings.connect_timeout, log)
        dialer = Dialer(
            *(settings.connect_timeout, resolve, self.access.destination_allowed, self.keepalive_tuner),
            parents=self.parents,
            health=self.health,
            passthrough=settings.parent_auth == "passthrough",
            parent_ca_file=settings.parent_ca_file,
        )
        self.context = SessionContext(
            settings=settings,
            access=self.access,
            refusals=self.refusals,
            limiter=limiter,
            dialer=dialer,
            log=log,
            state=ServerState(),
            stats=limiter.stats,
            tenant_of=TenantOf(
                settings.tenant_by,
                settings.tenant_header,
                [(name, net) for name, nets in settings.tenant_groups.items() for net in nets],
            ),
        )
        self._accept_paused = False
        self._accept_delay = 0.0
        self.sessions: set[ClientSession] = set()

    @property
    def stopping(self) -> bool:
        return self.context.state.stopping

    def init_socket(self) -> None:
        if self.reuse_port and not hasattr(self, "socket"):
            listener = gsocket.socket(self.family, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                listener.bind(self.address)  # type: ignore[has-type]  # gevent's BaseServer sets it
            except OSError:
                listener.close()
                raise
            listener.listen(self.backlog)
            listener.setblocking(False)
            self.socket = listener
            self.address = listener.getsockname()
        super().init_socket()
        listener = self.socket
        # Accepted sockets inherit TCP_NODELAY from the listener: one system call, not one
        # per connection. Deferred accept wakes us only once a request has arrived, so
        # the first read of every connection finds its bytes instead of waiting for them.
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for level, option, value in self.keepalive:  # inherited too: keepalive on every client
            listener.setsockopt(level, option, value)
        if hasattr(socket, "TCP_DEFER_ACCEPT"):
            with contextlib.suppress(OSError):
                listener.setsockopt(
                    socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, max(1, int(self.settings.header_timeout))
                )

    def fence(self, keys: set[str]) -> int:
        """End the upstream connections of ``keys`` counted under a lapsing lease (see the Redis
        limiter's --on-lease-loss close): shut down, so the pipe or relay ends and the session
        closes them as on any other end. Returns how many."""
        closed = 0
        for session in list(self.sessions):
            upstream = session.upstream
            if upstream is not None and upstream.slot.shared and upstream.key in keys:
                with contextlib.suppress(OSError):
                    upstream.endpoint.sock.shutdown(socket.SHUT_RDWR)
                closed += 1
        return closed

    def start(self) -> None:
        try:
            super().start()
        except OSError as exc:
            raise ListenError(
                exc.errno, f"cannot listen on {self.settings.bind}:{self.settings.port}: {exc.strerror or exc}"
            ) from None
        self.limiter.fence = self.fence
        self.limiter.start()
        self.refusals.start()
        self.keepalive_tuner.start()

    def do_read(self):
        """Accept, but out of descriptors (EMFILE) pause instead of failing in a loop.

        The pending connection stays in the kernel's backlog; accepting resumes after a
        back-off (0.05 s doubling to 1 s), and the episode is logged once at each end.
        """
        try:
            result = super().do_read()
        except OSError as exc:
            if exc.errno not in OUT_OF_DESCRIPTORS:
                raise
            self._pause_accepting(exc)
            return None
        if self._accept_paused and result:
            self._accept_paused = False
            self._accept_delay = 0.0
            self.log.warning("accepting connections again")
        return result

    def _pause_accepting(self, exc: OSError) -> None:
        if not self._accept_paused:
            self._accept_paused = True
            self.log.error("cannot accept connections: %s; pausing accept until descriptors free up", exc.strerror)
        self._accept_delay = min(1.0, self._accept_delay * 2 or 0.05)
        self.stop_accepting()
        gevent.get_hub().loop.timer(self._accept_delay).start(self._resume_accepting)

    def _resume_accepting(self) -> None:
        if not self.stopping and not self.closed:
            self.start_accepting()

    def full(self) -> bool:
        """Asked by the accept loop before each accept: at --max-clients, stop accepting."""
        if self._clients >= self.max_clients:
            self._full = True
            return True
        return False

    def do_handle(self, *args: object) -> None:
        """Hand an accepted connection to a new greenlet (counted from here on)."""
        self._clients += 1
        try:
            super().do_handle(*args)
        except BaseException:
            self._client_done()
            raise

    def _client_done(self) -> None:
        self._clients -= 1
        if self._full and self._clients < self.max_clients:
            self._full = False
            if not self.stopping and not self.closed:
                self.start_accepting()
        if self._drained is not None and not self._clients:
            self._drained.set()

    def handle(self, sock: socket.socket, address: tuple) -> None:
        try:
            if self.context.state.stopping:
                return
            if not self.access.client_allowed(address[0]):
                self.refusals.record(f"from {address[0]}: client not in --allow-clients")
                self.limiter.stats.refused(None, Reason.ACCESS)
                with contextlib.suppress(OSError):
                    sock.sendall(FORBIDDEN_CLIENT)
                return
            session = ClientSession(self.context, sock, address)
            self.sessions.add(session)
            try:
                session.run()
            finally:
                self.sessions.discard(session)
        finally:
            self._client_done()

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting; let busy connections finish up to ``timeout``, then close them.

        Idle keep-alive connections are closed at once: they hold no request in flight.
        """
        if timeout is None:
            timeout = self.settings.shutdown_timeout
        self.context.state.stopping = True
        self.close()
        self.log.info(
            "stopped accepting; %d client connection(s) open, closing in at most %gs", len(self.sessions), timeout
        )
        self.limiter.cancel_waiters()  # connections waiting for a slot: 503 at once
        for session in list(self.sessions):
            if session.idle:
                session.greenlet.kill(block=False)
        self._drained = gevent.event.Event()
        if not self._clients:
            self._drained.set()
        try:
            self._drained.wait(timeout)
            gevent.killall([session.greenlet for session in self.sessions], block=True, timeout=1)
        finally:
            self.keepalive_tuner.stop()
            self.health.stop()
            self.refusals.stop()
            self.limiter.close()
