"""One consistent copy of what operators see, taken in the proxy's hub in a few milliseconds.

Everything after the copy (choosing host series, the Prometheus exposition, the JSON of
/hosts) works on the snapshot alone, so it can run in another thread while the hub goes
on serving: a scrape of 20,000 hosts never stalls the proxy for long.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from prometheus_client import Metric

from ..limits.hosts import HostKey, HostLimits
from ..limits.limiter import Limiter
from ..limits.rates import Rate
from ..limits.tenants import Standing
from ..parents.pool import PARENT, Parents, ParentStatus, parent_status
from ..stats import HostCounters, ProxyStats


@dataclass(frozen=True)
class Snapshot:
    mode: str  # local or redis
    default_limit: int
    limits: dict[HostKey, int]  # hosts with a limit of their own (this process's or stored in Redis)
    host_limits: HostLimits  # for the limit of any host (patterns, the stored ones): safe to read from a thread
    open: dict[HostKey, int]  # upstream connections of this process, per host
    waiting: dict[HostKey, int]  # connections of this process waiting for a slot, per host
    fleet: dict[HostKey, int] | None  # fleet-wide counts as last seen (distributed mode)
    next_tokens: dict[HostKey, float]  # rated hosts whose burst is not full: seconds to the next token
    counters: dict[HostKey, HostCounters]  # per-host counters (at most --metrics-max-hosts)
    other: HostCounters  # the counters of every folded host
    folded: int
    clients: int
    tunnel_bytes: tuple[int, int]
    backend_up: bool | None
    redis_errors: dict[str, int]
    lease_refreshes: int
    histograms: list[Metric]  # collected in the hub: their locks stay in one thread
    max_hosts: int
    taken: float  # time.monotonic() when taken (refusals in the last minute count from it)
    tenants: dict[HostKey, dict[str, Standing]]  # hosts tenants use or wait for: each tenant's standing
    tenant_refusals: dict[tuple[str, str], int]  # (tenant, reason) -> refusals by this process
    parents: list[ParentStatus]  # every parent proxy of every pool, as this process sees it

    def limit_for(self, key: HostKey) -> int:
        return self.host_limits.limit_for(key)

    def rate_for(self, key: HostKey) -> Rate | None:
        return self.host_limits.rate_for(key)

    def refused_recently(self, key: HostKey) -> int:
        counters = self.counters.get(key)
        return counters.refused_recently(self.taken) if counters is not None else 0

    def listed_hosts(self) -> set[HostKey]:
        """Every host with a limit of its own or an open connection (here or, as last seen, fleet-wide)."""
        rated = (k for k in self.host_limits.rates() if not k.startswith("*."))
        return set(self.limits) | set(self.open) | set(self.waiting) | set(self.fleet or ()) | set(rated)


def _shown_candidates(limiter: Limiter, stats: ProxyStats) -> set[HostKey]:
    """The hosts whose next token operators may be shown: rated ones among those with a rate
    of their own, open connections, waiters or recent activity."""
    candidates = {k for k in limiter.limits.rates() if not k.startswith("*.")}
    candidates |= {k for k in limiter.limits.stored_rates() if not k.startswith("*.")}
    candidates |= set(limiter.process_counts()) | set(limiter.waiting_counts())
    candidates |= set(stats.pinned_hosts) | set(stats.hosts)
    return {k for k in candidates if limiter.limits.rate_for(k) is not None}


def hosts_only(counts: dict[HostKey, int]) -> dict[HostKey, int]:
    """Counts of destinations: parent proxies' own counts are shown on /parents."""
    return {k: n for k, n in counts.items() if not k.startswith(PARENT)}


def take(limiter: Limiter, clients: int, parents: Parents | None = None) -> Snapshot:
    """Copy the counts; call it in the hub that serves the proxy."""
    stats = limiter.stats
    counters = {key: c.copy() for table in (stats.pinned_hosts, stats.hosts) for key, c in table.items()}
    histograms = [*stats.dial_seconds.collect(), *stats.queue_seconds.collect()]
    if limiter.backend_up() is not None:
        histograms += stats.redis_seconds.collect()
    fleet = limiter.seen_fleet_counts()
    return Snapshot(
        mode=limiter.mode,
        default_limit=limiter.limits.effective_default(),
        limits={
            **limiter.limits.overrides(),
            **{k: n for k, n in limiter.limits.stored().items() if not k.startswith("*.")},
        },
        host_limits=limiter.limits,
        open=hosts_only(limiter.process_counts()),
        waiting=limiter.waiting_counts(),
        fleet=hosts_only(fleet) if fleet is not None else None,
        next_tokens=limiter.next_tokens(_shown_candidates(limiter, stats)),
        counters=counters,
        other=stats.other.copy(),
        folded=stats.folded,
        clients=clients,
        tunnel_bytes=(stats.tunnel_bytes[0], stats.tunnel_bytes[1]),
        backend_up=limiter.backend_up(),
        redis_errors=dict(stats.redis_errors),
        lease_refreshes=stats.lease_refreshes,
        histograms=histograms,
        max_hosts=stats.max_hosts,
        taken=time.monotonic(),
        tenants=limiter.tenant_standings(),
        tenant_refusals=dict(stats.tenant_refusals),
        parents=[parent_status(p, fleet) for p in parents.every_parent()] if parents is not None else [],
    )
