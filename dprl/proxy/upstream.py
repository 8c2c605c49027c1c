"""An upstream connection together with the slot it holds: opened with one, closed with it.

``UpstreamConnection.open`` takes the slot before the dial and gives it back if the dial
fails; ``close`` shuts the socket and releases the slot exactly once, and writes the
access-log line (host, client, parent, last status, duration, bytes each way): at info
level with --access-log, else at debug level. A destination routed to a pool of parent
proxies is reached through one of them (dprl/parents/connect.py), on the same slot.
``KeepaliveTuner`` gives the connections that outlive a second their TCP keepalive.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import NamedTuple

import gevent
from gevent import socket

from ..background import Background
from ..errors import AccessDenied
from ..http.target import Target
from ..limits.hosts import HostKey
from ..limits.limiter import Limiter, Slot
from ..limits.waiting import Watch
from ..net.dial import AddressCheck, Resolver, SocketOptions, dial, ip_literal
from ..net.endpoint import Endpoint, peer_text
from ..parents.connect import Via, through
from ..parents.handshake import Destination
from ..parents.health import Health
from ..parents.pool import Parents
from ..parents.tls import bridged

FRESH_FOR = 1.0  # seconds after a response during which a kept upstream is reused unchecked
TUNE_AFTER = 1.0  # seconds an upstream connection lives before it gets its keepalive options


class KeepaliveTuner:
    """Sets the keepalive options on upstream connections that have lived ``TUNE_AFTER``.

    Keepalive acts only after --tcp-keepalive seconds of silence, so a connection that
    ends within a second never needs it, and most do (one API call). One greenlet sets
    the options on the others, once a second: four system calls fewer per short
    connection, the same protection for every long one.
    """

    def __init__(self, options: SocketOptions) -> None:
        self.options = options
        self._young: set[UpstreamConnection] = set()
        self._background = Background(self._run)

    def track(self, connection: UpstreamConnection) -> None:
        if self.options:
            self._young.add(connection)

    def forget(self, connection: UpstreamConnection) -> None:
        self._young.discard(connection)

    def start(self) -> None:
        if self.options:
            self._background.start()

    def stop(self) -> None:
        self._background.stop()

    def _run(self) -> None:
        while True:
            gevent.sleep(TUNE_AFTER)
            self.tune(time.monotonic() - TUNE_AFTER)

    def tune(self, opened_before: float) -> None:
        """Set the options on every tracked connection opened before ``opened_before``."""
        for connection in [c for c in self._young if c.opened <= opened_before]:
            self._young.discard(connection)
            with contextlib.suppress(OSError):  # closed meanwhile: nothing to protect
                for level, option, value in self.options:
                    connection.endpoint.sock.setsockopt(level, option, value)


class Dialer(NamedTuple):
    """How upstream connections are made: time allowed, resolver, destination check,
    keepalive, and the parent proxies destinations are routed through."""

    timeout: float
    resolve: Resolver | None = None
    allowed: AddressCheck | None = None
    keepalive: KeepaliveTuner | None = None
    parents: Parents | None = None
    health: Health | None = None
    passthrough: bool = False  # --parent-auth passthrough: the client's Proxy-Authorization goes to the parent
    parent_ca_file: str = ""  # more CAs to verify https:// parents with


class UpstreamConnection:
    __slots__ = (
        "_client_address",
        "_keepalive",
        "_log",
        "access_level",
        "connect_seconds",
        "endpoint",
        "key",
        "last_used",
        "opened",
        "requests",
        "slot",
        "status",
        "target",
        "via",
    )

    def __init__(
        self,
        target: Target,
        slot: Slot,
        sock: socket.socket | Endpoint,
        client: tuple,
        log: logging.Logger,
        keepalive: KeepaliveTuner | None = None,
        via: Via | None = None,
    ) -> None:
        self.target = target
        self.key = slot.key
        self.slot = slot
        self.via = via  # the parent proxy it goes through (None: dialled directly)
        self.endpoint = sock if isinstance(sock, Endpoint) else Endpoint(sock, "upstream")
        self.opened = self.last_used = time.monotonic()
        self.connect_seconds = 0.0  # resolve + connect, set by ``open``
        self.status = 0  # of the last response relayed (200 for a CONNECT), for the access log
        self.requests = 0
        self.access_level = logging.DEBUG
        self._client_address = client  # the client's socket address, formatted only for a log line
        self._log = log
        self._keepalive = keepalive
        if keepalive is not None:
            keepalive.track(self)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "upstream open host=%s client=%s target=%s:%d parent=%s",
                *(self.key, self.client, target.host, target.port, self.parent or "-"),
            )

    @classmethod
    def open(
        cls,
        limiter: Limiter,
        dialer: Dialer,
        target: Target,
        key: HostKey,
        client: tuple,
        log: logging.Logger,
        watch: Watch | None = None,
        tunnel: bool = False,
        tenant: str = "",
        authorization: str = "",
    ) -> UpstreamConnection:
        """Take a slot for ``key``, then dial; a denied IP literal is refused before any slot.

        Names are resolved (and their addresses vetted) only once a slot is held, so a
        host at its cap costs no DNS lookup. For a ``tunnel`` (CONNECT) the socket is the
        plain non-blocking one the pipe needs (``dial``'s ``raw``). ``authorization``: the
        client's Proxy-Authorization, for a parent with --parent-auth passthrough.
        """
        allowed = dialer.allowed
        if allowed is not None and (literal := ip_literal(target.host)) is not None:
            if not allowed(literal):
                raise AccessDenied(f"destination {target.host} is in a range denied by --deny-destinations")
            allowed = None  # vetted: dial need not look again
        pool = dialer.parents.pool_for(key) if dialer.parents is not None else None
        slot = limiter.acquire(key, watch, tenant)
        started = time.monotonic()
        via = None
        try:
            if pool is None:
                sock: socket.socket | Endpoint = dial(
                    target.host, target.port, dialer.timeout, dialer.resolve, allowed, tunnel
                )
            else:
                assert dialer.health is not None  # made with the parents
                via = through(
                    *(pool, dialer.health, limiter, Destination(target.host, target.port), key),
                    tunnel=tunnel,
                    passthrough=authorization if dialer.passthrough else None,
                    timeout=dialer.timeout,
                    resolve=dialer.resolve,
                    allowed=allowed,
                    ca_file=dialer.parent_ca_file,
                )
                sock = via.endpoint
                if tunnel and via.parent.spec.scheme == "https":  # the pipe needs a plain socket
                    sock = bridged(via.endpoint)
        except BaseException:
            slot.release()
            raise
        connection = cls(target, slot, sock, client, log, dialer.keepalive, via)
        connection.connect_seconds = connection.opened - started
        return connection

    @property
    def client(self) -> str:
        """The client this connection serves, as the access log shows it."""
        return peer_text(self._client_address)

    @property
    def parent(self) -> str:
        """The parent proxy it goes through, as logs show it ("" for none)."""
        return self.via.parent.spec.label if self.via is not None else ""

    def serves(self, target: Target) -> bool:
        """True if this connection can carry the next request to ``target``."""
        return self.target.host == target.host and self.target.port == target.port and not self.is_stale()

    def is_stale(self) -> bool:
        """True if the upstream closed (or sent unsolicited bytes) while we were idle.

        Servers close idle keep-alive connections after seconds, not milliseconds: a
        connection used within the last second is not worth a system call to check (and
        a safe request is sent again if it was stale after all).
        """
        endpoint = self.endpoint
        if endpoint.buf:
            return True
        if time.monotonic() - self.last_used < FRESH_FOR:
            return False
        sock = endpoint.sock
        sock.settimeout(0.0)
        try:
            sock.recv(1, socket.MSG_PEEK)
            return True  # EOF or bytes nobody asked for: either way, not reusable
        except BlockingIOError:
            return False
        except OSError:
            return True
        finally:
            sock.settimeout(endpoint.timeout)

    def close(self) -> None:
        if self.slot.released:
            return
        if self._keepalive is not None:
            self._keepalive.forget(self)
        try:
            self.endpoint.sock.close()
            if self.via is not None:
                self.via.endpoint.sock.close()  # a bridged tunnel's TLS connection too
        finally:
            self.slot.release()
            if self.via is not None:
                self.via.parent.in_use -= 1
                if self.via.slot is not None:
                    self.via.slot.release()
        if self._log.isEnabledFor(self.access_level):
            endpoint = self.endpoint
            duration_ms = round((time.monotonic() - self.opened) * 1000, 1)
            client = self.client
            self._log.log(
                self.access_level,
                "upstream close host=%s client=%s parent=%s status=%s requests=%d duration=%.1fms sent=%d received=%d",
                self.key,
                client,
                self.parent or "-",
                self.status or "-",
                self.requests,
                duration_ms,
                endpoint.bytes_out,
                endpoint.bytes_in,
                extra={
                    "host": self.key,
                    "client": client,
                    "parent": self.parent or None,
                    "status": self.status or None,
                    "requests": self.requests,
                    "duration_ms": duration_ms,
                    "bytes_out": endpoint.bytes_out,
                    "bytes_in": endpoint.bytes_in,
                },
            )
