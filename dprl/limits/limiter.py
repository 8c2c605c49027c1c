"""The limiter interface the proxy depends on, and the Slot that makes release exactly-once.

A slot stands for one open upstream TCP connection. It is taken before the dial and given
back when that socket is closed; ``Slot.release`` is idempotent, so every path (normal
end, abort, timeout, killed greenlet) can call it from a ``finally`` without counting twice.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from enum import IntEnum

from ..stats import ProxyStats
from .hosts import HostKey, HostLimits
from .tenants import Lifetimes, Standing, TenantShares
from .waiting import QueuePolicy, WaitingRoom, Watch


class Admission(IntEnum):
    """One try at counting a slot, in memory or in the machine's table: taken, or why not."""

    ADMITTED = 0
    HOST_FULL = 1  # the host is at its cap
    GROUP_FULL = 2  # its shared cap is full
    OTHERS_FIRST = 3  # room, but older waiters (of other workers) go first
    RATE = 4  # room, but the host's rate has no token now
    TENANT_SHARE = 5  # its tenant is at its max, or the free slots are owed to other tenants first


class Slot:
    """One admitted upstream connection to ``key``; release it once, or use ``with``.

    ``shared``: counted in a store other processes read (Redis), under this worker's lease;
    False for a slot admitted locally (in memory, or by policy while Redis was down).
    """

    __slots__ = ("_release", "key", "shared")

    def __init__(self, key: HostKey, release: Callable[[HostKey], None], shared: bool = False) -> None:
        self.key = key
        self.shared = shared
        self._release: Callable[[HostKey], None] | None = release

    @property
    def released(self) -> bool:
        return self._release is None

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release(self.key)

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<Slot {self.key} {'released' if self.released else 'held'}>"


def count_down(counts: dict[HostKey, int], key: HostKey) -> bool:
    """Decrement ``counts[key]``, dropping the entry at zero; True if it reached zero."""
    remaining = counts[key] - 1
    if remaining:
        counts[key] = remaining
        return False
    del counts[key]
    return True


