"""In-memory limiter: one process, counters in a dict.

All acquires and releases run in the one hub thread that serves the proxy, and neither
yields to another greenlet (except a waiter, while it waits), so no lock is needed; other
threads only read counts. A slot given back while connections wait is handed straight to
the oldest of them in the same step (no greenlet runs in between), so no newcomer can take
it first; a lowered limit is respected (nobody is handed a slot above it).
"""

from __future__ import annotations

import functools
import time

from ..errors import LimitExceeded
from ..stats import ProxyStats
from .hosts import SHARED, HostKey, HostLimits, SharedCap
from .limiter import Limiter, Slot, count_down
from .waiting import Watch


class MemoryLimiter(Limiter):
    def __init__(self, limits: HostLimits, stats: ProxyStats | None = None) -> None:
        super().__init__(limits, stats)
        self._counts: dict[HostKey, int] = {}
        self._shared: dict[str, int] = {}  # connections per shared cap

    def acquire(self, key: HostKey, watch: Watch | None = None) -> Slot:
        limit = self.limits.limit_for(key)
        cap = self.limits.shared_cap_for(key)
        line = key if cap is None else SHARED + cap.name
        if self._full(key, limit, cap) or line in self.waiting.hosts:
            if not self.waiting.policy.timeout:
                raise self._refusal(key, limit, cap)
            return self._wait(key, line, limit, watch)
        return self._take(key, cap)

    def _full(self, key: HostKey, limit: int, cap: SharedCap | None) -> bool:
        if limit and self._counts.get(key, 0) >= limit:
            return True
        return cap is not None and self._shared.get(cap.name, 0) >= cap.limit

    def _refusal(self, key: HostKey, limit: int, cap: SharedCap | None) -> LimitExceeded:
        if (
            cap is not None
            and self._shared.get(cap.name, 0) >= cap.limit
            and not (limit and self._counts.get(key, 0) >= limit)
        ):
            return LimitExceeded(key, cap.limit, shared=cap.name)
        return LimitExceeded(key, limit)

    def _take(self, key: HostKey, cap: SharedCap | None) -> Slot:
        self._counts[key] = self._counts.get(key, 0) + 1
        if cap is None:
            return Slot(key, self._release)
        self._shared[cap.name] = self._shared.get(cap.name, 0) + 1
        return Slot(key, functools.partial(self._release_shared, cap.name))

    def _wait(self, key: HostKey, line: str, limit: int, watch: Watch | None) -> Slot:
        waiter = self.waiting.enter(key, limit, line)
        deadline = waiter.arrived + self.waiting.policy.timeout
        try:
            self._hand_over(line)  # a raised limit may have room already
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
                self._give_back(key, waiter.group)
            raise
        finally:
            self.waiting.leave(waiter)
            self.stats.queue_waited(time.monotonic() - waiter.arrived)
        if waiter.group:
            return Slot(key, functools.partial(self._release_shared, waiter.group))
        return Slot(key, self._release)

    def _hand_over(self, line: str) -> None:
        """Admit the waiters of ``line`` that fit, oldest first (after a release, a raised
        limit, a waiter that left). Counted here, in the same step as the release."""
        for waiter in self.waiting.hosts.get(line, ()):
            if waiter.admitted:
                continue
            cap = self.limits.shared_cap_for(waiter.key)
            if not self._full(waiter.key, self.limits.limit_for(waiter.key), cap):
                self._take(waiter.key, cap)
                waiter.group = cap.name if cap is not None else ""
                waiter.admitted = True
                waiter.event.set()

    def _release(self, key: HostKey) -> None:
        self._give_back(key, "")

    def _release_shared(self, group: str, key: HostKey) -> None:
        self._give_back(key, group)

    def _give_back(self, key: HostKey, group: str) -> None:
        count_down(self._counts, key)
        if group:
            count_down(self._shared, group)  # type: ignore[arg-type]
        line = SHARED + group if group else key
        if line in self.waiting.hosts:  # in the same step: no newcomer can take the slot first
            self._hand_over(line)

    def fleet_count(self, key: HostKey) -> int:
        return self._counts.get(key, 0)

    def process_counts(self) -> dict[HostKey, int]:
        return dict(self._counts)

    def shared_counts(self) -> dict[str, int]:
        return dict(self._shared)

    @property
    def mode(self) -> str:
        return "local"
