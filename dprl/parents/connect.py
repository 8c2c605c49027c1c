"""A connection to a destination through its pool: choose a parent, count it, dial, ask.

The destination's slot is taken before this runs and is not touched here: a connection
that fails over from one parent to the next keeps it (never counted twice, never given
back early). Each parent tried takes its own count first when it has a cap
(``?max=N``, fleet-wide through the limiter), and gives it back if it is not used.

A parent that fails to connect or to complete its handshake counts against its health
and the next one of the pool is tried, until one carries the connection or none is
left: then ``ParentsUnavailable`` (502) names the pool. A parent that refuses the
destination in proper form (``ParentRefused``) ends the attempt: its answer is the
client's.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator
from typing import NamedTuple

from ..errors import AccessDenied, LimitExceeded, ParentsUnavailable, UpstreamError
from ..limits.limiter import Limiter, Slot
from ..net.dial import AddressCheck, Resolver, dial, literal_address, system_resolve
from ..net.endpoint import Endpoint
from .handshake import Destination, HandshakeFailed, basic_credentials, http_connect, socks5_connect
from .health import Health
from .pool import ParentState, Pool
from .tls import TlsFailed, wrap_tls


class Via(NamedTuple):
    """The upstream end of a connection through a parent."""

    endpoint: Endpoint  # to the parent, past its handshake when there was one
    parent: ParentState
    slot: Slot | None  # the parent's own count (None: it has no cap)
    absolute_form: bool  # plain HTTP to an HTTP(S) parent: requests go in absolute-form
    authorization: str  # the Proxy-Authorization value such requests carry ("" for none)


def through(
    pool: Pool,
    health: Health,
    limiter: Limiter,
    to: Destination,
    key: str,
    *,
    tunnel: bool,
    passthrough: str | None,
    timeout: float,
    resolve: Resolver | None = None,
    allowed: AddressCheck | None = None,
    ca_file: str = "",
) -> Via:
    """Connect to ``to`` through a parent of ``pool``. ``tunnel``: the client asked for a
    CONNECT (or plain HTTP goes through a SOCKS5 parent: a tunnel too). ``passthrough``:
    the client's own Proxy-Authorization, sent to the parent unchanged (--parent-auth
    passthrough), or None to use each parent's own credentials."""
    offered = pool.offer(key)
    failures: list[str] = []
    at_cap = 0
    resolved = None  # the destination's address for socks5:// parents: resolved once, here
    for parent in _tries(offered):
        spec = parent.spec
        if spec.scheme == "socks5" and resolved is None:
            resolved = _resolved(to, resolve, allowed)  # a failure is the destination's, not a parent's
        slot = None
        if spec.max_connections:
            try:
                slot = limiter.acquire_parent(parent.key, spec.max_connections)
            except LimitExceeded:
                at_cap += 1
                continue
        parent.in_use += 1
        endpoint = None
        try:
            deadline = time.monotonic() + timeout
            endpoint = Endpoint(dial(spec.host, spec.port, timeout), "upstream")
            if spec.scheme == "https":
                endpoint = wrap_tls(endpoint, spec.host, deadline, ca_file)
            if passthrough is not None:
                authorization = passthrough
            else:
                authorization = basic_credentials(spec.username, spec.password) if spec.username else ""
            if spec.scheme.startswith("socks5"):
                socks5_connect(endpoint, spec, to, resolved if spec.scheme == "socks5" else None, deadline)
            elif tunnel:
                http_connect(endpoint, spec, to, authorization, deadline)
            else:  # plain HTTP to an HTTP(S) parent: its requests name the destination themselves
                health.succeeded(parent)
                return Via(endpoint, parent, slot, True, authorization)
        except (UpstreamError, HandshakeFailed, TlsFailed) as exc:
            _give_up(parent, slot, endpoint)
            kind = exc.reason if isinstance(exc, (HandshakeFailed, TlsFailed)) else "connect"
            health.failed(parent, kind, str(exc))
            failures.append(f"{spec.label}: {exc}")
            continue
        except BaseException:
            _give_up(parent, slot, endpoint)
            raise
        health.succeeded(parent)
        return Via(endpoint, parent, slot, False, "")
    if offered and at_cap == len(offered):
        raise LimitExceeded(f"parent pool {pool.name}", sum(p.spec.max_connections for p in offered))
    if not offered:
        raise ParentsUnavailable(f"every parent of pool {pool.name} is down (ejected, being probed)")
    raise ParentsUnavailable(f"no parent of pool {pool.name} could connect: " + "; ".join(failures))


def _tries(offered: list[ParentState]) -> Iterator[ParentState]:
    """Each offered parent once, in order; then, if every one failed, the first that is still
    up once more: a parent that reset one connection (it happens, even to a healthy one)
    is not the end of a connection whose client has received nothing yet."""
    yield from offered
    again = next((parent for parent in offered if parent.up), None)
    if again is not None and again.failures:
        yield again


def _give_up(parent: ParentState, slot: Slot | None, endpoint: Endpoint | None) -> None:
    """A parent tried and not used: its socket closed, its counts given back."""
    if endpoint is not None:
        endpoint.sock.close()
    parent.in_use -= 1
    if slot is not None:
        slot.release()


def _resolved(to: Destination, resolve: Resolver | None, allowed: AddressCheck | None) -> str:
    """The destination's address for a ``socks5://`` parent, resolved here and vetted by
    --deny-destinations like a direct dial's."""
    literal = literal_address(to.host, to.port)
    if literal is not None:
        return literal[1][0]
    try:
        candidates = (resolve or system_resolve)(to.host, to.port)
    except (OSError, UnicodeError) as exc:
        raise UpstreamError(f"cannot resolve {to.host}: {exc}", 502) from None
    for _, sockaddr in candidates:
        address = sockaddr[0].split("%", 1)[0]
        if allowed is None or allowed(ipaddress.ip_address(address)):
            return address
    raise AccessDenied(f"destination {to.host} is in a range denied by --deny-destinations")
