"""A snapshot as Prometheus metrics (through prometheus_client) and as the rows of /hosts.

Host label values are bounded by --metrics-max-hosts: the hosts with a configured limit
come first, then the busiest others; the rest are summed under ``host="_other"``. Counters
were folded for good where they are kept (``dprl.stats``), so each stays monotonic.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from prometheus_client import Metric, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import choose_encoder

from ..limits.hosts import HostKey
from ..parents.health import FAILURE_REASONS
from ..parents.pool import ParentStatus
from ..stats import NO_HOST, OTHER
from ..version import __version__
from .snapshot import Snapshot

_PROCESS = ProcessCollector(registry=None)


def shown_hosts(snapshot: Snapshot) -> list[HostKey]:
    """The hosts that get their own gauge series: configured ones first, then the busiest others,
    then the recently active ones (their gauges go to 0 rather than vanish when they close)."""
    fleet = snapshot.fleet or {}

    def use(key: HostKey) -> int:
        return max(snapshot.open.get(key, 0), fleet.get(key, 0))

    configured = sorted(snapshot.limits, key=use, reverse=True)
    active = set(snapshot.open) | set(snapshot.waiting) | set(fleet)
    busy = sorted((k for k in active if k not in snapshot.limits), key=use, reverse=True)
    seen = set(configured) | set(busy)
    recent = [k for k in reversed(snapshot.counters) if k not in seen and k != NO_HOST]  # most recent first
    return (configured + busy + recent)[: snapshot.max_hosts]


def _by_host(values: dict[HostKey, int], shown: set[HostKey]) -> Iterator[tuple[HostKey, int]]:
    other = 0
    for key, n in values.items():
        if key in shown:
            yield key, n
        else:
            other += n
    if other:
        yield OTHER, other


class SnapshotCollector:
    """A prometheus_client collector over one snapshot (``collect`` is all it needs)."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot
        shown_list = shown_hosts(s)
        shown = set(shown_list)
        info = InfoMetricFamily("dprl_build", "Version and mode of this dprl process.")
        info.add_metric([], {"version": __version__, "mode": s.mode})
        yield info

        gauge = GaugeMetricFamily(
            "dprl_upstream_connections", "Upstream connections open now, this process.", labels=["host"]
        )
        for key, n in _by_host(_shown_first(s.open, shown_list), shown):
            gauge.add_metric([key], n)
        yield gauge

        gauge = GaugeMetricFamily(
            "dprl_queue_waiting", "Connections waiting for a slot now, this process.", labels=["host"]
        )
        for key, n in _by_host(_shown_first(s.waiting, shown_list), shown):
            gauge.add_metric([key], n)
        yield gauge

        gauge = GaugeMetricFamily(
            "dprl_upstream_connections_limit",
            "Cap on concurrent upstream connections (0 = unlimited).",
            labels=["host"],
        )
        for key in shown_list:
            gauge.add_metric([key], s.limit_for(key))
        yield gauge
        gauge = GaugeMetricFamily(
            "dprl_host_rate",
            "Request rate a host may receive, per second (hosts with a rate; --max-rate, --host-rates).",
            labels=["host"],
        )
        for key in shown_list:
            rate = s.rate_for(key)
            if rate is not None:
                gauge.add_metric([key], rate.per_second)
        yield gauge
        yield GaugeMetricFamily(
            "dprl_upstream_connections_default_limit",
            "Cap of hosts without a limit of their own.",
            value=s.default_limit,
        )
        if s.fleet is not None:
            gauge = GaugeMetricFamily(
                "dprl_fleet_upstream_connections",
                "Upstream connections open fleet-wide, as last seen in Redis's replies to this process.",
                labels=["host"],
            )
            for key, n in _by_host(s.fleet, shown):
                gauge.add_metric([key], n)
            yield gauge

        opened = CounterMetricFamily(
            "dprl_upstream_connections_opened", "Upstream connections opened (admitted and dialled).", labels=["host"]
        )
        refusals = CounterMetricFamily(
            "dprl_refusals", "Requests answered with an error of the proxy's own, by reason.", labels=["host", "reason"]
        )
        for key, counters in [*s.counters.items(), (OTHER, s.other)]:
            if counters.opened or key not in (OTHER, NO_HOST):
                opened.add_metric([key], counters.opened)
            for reason, n in sorted(counters.refusals.items()):
                refusals.add_metric([key, reason], n)
        yield opened
        yield refusals
        yield CounterMetricFamily(
            "dprl_metrics_hosts_folded", 'Hosts whose counters were folded into host="_other".', value=s.folded
        )
        yield GaugeMetricFamily("dprl_client_connections", "Client connections open now.", value=s.clients)
        tunnel = CounterMetricFamily(
            "dprl_tunnel_bytes", "Bytes piped through tunnels (counted as each tunnel ends).", labels=["direction"]
        )
        tunnel.add_metric(["to_upstream"], s.tunnel_bytes[0])
        tunnel.add_metric(["to_client"], s.tunnel_bytes[1])
        yield tunnel
        if s.backend_up is not None:
            yield GaugeMetricFamily(
                "dprl_redis_up", "1 if every Redis primary answered its last call, else 0.", value=int(s.backend_up)
            )
            errors = CounterMetricFamily("dprl_redis_errors", "Failed Redis calls, by kind.", labels=["kind"])
            for kind, n in sorted(s.redis_errors.items()):
                errors.add_metric([kind], n)
            yield errors
            yield CounterMetricFamily(
                "dprl_lease_refreshes", "Leases renewed in Redis (one per host per refresh).", value=s.lease_refreshes
            )
        if s.tenants or s.tenant_refusals:
            gauge = GaugeMetricFamily(
                "dprl_tenant_connections",
                "Upstream connections open now per tenant (tenant shares), over every host "
                "(fleet-wide as last seen in distributed mode).",
                labels=["tenant"],
            )
            held: dict[str, int] = {}
            for standings in s.tenants.values():
                for tenant, standing in standings.items():
                    held[tenant] = held.get(tenant, 0) + standing.held
            for tenant, n in sorted(held.items()):
                gauge.add_metric([tenant], n)
            yield gauge
            refused = CounterMetricFamily(
                "dprl_tenant_refusals",
                "Connections of a tenant answered with a refusal, by reason.",
                labels=["tenant", "reason"],
            )
            for (tenant, reason), n in sorted(s.tenant_refusals.items()):
                refused.add_metric([tenant, reason], n)
            yield refused
        if s.parents:
            yield from _parent_metrics(s.parents)
        yield from s.histograms
        yield from _PROCESS.collect()


