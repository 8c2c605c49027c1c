"""Opening an upstream TCP connection: resolve (never for IP literals), vet, dial, tune.

Failures become UpstreamError with the status the client should see: 502 when the name
does not resolve or the dial is refused, 503 when the proxy is out of descriptors, 504
when it does not complete in time. A destination outside what the access policy allows
is AccessDenied, also when a name resolves into a denied range.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import os
import socket as stdlib_socket
import time
from collections.abc import Callable

import gevent
from gevent import socket

from ..errors import AccessDenied, UpstreamError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[tuple[int, tuple]]]
AddressCheck = Callable[[IPAddress], bool]
SocketOptions = tuple[tuple[int, int, int], ...]
OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
KEEPALIVE_PROBES = 3
_STREAM_NONBLOCK = stdlib_socket.SOCK_STREAM | stdlib_socket.SOCK_NONBLOCK | stdlib_socket.SOCK_CLOEXEC
_IN_PROGRESS = (errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY)
_WRITE = 2  # libev's EV_WRITE


@functools.lru_cache(maxsize=4096)
def ip_literal(host: str) -> IPAddress | None:
    """The address if ``host`` is an IP literal (cached: this runs for every connection)."""
    try:
        return ipaddress.ip_address(host[1:-1] if host.startswith("[") else host)
    except ValueError:
        return None


def keepalive_options(idle: float) -> SocketOptions:
    """Socket options that end a connection whose peer vanished without a FIN or RST.

    Keepalive probes start after ``idle`` seconds of silence, every idle/6 seconds (1 to
    10); the connection ends when three of them went unanswered: TCP_USER_TIMEOUT (Linux)
    of idle + 3 intervals, which also bounds data stuck unacknowledged. (With a user
    timeout set the kernel aborts on it, so TCP_KEEPCNT would only cost a system call per
    connection.) A live peer that merely stops reading answers the probes and is not cut.
    ``idle`` 0 turns all of it off (no options).
    """
    if not idle:
        return ()
    seconds = max(1, round(idle))
    interval = max(1, min(10, seconds // 6))
    options = [
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, seconds),
        (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval),
    ]
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        options.append((socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, (seconds + interval * KEEPALIVE_PROBES) * 1000))
    else:
        options.append((socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES))
    return tuple(options)


def system_resolve(name: str, port: int) -> list[tuple[int, tuple]]:
    infos = socket.getaddrinfo(name, port, 0, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    return [(family, sockaddr) for family, _, _, _, sockaddr in infos]


def check_literal(host: str, allowed: AddressCheck | None) -> None:
    """AccessDenied for an IP-literal destination the policy denies (before any slot is taken)."""
    literal = ip_literal(host)
    if allowed is not None and literal is not None and not allowed(literal):
        raise AccessDenied(f"destination {host} is in a range denied by --deny-destinations")


@functools.lru_cache(maxsize=4096)
def literal_address(host: str, port: int) -> tuple[int, tuple] | None:
    """(family, sockaddr) of an IP-literal host, or None for a name (cached: every connection asks)."""
    literal = ip_literal(host)
    if literal is None:
        return None
    return (socket.AF_INET6 if literal.version == 6 else socket.AF_INET, (str(literal), port))


def dial(
    host: str,
    port: int,
    timeout: float,
    resolve: Resolver | None = None,
    allowed: AddressCheck | None = None,
    raw: bool = False,
) -> socket.socket:
    """Connect to ``host`` (normalised: IPv6 in brackets) within ``timeout`` seconds.

    ``raw``: return the connected non-blocking socket as it is, for a tunnel, whose pipe
    reads and writes its descriptor from hub watchers: a gevent socket around it would
    cost four system calls (a check of the descriptor, blocking mode, two watchers) and
    its Python layers, to serve no blocking call.

    ``resolve(name, port)`` returns ``[(family, sockaddr), ...]`` to try in order and
    raises OSError when the name does not resolve; the default asks gevent's resolver.
    ``allowed(ip)`` vets each address after resolution, so a name cannot smuggle a
    connection into a denied range.
    """
    deadline = time.monotonic() + timeout
    address = literal_address(host, port)
    if address is not None:
        # gevent's resolver is a thread-pool round trip even for literals: skip it.
        if allowed is not None:
            check_literal(host, allowed)
        candidates = [address]
    else:
        candidates = _resolve(host[1:-1] if host.startswith("[") else host, port, timeout, resolve)
        if allowed is not None:
            candidates = [c for c in candidates if allowed(ipaddress.ip_address(c[1][0].split("%", 1)[0]))]
            if not candidates:
                raise AccessDenied(f"destination {host} is in a range denied by --deny-destinations")
    return _connect(candidates, host, port, deadline, timeout, raw)


def _resolve(name: str, port: int, timeout: float, resolve: Resolver | None) -> list[tuple[int, tuple]]:
    timer = gevent.Timeout(timeout)
    timer.start()
    try:
        return (resolve or system_resolve)(name, port)
    except gevent.Timeout as exc:
        if exc is not timer:
            raise
        raise UpstreamError(f"timed out resolving {name} after {timeout:g}s", 504) from None
    except (OSError, UnicodeError) as exc:
        raise UpstreamError(f"cannot resolve {name}: {exc}", 502) from None
    finally:
        timer.close()


def _connect(
    candidates: list[tuple[int, tuple]], host: str, port: int, deadline: float, timeout: float, raw: bool = False
) -> socket.socket:
    """Try each address in turn until one connects, all within ``deadline``."""
    last_error: OSError | None = None
    for family, sockaddr in candidates:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            sock = stdlib_socket.socket(family, _STREAM_NONBLOCK)
        except OSError as exc:
            if exc.errno in OUT_OF_DESCRIPTORS:
                raise UpstreamError("the proxy is out of file descriptors", 503) from None
            raise
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            error = connect_within(sock, sockaddr, remaining)
        except BaseException:
            sock.close()
            raise
        if error is None:
            sock.close()
            raise UpstreamError(f"timed out connecting to {host}:{port} after {timeout:g}s", 504)
        if error:
            sock.close()
            last_error = OSError(error, os.strerror(error))
            continue
        if raw:
            return sock  # a stdlib socket: the pipe uses its descriptor
        return socket.socket(family, socket.SOCK_STREAM, 0, sock.detach())
    if last_error is None:
        raise UpstreamError(f"timed out connecting to {host}:{port} after {timeout:g}s", 504)
    raise UpstreamError(f"cannot connect to {host}:{port}: {last_error.strerror or last_error}", 502)


def connect_within(sock: stdlib_socket.socket, address: tuple, timeout: float) -> int | None:
    """Connect a non-blocking socket: 0, an errno, or None if ``timeout`` passed first.

    One connect() and, when it is in progress, one hub watcher and one hub timer, then
    SO_ERROR: what gevent's socket.connect does without its Timeout object and the
    second connect() and getsockopt() around it (two system calls fewer per dial).
    """
    error = sock.connect_ex(address)
    if error not in _IN_PROGRESS:
        return error
    hub = gevent.get_hub()
    writable = hub.loop.io(sock.fileno(), _WRITE)
    timer = hub.loop.timer(timeout)
    switch = gevent.getcurrent().switch
    writable.start(switch, True)
    timer.start(switch, False)
    try:
        connected = hub.switch()
    finally:
        writable.close()
        timer.close()
    if not connected:
        return None
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
