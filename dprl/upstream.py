"""Opening the upstream TCP connection: resolve (never for IP literals), dial, tune.

Failures become UpstreamError with the status the client should see: 502 when the name
does not resolve or the dial is refused, 504 when it does not complete in time.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import logging
import time
from collections.abc import Callable

import gevent
from gevent import socket

from .endpoint import Endpoint
from .errors import AccessDenied, UpstreamError
from .limiter import Limiter, Slot

Resolver = Callable[[str, int], list[tuple[int, tuple]]]
AddressCheck = Callable[[ipaddress.IPv4Address | ipaddress.IPv6Address], bool]
FRESH_FOR = 1.0  # seconds after a response during which a kept upstream is reused unchecked
_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


@functools.lru_cache(maxsize=4096)
def ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address if ``host`` is an IP literal (cached: this runs for every connection)."""
    try:
        return ipaddress.ip_address(host[1:-1] if host.startswith("[") else host)
    except ValueError:
        return None


def dial(
    host: str,
    port: int,
    timeout: float,
    resolve: Resolver | None = None,
    allowed: AddressCheck | None = None,
) -> socket.socket:
    """Connect to ``host`` (normalised: IPv6 in brackets) within ``timeout`` seconds.

    ``resolve(name, port)`` returns ``[(family, sockaddr), ...]`` to try in order and
    raises OSError when the name does not resolve; the default asks gevent's resolver.
    ``allowed(ip)`` vets each address after resolution (AccessDenied when none passes),
    so a name cannot smuggle a connection into a denied range.
    """
    literal = ip_literal(host)
    if literal is not None:
        # gevent's resolver is a thread-pool round trip even for literals: skip it.
        if allowed is not None and not allowed(literal):
            raise AccessDenied(f"destination {host} is in a range denied by --deny-destinations")
        family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
        return _connect([(family, (str(literal), port))], host, port, time.monotonic() + timeout, timeout)
    deadline = time.monotonic() + timeout
    bare = host[1:-1] if host.startswith("[") else host
    timer = gevent.Timeout(timeout)
    timer.start()
    try:
        candidates = (resolve or system_resolve)(bare, port)
    except gevent.Timeout as exc:
        if exc is not timer:
            raise
        raise UpstreamError(f"timed out resolving {bare} after {timeout:g}s", 504) from None
    except (OSError, UnicodeError) as exc:
        raise UpstreamError(f"cannot resolve {bare}: {exc}", 502) from None
    finally:
        timer.close()
    if allowed is not None:
        candidates = [c for c in candidates if allowed(ipaddress.ip_address(c[1][0].split("%", 1)[0]))]
        if not candidates:
            raise AccessDenied(f"destination {host} is in a range denied by --deny-destinations")
    return _connect(candidates, host, port, deadline, timeout)


def _connect(candidates: list[tuple[int, tuple]], host: str, port: int, deadline: float, timeout: float):
    """Try each address in turn until one connects, all within ``deadline``."""
    last_error: OSError | None = None
    for family, sockaddr in candidates:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            if exc.errno in _OUT_OF_DESCRIPTORS:
                raise UpstreamError("the proxy is out of file descriptors", 503) from None
            raise
        sock.settimeout(remaining)
        try:
            sock.connect(sockaddr)
        except TimeoutError:
            sock.close()
            raise UpstreamError(f"timed out connecting to {host}:{port} after {timeout:g}s", 504) from None
        except OSError as exc:
            sock.close()
            last_error = exc
            continue
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    if last_error is None:
        raise UpstreamError(f"timed out connecting to {host}:{port} after {timeout:g}s", 504)
    raise UpstreamError(f"cannot connect to {host}:{port}: {last_error.strerror or last_error}", 502)


def system_resolve(name: str, port: int) -> list[tuple[int, tuple]]:
    infos = socket.getaddrinfo(name, port, 0, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    return [(family, sockaddr) for family, _, _, _, sockaddr in infos]


class UpstreamConnection:
    """An upstream socket together with the slot it holds.

    ``close`` shuts the socket and releases the slot exactly once, and writes the
    connection-tracker line (host, client, duration, bytes each way) at debug level.
    """

    __slots__ = ("_log", "client", "endpoint", "host", "key", "last_used", "opened", "port", "slot")

    def __init__(self, host: str, port: int, slot: Slot, sock: socket.socket, client: str, log: logging.Logger) -> None:
        self.host = host
        self.port = port
        self.key = slot.host
        self.slot = slot
        self.endpoint = Endpoint(sock, "upstream")
        self.opened = self.last_used = time.monotonic()
        self.client = client
        self._log = log
        if log.isEnabledFor(logging.DEBUG):
            log.debug("upstream open host=%s client=%s target=%s:%d", self.key, client, host, port)

    @classmethod
    def open(
        cls,
        limiter: Limiter,
        host: str,
        port: int,
        key: str,
        timeout: float,
        client: str,
        log: logging.Logger,
        resolve: Resolver | None = None,
        allowed: AddressCheck | None = None,
    ) -> UpstreamConnection:
        """Take a slot for ``key``, then dial; the slot is given back if the dial fails.

        A denied IP literal is refused before any slot is taken.
        """
        literal = ip_literal(host)
        if allowed is not None and literal is not None and not allowed(literal):
            raise AccessDenied(f"destination {host} is in a range denied by --deny-destinations")
        slot = limiter.acquire(key)
        try:
            sock = dial(host, port, timeout, resolve, allowed)
        except BaseException:
            slot.release()
            raise
        return cls(host, port, slot, sock, client, log)

    def is_stale(self) -> bool:
        """True if the upstream closed (or sent unsolicited bytes) while we were idle.

        Servers close idle keep-alive connections after seconds, not milliseconds: a
        connection used within the last second is not worth a system call to check (and
        a request without a body is sent again if it was stale after all).
        """
        sock = self.endpoint.sock
        if self.endpoint.buf:
            return True
        if time.monotonic() - self.last_used < FRESH_FOR:
            return False
        sock.settimeout(0.0)
        try:
            sock.recv(1, socket.MSG_PEEK)
            return True  # EOF or bytes nobody asked for: either way, not reusable
        except BlockingIOError:
            return False
        except OSError:
            return True
        finally:
            sock.settimeout(None)

    def close(self) -> None:
        if self.slot.released:
            return
        try:
            self.endpoint.sock.close()
        finally:
            self.slot.release()
        if self._log.isEnabledFor(logging.DEBUG):
            ep = self.endpoint
            self._log.debug(
                "upstream close host=%s client=%s duration=%.3fs sent=%d received=%d",
                self.key,
                self.client,
                time.monotonic() - self.opened,
                ep.bytes_out,
                ep.bytes_in,
            )
