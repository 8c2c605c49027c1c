"""In-memory limiter: one process, counters in a dict.

All acquires and releases run in the one hub thread that serves the proxy, and neither
yields to another greenlet (except a waiter, while it waits), so no lock is needed; other
threads only read counts. A slot given back while connections wait is handed straight to
the oldest of them in the same step (no greenlet runs in between), so no newcomer can take
it first; a lowered limit is respected (nobody is handed a slot above it).
"""

from __future__ import annotations

import time

from ..errors import LimitExceeded
from ..stats import ProxyStats
from .hosts import HostKey, HostLimits
from .limiter import Limiter, Slot, count_down
from .waiting import Watch


class MemoryLimiter(Limiter):
    def __init__(self, limits: HostLimits, stats: ProxyStats | None = None) -> None:
        super().__init__(limits, stats)
        self._counts: dict[HostKey, int] = {}

    def acquire(self, key: HostKey, watch: Watch | None = None) -> Slot:
        current = self._counts.get(key, 0)
        limit = self.limits.limit_for(key)
        if limit and (current >= limit or key in self.waiting.hosts):
            if not self.waiting.policy.timeout:
                raise LimitExceeded(key, limit)
            return self._wait(key, limit, watch)
        self._counts[key] = current + 1
        return Slot(key, self._release)

    def _wait(self, key: HostKey, limit: int, watch: Watch | None) -> Slot:
        waiter = self.waiting.enter(key, limit)
        deadline = waiter.arrived + self.waiting.policy.timeout
        try:
            self._hand_over(key)  # a raised limit may have room already
            if watch is None:
                while not waiter.admitted:
                    self.waiting.wait(waiter, limit, deadline, None)
            else:
                with watch() as gone:
                    while not waiter.admitted:
                        self.waiting.wait(waiter, limit, deadline, gone)
        except BaseException:
            if waiter.admitted:  # handed a slot as it gave up: pass the slot on
                self.waiting.leave(waiter)
                self._release(key)
            raise
        finally:
            self.waiting.leave(waiter)
            self.stats.queue_waited(time.monotonic() - waiter.arrived)
        return Slot(key, self._release)

    def _hand_over(self, key: HostKey) -> None:
        """Admit waiters while ``key`` has room (its limit was raised, or a waiter left)."""
        waiters = self.waiting.hosts.get(key)
        limit = self.limits.limit_for(key)
        for waiter in waiters or ():
            if limit and self._counts.get(key, 0) >= limit:
                return
            if not waiter.admitted:
                waiter.admitted = True
                self._counts[key] = self._counts.get(key, 0) + 1
                waiter.event.set()

    def _release(self, key: HostKey) -> None:
        count_down(self._counts, key)
        if key in self.waiting.hosts:  # in the same step: no newcomer can take the slot first
            self._hand_over(key)

    def fleet_count(self, key: HostKey) -> int:
        return self._counts.get(key, 0)

    def process_counts(self) -> dict[HostKey, int]:
        return dict(self._counts)

    @property
    def mode(self) -> str:
        return "local"