class Limiter(ABC):
    """Counts open upstream connections per host key against ``limits``.

    Implementations: ``MemoryLimiter`` (one process) and ``RedisLimiter`` (a fleet).
    """

    def __init__(self, limits: HostLimits, stats: ProxyStats | None = None) -> None:
        self.limits = limits
        # what operators see of this process (dprl.ops reads it; the proxy and this limiter write it)
        self.stats = stats if stats is not None else ProxyStats(pinned=limits.has_override)
        self.waiting = WaitingRoom(QueuePolicy())  # connections over the cap waiting for a slot
        self.tenants = TenantShares()  # shares of a host's cap and rate (none: no tenants)
        self.lifetimes = Lifetimes()  # how long tenants' connections to each host last lately
        # Set by the server: end the upstream connections of these host keys whose slots are
        # shared, and return how many (a worker whose lease lapsed, --on-lease-loss close).
        self.fence: Callable[[set[HostKey]], int] | None = None

    @abstractmethod
    def acquire(self, key: HostKey, watch: Watch | None = None, tenant: str = "") -> Slot:
        """Take a slot for ``key`` or raise LimitExceeded / LimiterUnavailable.

        Over the cap, with a --queue-timeout, the caller waits for a slot in arrival order
        (QueueTimeout, QueueFull, ShuttingDown; ConnectionLost if ``watch`` says the client
        left). ``tenant``: who asks (tenants.py; ignored without configured shares)."""

    @abstractmethod
    def acquire_parent(self, key: HostKey, limit: int) -> Slot:
        """Take one of ``limit`` slots of a parent proxy's own count (``parent:...``), now or
        never: LimitExceeded at its cap (another parent of its pool is tried), no queue."""

    def pace(self, key: HostKey, watch: Watch | None = None, tenant: str = "") -> None:  # noqa: B027 (no rates: nothing to take)
        """Take a token of ``key``'s rate for a request on a connection it already holds
        (a kept-alive upstream connection): its slot is counted, its requests are too.
        Waits for the token within --queue-timeout, or raises RateExceeded."""

    def tenant_counts(self, key: HostKey) -> dict[str, int]:
        """Open connections to ``key`` per tenant, as this limiter sees them (fleet-wide
        where it can); empty without tenants."""
        return {}

    def tenant_hosts(self) -> Iterable[HostKey]:
        """Hosts with connections of tenants (as ``tenant_counts`` sees them)."""
        return ()

    def tenant_standings(self) -> dict[HostKey, dict[str, Standing]]:
        """Each host with tenants' connections or waiters: every tenant's standing there
        (held, waiting, guarantee, ceiling), for operators."""
        if not self.tenants.enabled:
            return {}
        keys = set(self.tenant_hosts())
        keys |= {w.key for waiters in list(self.waiting.hosts.values()) for w in list(waiters) if w.tenant}
        out = {}
        for key in keys:
            policy = self.limits.policy_for(key)
            if policy.limit:
                out[key] = self.standings(key, policy.line, policy.limit)
        return out

    def standings(self, key: HostKey, line: str, limit: int, asking: str = "") -> dict[str, Standing]:
        """Every tenant's standing at ``key`` (held, waiting on its ``line`` in this process,
        guarantee, ceiling) under ``limit``; ``asking``: a tenant that wants it too."""
        waiting = self.waiting.tenant_counts(key, line)
        return self.tenants.standings(limit, self.tenant_counts(key), waiting, asking)

    def _hopeless_wait(self, key: HostKey, tenant: str, ahead: int, open_: int, limit: int) -> str:
        """Why a tenant's arrival should be refused now rather than wait, when ``ahead``
        waiters of tenants below their guarantee go before it and the host's recent
        connection lifetimes say its turn comes after --queue-timeout ("" if it may come
        in time, or that cannot be told yet)."""
        timeout = self.waiting.policy.timeout
        wait = self.lifetimes.expected_wait(key, ahead + 1 - max(limit - open_, 0), open_)
        if wait is None or wait <= timeout:
            return ""
        return (
            f"tenant {tenant} holds its guarantee or more and {ahead} waiting connection(s) of tenants "
            f"below theirs go first: its turn would come in about {wait:.1f}s, after --queue-timeout {timeout:g}s"
        )

    def _closed(self, tenant: str, admitted: float, key: HostKey) -> None:
        """A tenant's connection to ``key`` admitted at ``admitted`` (monotonic) ended."""
        self.lifetimes.closed(key, time.monotonic() - admitted)

    def next_tokens(self, keys: Iterable[HostKey] = ()) -> dict[HostKey, float]:
        """Seconds until the next token of rated hosts whose burst is not full, among ``keys``
        (the hosts operators are shown) or all this limiter knows of."""
        return {}

    def waiting_counts(self) -> dict[HostKey, int]:
        """Connections waiting for a slot in this process, per host key."""
        return self.waiting.counts()

    def cancel_waiters(self) -> None:
        """Shutdown: every waiting connection is answered at once."""
        self.waiting.cancel_all()

    @abstractmethod
    def fleet_count(self, key: HostKey) -> int:
        """Open connections to ``key`` across every process sharing the caps (this one alone, locally)."""

    @abstractmethod
    def process_counts(self) -> dict[HostKey, int]:
        """Slots held by this process, per host key (keys with none are left out)."""

    def seen_fleet_counts(self) -> dict[HostKey, int] | None:
        """Fleet-wide counts as last seen in replies, per host key (None: no fleet, local mode)."""
        return None

    def backend_up(self) -> bool | None:
        """Whether the shared store answered its last call (None: there is none, local mode)."""
        return None

    def probe(self) -> str:
        """Why this limiter cannot admit now under its failure policy ("" if it can).

        May ask the shared store (bounded by its timeout); runs in the serving hub."""
        return ""

    def start(self) -> None:  # noqa: B027 (an optional hook)
        """Start background work (lease refresh); called in the serving hub."""

    def close(self) -> None:  # noqa: B027 (an optional hook)
        """Give back everything this process holds; called once at shutdown."""

    @property
    def mode(self) -> str:
        return type(self).__name__

    def describe(self) -> str:
        """Extra words for the start-up line (where the counts live)."""
        return ""
