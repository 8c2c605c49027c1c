"""In-memory limiter: one process, counters in a dict.

All acquires and releases run in the one hub thread that serves the proxy, and neither
yields to another greenlet, so no lock is needed; other threads only read counts.
"""

from __future__ import annotations

from ..errors import LimitExceeded
from ..stats import ProxyStats
from .hosts import HostKey, HostLimits
from .limiter import Limiter, Slot, count_down


class MemoryLimiter(Limiter):
    def __init__(self, limits: HostLimits, stats: ProxyStats | None = None) -> None:
        super().__init__(limits, stats)
        self._counts: dict[HostKey, int] = {}

    def acquire(self, key: HostKey) -> Slot:
        current = self._counts.get(key, 0)
        limit = self.limits.limit_for(key)
        if limit and current >= limit:
            raise LimitExceeded(key, limit)
        self._counts[key] = current + 1
        return Slot(key, self._release)

    def _release(self, key: HostKey) -> None:
        count_down(self._counts, key)

    def fleet_count(self, key: HostKey) -> int:
        return self._counts.get(key, 0)

    def process_counts(self) -> dict[HostKey, int]:
        return dict(self._counts)

    @property
    def mode(self) -> str:
        return "local"