def _parent_metrics(parents: list[ParentStatus]) -> Iterator[Metric]:
    """Each parent proxy, labelled POOL/HOST:PORT (configured: bounded; never credentials)."""
    connections = GaugeMetricFamily(
        "dprl_parent_connections", "Connections open now through each parent proxy, this process.", labels=["parent"]
    )
    up = GaugeMetricFamily(
        "dprl_parent_up", "1 while a parent proxy is offered, 0 while it is ejected.", labels=["parent"]
    )
    failures = CounterMetricFamily(
        "dprl_parent_failures",
        "Failed connects, handshakes and TLS handshakes to each parent proxy, by reason.",
        labels=["parent", "reason"],
    )
    for parent in parents:
        connections.add_metric([parent["parent"]], parent["in_use"])
        up.add_metric([parent["parent"]], 1 if parent["state"] == "up" else 0)
        for reason in FAILURE_REASONS:
            failures.add_metric([parent["parent"], reason], parent["failures_total"].get(reason, 0))
    yield from (connections, up, failures)


def _shown_first(values: dict[HostKey, int], shown_list: list[HostKey]) -> dict[HostKey, int]:
    """Every shown host (0 if it has none), then the others (to be summed under _other)."""
    out = {key: values.get(key, 0) for key in shown_list}
    out.update((k, n) for k, n in values.items() if k not in out)
    return out


class Rendered(NamedTuple):
    body: bytes
    content_type: str


def render_metrics(snapshot: Snapshot, accept: str | None) -> Rendered:
    """The exposition (text, or OpenMetrics if ``accept`` asks for it) and its content type."""
    encoder, content_type = choose_encoder(accept or "")
    return Rendered(encoder(SnapshotCollector(snapshot)), content_type)


def host_row(snapshot: Snapshot, key: HostKey) -> dict[str, object]:
    """One host as /hosts shows it."""
    limit = snapshot.limit_for(key)
    row: dict[str, object] = {
        "host": key,
        "limit": limit,
        "open": snapshot.open.get(key, 0),
        "waiting": snapshot.waiting.get(key, 0),
        "refused_last_minute": snapshot.refused_recently(key),
        "limit_from": snapshot.host_limits.limit_source(key),
    }
    counters = snapshot.counters.get(key)
    if counters is not None and counters.refusals:
        row["refusals"] = dict(counters.refusals)  # by reason, since the start (the console's tooltip)
    rate = snapshot.rate_for(key)
    if rate is not None:
        row["rate"] = str(rate)
        row["next_token_in"] = round(snapshot.next_tokens.get(key, 0.0), 3)  # seconds; 0: a token is there
    if snapshot.fleet is not None:
        row["fleet_open"] = snapshot.fleet.get(key, 0)
    standings = snapshot.tenants.get(key)
    if standings:
        row["tenants"] = {
            tenant: {"open": s.held, "guarantee": s.guarantee, "max": s.ceiling, "waiting": s.waiting}
            for tenant, s in sorted(standings.items())
        }
    return row


def host_rows(snapshot: Snapshot) -> list[dict[str, object]]:
    """Every host with a limit of its own or an open connection, busiest first."""
    rows = [host_row(snapshot, key) for key in snapshot.listed_hosts()]
    rows.sort(key=lambda r: (-max(r["open"], r.get("fleet_open", 0)), r["host"]))  # type: ignore[call-overload]  # rows hold ints there
    return rows
