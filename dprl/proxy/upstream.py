"""An upstream connection together with the slot it holds: opened with one, closed with it.

``UpstreamConnection.open`` takes the slot before the dial and gives it back if the dial
fails; ``close`` shuts the socket and releases the slot exactly once, and writes the
access-log line (host, client, last status, duration, bytes each way): at info level
with --access-log, else at debug level.
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
    """How upstream connections are made: time allowed, resolver, destination check, keepalive."""

    timeout: float
    resolve: Resolver | None = None
    allowed: AddressCheck | None = None
    keepalive: KeepaliveTuner | None = None


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
    )

    def __init__(
        self,
        target: Target,
        slot: Slot,
        sock: socket.socket,
        client: tuple,
        log: logging.Logger,
        keepalive: KeepaliveTuner | None = None,
    ) -> None:
        self.target = target
        self.key = slot.key
        self.slot = slot
        self.endpoint = Endpoint(sock, "upstream")
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
            log.debug("upstream open host=%s client=%s target=%s:%d", self.key, self.client, target.host, target.port)

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
    ) -> UpstreamConnection:
        """Take a slot for ``key``, then dial; a denied IP literal is refused before any slot.

        Names are resolved (and their addresses vetted) only once a slot is held, so a
        host at its cap costs no DNS lookup. For a ``tunnel`` (CONNECT) the socket is the
        plain non-blocking one the pipe needs (``dial``'s ``raw``).
        """
        allowed = dialer.allowed
        if allowed is not None and (literal := ip_literal(target.host)) is not None:
            if not allowed(literal):
                raise AccessDenied(f"destination {target.host} is in a range denied by --deny-destinations")
            allowed = None  # vetted: dial need not look again
        slot = limiter.acquire(key, watch, tenant)
        started = time.monotonic()
        try:
            sock = dial(target.host, target.port, dialer.timeout, dialer.resolve, allowed, tunnel)
        except BaseException:
            slot.release()
            raise
        connection = cls(target, slot, sock, client, log, dialer.keepalive)
        connection.connect_seconds = connection.opened - started
        return connection

    @property
    def client(self) -> str:
        """The client this connection serves, as the access log shows it."""
        return peer_text(self._client_address)

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
        finally:
            self.slot.release()
        if self._log.isEnabledFor(self.access_level):
            endpoint = self.endpoint
            duration_ms = round((time.monotonic() - self.opened) * 1000, 1)
            client = self.client
            self._log.log(
                self.access_level,
                "upstream close host=%s client=%s status=%s requests=%d duration=%.1fms sent=%d received=%d",
                self.key,
                client,
                self.status or "-",
                self.requests,
                duration_ms,
                endpoint.bytes_out,
                endpoint.bytes_in,
                extra={
                    "host": self.key,
                    "client": client,
                    "status": self.status or None,
                    "requests": self.requests,
                    "duration_ms": duration_ms,
                    "bytes_out": endpoint.bytes_out,
                    "bytes_in": endpoint.bytes_in,
                },
            )
