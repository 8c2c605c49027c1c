"""What the proxy counts for operators: per host, per process, and of its Redis traffic.

The hot path only bumps integers here (one dict lookup per upstream connection opened or
refused) and observes two prometheus_client histograms; everything else (which hosts get
a series, the fleet view, JSON and the exposition) is worked out at read time by
``dprl.ops``. Per-host counters live in a table of at most ``max_hosts`` entries, so the
memory does not grow with the number of distinct hosts ever seen: the least recently
active host is folded into ``_other`` (its counts added there for good, so every counter
stays monotonic) when a new one needs room. Hosts with a configured limit are folded
only when no other host is left to fold.
"""

from __future__ import annotations

import bisect
import time
from collections import OrderedDict
from collections.abc import Callable

from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from .errors import Reason

HostKey = str  # as in dprl.limits.hosts (which sits above this module)

OTHER = "_other"  # the host label of folded hosts
NO_HOST = "_none"  # refusals before any destination was known (a malformed request)
REFUSAL_REASONS = tuple(reason.value for reason in Reason)
REDIS_ERROR_KINDS = ("timeout", "connection", "reply", "cluster")
WINDOW = 60  # seconds of "refusals in the last minute"
_STEP = 10  # ... counted in buckets of this many seconds
_BUCKETS = WINDOW // _STEP

DIAL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
REDIS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class Buckets:
    """A Prometheus histogram that costs one bisect and two additions per observation.

    prometheus_client's Histogram takes a lock and walks its buckets on every observe;
    these are bumped only by the hub thread and made cumulative at scrape time.
    """

    __slots__ = ("_created", "bounds", "counts", "documentation", "name", "total")

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one: above every bound (+Inf)
        self.total = 0.0
        self._created = time.time()

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def collect(self) -> list[Metric]:
        cumulative, running = [], 0
        for bound, count in zip((*map(floatToGoString, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            cumulative.append((bound, running))
        family = HistogramMetricFamily(self.name, self.documentation, buckets=cumulative, sum_value=self.total)
        family.add_sample(f"{self.name}_created", {}, self._created)
        return [family]


class HostCounters:
    """Counts of one host (or of every folded host, under ``_other``)."""

    __slots__ = ("_recent", "_step", "opened", "refusals")

    def __init__(self) -> None:
        self.opened = 0
        self.refusals: dict[str, int] = {}
        self._recent = [0] * _BUCKETS  # refusals per 10-second step, a ring
        self._step = 0  # the step _recent was last written in

    def refused(self, reason: str, now: float) -> None:
        self.refusals[reason] = self.refusals.get(reason, 0) + 1
        step = int(now // _STEP)
        if step != self._step:
            for s in range(max(self._step + 1, step - _BUCKETS + 1), step + 1):
                self._recent[s % _BUCKETS] = 0
            self._step = step
        self._recent[step % _BUCKETS] += 1

    def refused_recently(self, now: float) -> int:
        """Refusals in the last minute (to within one 10-second step)."""
        step = int(now // _STEP)
        first = max(step - _BUCKETS + 1, self._step - _BUCKETS + 1)
        return sum(self._recent[s % _BUCKETS] for s in range(first, self._step + 1))

    def add(self, other: HostCounters) -> None:
        self.opened += other.opened
        for reason, n in other.refusals.items():
            self.refusals[reason] = self.refusals.get(reason, 0) + n

    def copy(self) -> HostCounters:
        twin = HostCounters()
        twin.opened, twin.refusals = self.opened, dict(self.refusals)
        twin._recent, twin._step = list(self._recent), self._step
        return twin


class ProxyStats:
    """The counters one proxy process keeps; written in its hub, read by a snapshot there.

    ``pinned`` tells whether a host has a configured limit (those keep their series first).
    """

    def __init__(self, max_hosts: int = 500, pinned: Callable[[HostKey], bool] | None = None) -> None:
        self.max_hosts = max_hosts
        self._pinned = pinned or (lambda key: False)
        self.hosts: OrderedDict[HostKey, HostCounters] = OrderedDict()  # least recently active first
        self.pinned_hosts: OrderedDict[HostKey, HostCounters] = OrderedDict()
        self.other = HostCounters()
        self.folded = 0  # hosts folded into ``other`` so far
        self.tunnel_bytes = [0, 0]  # client -> upstream, upstream -> client
        self.redis_errors: dict[str, int] = dict.fromkeys(REDIS_ERROR_KINDS, 0)
        self.lease_refreshes = 0
        self.tenant_refusals: dict[tuple[str, str], int] = {}  # (tenant, reason) -> refusals
        self.dial_seconds = Buckets(
            "dprl_upstream_connect_seconds",
            "Time to resolve and connect to an upstream (successful dials).",
            DIAL_BUCKETS,
        )
        self.queue_seconds = Buckets(
            "dprl_queue_wait_seconds",
            "Time connections over the cap waited for a slot (admitted or not).",
            QUEUE_BUCKETS,
        )
        self.redis_seconds = Buckets(
            "dprl_redis_request_seconds",
            "Round trip of each admission and release script call to Redis.",
            REDIS_BUCKETS,
        )

    # the hot path ------------------------------------------------------------------------
    def opened(self, key: HostKey, dial_seconds: float) -> None:
        self._entry(key).opened += 1
        self.dial_seconds.observe(dial_seconds)

    def refused(self, key: HostKey | None, reason: str) -> None:
        self._entry(key or NO_HOST).refused(reason, time.monotonic())

    def tenant_refused(self, tenant: str, reason: str) -> None:
        """A refusal of a tenant's connection (tenant names are the configured ones: bounded)."""
        entry = (tenant, str(reason))
        self.tenant_refusals[entry] = self.tenant_refusals.get(entry, 0) + 1

    def tunnelled(self, up: int, down: int) -> None:
        self.tunnel_bytes[0] += up
        self.tunnel_bytes[1] += down

    def redis_request(self, seconds: float) -> None:
        self.redis_seconds.observe(seconds)

    def redis_error(self, kind: str) -> None:
        self.redis_errors[kind] = self.redis_errors.get(kind, 0) + 1

    def queue_waited(self, seconds: float) -> None:
        self.queue_seconds.observe(seconds)

    def lease_refreshed(self) -> None:
        self.lease_refreshes += 1

    # the table ---------------------------------------------------------------------------
    def counters(self, key: HostKey) -> HostCounters | None:
        return self.hosts.get(key) or self.pinned_hosts.get(key)

    def _entry(self, key: HostKey) -> HostCounters:
        table = self.hosts
        entry = table.get(key)
        if entry is not None:
            table.move_to_end(key)
            return entry
        entry = self.pinned_hosts.get(key)
        if entry is not None:
            self.pinned_hosts.move_to_end(key)
            return entry
        if len(table) + len(self.pinned_hosts) >= self.max_hosts:
            self._fold()
        entry = HostCounters()
        (self.pinned_hosts if self._pinned(key) else table)[key] = entry
        return entry

    def _fold(self) -> None:
        """Make room: the least recently active host (an unpinned one if any) goes to ``other``."""
        table = self.hosts if self.hosts else self.pinned_hosts
        if not table:
            return
        _key, entry = table.popitem(last=False)
        self.other.add(entry)
        self.folded += 1
