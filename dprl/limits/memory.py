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
from collections.abc import Iterable, Sequence

import gevent

from ..errors import LimitExceeded, RateExceeded
from ..stats import ProxyStats
from .hosts import SHARED, HostKey, HostLimits, SharedCap
from .limiter import Admission, Limiter, Slot, count_down
from .rates import Rate, RateBook, rates_text
from .waiting import Watch


class MemoryLimiter(Limiter):
    def __init__(self, limits: HostLimits, stats: ProxyStats | None = None) -> None:
        super().__init__(limits, stats)
        self._counts: dict[HostKey, int] = {}
        self._shared: dict[str, int] = {}  # connections per shared cap
        self.rate_book = RateBook()  # each rated host's theoretical arrival time (rates.py)
        self._rate_timers: dict[str, object] = {}  # line -> the hub timer of its next token
        self._rate_wait = 0.0  # of the last Admission.RATE: read in the same step, before any yield

    def acquire(self, key: HostKey, watch: Watch | None = None) -> Slot:
        limit, cap, line, _rate, rates = self.limits.policy_for(key)
        verdict = Admission.OTHERS_FIRST  # others of this process wait already: behind them
        if line not in self.waiting.hosts:
            verdict = self._try_take(key, limit, cap, 0)
            if verdict == Admission.ADMITTED:
                return self._slot(key, cap.name if cap is not None else "")
        if not self.waiting.policy.timeout:
            if verdict == Admission.RATE:  # the verdict of this step: the caps had room
                raise RateExceeded(key, rates_text(rates), self._rate_wait)
            raise self._refusal(key, limit, cap)
        self._refuse_a_useless_wait(key, line, limit)
        return self._wait(key, line, limit, watch)

    # the counts: what MachineLimiter keeps in shared memory instead --------------------
    def _try_take(self, key: HostKey, limit: int, cap: SharedCap | None, since: int) -> Admission:
        """Count one slot of ``key`` (and of its shared cap) if they have room: Admission.ADMITTED,
        or why not. ``since``: when the asking connection arrived (ns; 0 = now)."""
        if limit and self._counts.get(key, 0) >= limit:
            return Admission.HOST_FULL
        if cap is not None and self._shared.get(cap.name, 0) >= cap.limit:
            return Admission.GROUP_FULL
        rates = self.limits.rates_for(key)
        if rates:  # checked after the caps: a refusal by a cap takes no token
            wait = self._take_tokens(rates)
            if wait:
                self._rate_wait = wait
                return Admission.RATE
        self._counts[key] = self._counts.get(key, 0) + 1
        if cap is not None:
            self._shared[cap.name] = self._shared.get(cap.name, 0) + 1
        return Admission.ADMITTED

    def _uncount(self, key: HostKey, group: str) -> None:
        count_down(self._counts, key)
        if group:
            count_down(self._shared, group)

    def _line_changed(self, line: str) -> None:
        """The waiters of ``line`` in this process changed (one came, left or was admitted)."""

    # ------------------------------------------------------------------------------------
    def _refusal(self, key: HostKey, limit: int, cap: SharedCap | None) -> LimitExceeded:
        host_full = limit and self.fleet_count(key) >= limit
        if cap is not None and self.shared_count(cap.name) >= cap.limit and not host_full:
            return LimitExceeded(key, cap.limit, shared=cap.name)
        return LimitExceeded(key, limit)

    # the rate: what MachineLimiter keeps in shared memory instead ---------------------
    def _take_tokens(self, rates: Sequence[tuple[str, Rate]]) -> float:
        """A token of each rate now: 0.0, or the seconds until all have one (nothing taken)."""
        return self.rate_book.take(rates, time.monotonic())

    def _token_eta(self, key: HostKey, rate: Rate, ahead: int) -> float:
        """Seconds until the token after ``ahead`` others' (0: now)."""
        return self.rate_book.eta(key, rate, time.monotonic(), ahead)

    def pace(self, key: HostKey, watch: Watch | None = None) -> None:
        rates = self.limits.rates_for(key)
        if not rates:
            return
        started = time.monotonic()
        deadline = started + self.waiting.policy.timeout
        while wait := self._take_tokens(rates):
            if time.monotonic() + wait > deadline:
                raise RateExceeded(key, rates_text(rates), wait)
            gevent.sleep(wait)  # a timer for the token's moment
        if time.monotonic() > started + 0.001:
            self.stats.queue_waited(time.monotonic() - started)  # a rate wait, as a waiter's

    def _refuse_a_useless_wait(self, key: HostKey, line: str, limit: int) -> None:
        """RateExceeded at once when this connection's token (after the waiters of its host
        ahead of it) lies beyond --queue-timeout: waiting could only end in a refusal."""
        rate = self.limits.rate_for(key)
        if rate is None:
            return
        ahead = sum(1 for waiter in self.waiting.hosts.get(line, ()) if waiter.key == key)
        eta = self._token_eta(key, rate, ahead)
        timeout = self.waiting.policy.timeout
        if eta > timeout:
            raise RateExceeded(
                key, str(rate), eta, f"its token comes in {eta:.2f}s, after --queue-timeout {timeout:g}s"
            )

    def _wake_at_token(self, line: str, key: HostKey) -> None:
        """A hub timer for the moment the next token of ``key`` is due (not a poll): the
        line's waiters are handed slots then."""
        if line in self._rate_timers:
            return
        timer = gevent.get_hub().loop.timer(self._rate_wait, ref=False)  # from the refusal just made
        self._rate_timers[line] = timer
        timer.start(self._token_due, line)

    def _token_due(self, line: str) -> None:
        timer = self._rate_timers.pop(line, None)
        if timer is not None:
            timer.close()  # type: ignore[attr-defined]  # a gevent loop timer
        if line in self.waiting.hosts:
            self._hand_over(line)
            self._line_changed(line)

    def _slot(self, key: HostKey, group: str) -> Slot:
        if group:
            return Slot(key, functools.partial(self._release_shared, group))
        return Slot(key, self._release)

    def _wait(self, key: HostKey, line: str, limit: int, watch: Watch | None) -> Slot:
        waiter = self.waiting.enter(key, limit, line)
        deadline = waiter.arrived + self.waiting.policy.timeout
        self._line_changed(line)
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
            self._line_changed(line)
            self.stats.queue_waited(time.monotonic() - waiter.arrived)
        return self._slot(key, waiter.group)

    def _hand_over(self, line: str) -> None:
        """Admit the waiters of ``line`` that fit, oldest first (after a release, a raised
        limit, a waiter that left). Counted here, in the same step as the release."""
        for waiter in self.waiting.hosts.get(line, ()):
            if waiter.admitted:
                continue
            cap = self.limits.shared_cap_for(waiter.key)
            verdict = self._try_take(waiter.key, self.limits.limit_for(waiter.key), cap, waiter.arrived_ns)
            if verdict == Admission.ADMITTED:
                waiter.group = cap.name if cap is not None else ""
                waiter.admitted = True
                waiter.event.set()
                continue
            if verdict == Admission.RATE:
                self._wake_at_token(line, waiter.key)
            if verdict not in (Admission.HOST_FULL, Admission.RATE) or line == waiter.key:
                break  # nobody behind it fits either (a shared line's other hosts may)

    def _release(self, key: HostKey) -> None:
        self._give_back(key, "")

    def _release_shared(self, group: str, key: HostKey) -> None:
        self._give_back(key, group)

    def _give_back(self, key: HostKey, group: str) -> None:
        self._uncount(key, group)
        line = SHARED + group if group else key
        if line in self.waiting.hosts:  # in the same step: no newcomer can take the slot first
            self._hand_over(line)
            self._line_changed(line)

    def next_tokens(self, keys: Iterable[HostKey] = ()) -> dict[HostKey, float]:
        return self.rate_book.pending(self.limits.rate_for, time.monotonic())

    def shared_count(self, name: str) -> int:
        return self._shared.get(name, 0)

    def fleet_count(self, key: HostKey) -> int:
        return self._counts.get(key, 0)

    def process_counts(self) -> dict[HostKey, int]:
        return dict(self._counts)

    def shared_counts(self) -> dict[str, int]:
        return dict(self._shared)

    @property
    def mode(self) -> str:
        return "local"
