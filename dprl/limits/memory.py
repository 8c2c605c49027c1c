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

from ..errors import LimitExceeded, QueueTimeout, RateExceeded, TenantShareExceeded
from ..stats import ProxyStats
from .hosts import SHARED, HostKey, HostLimits, SharedCap
from .limiter import Admission, Limiter, Slot, count_down
from .rates import Rate, RateBook, rates_text
from .tenants import Standing, eligible, place, tenant_key
from .waiting import Waiter, Watch


class MemoryLimiter(Limiter):
    def __init__(self, limits: HostLimits, stats: ProxyStats | None = None) -> None:
        super().__init__(limits, stats)
        self._counts: dict[HostKey, int] = {}
        self._shared: dict[str, int] = {}  # connections per shared cap
        self.rate_book = RateBook()  # each rated host's theoretical arrival time (rates.py)
        self._rate_timers: dict[str, object] = {}  # line -> the hub timer of its next token
        self._rate_wait = 0.0  # of the last Admission.RATE: read in the same step, before any yield
        self._tenant_held: dict[HostKey, dict[str, int]] = {}  # connections per host, per tenant
        self._tenant_ahead = 0  # of the last _tenant_gate: waiters before it in fair order (same step)

    def acquire(self, key: HostKey, watch: Watch | None = None, tenant: str = "") -> Slot:
        limit, cap, line, _rate, rates = self.limits.policy_for(key)
        if limit and self.tenants.enabled:
            return self._acquire_as(self.tenants.tenant(tenant), key, watch, limit, cap, line)
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

    def _acquire_as(
        self, tenant: str, key: HostKey, watch: Watch | None, limit: int, cap: SharedCap | None, line: str
    ) -> Slot:
        """``acquire`` for a host whose cap tenants share: the fair order decides who is next."""
        self._tenant_ahead = 0
        verdict = self._tenant_gate(key, line, limit, tenant)
        if verdict == Admission.ADMITTED:
            verdict = self._try_take(key, limit, cap, 0, tenant)
            if verdict == Admission.ADMITTED:
                return self._slot(key, cap.name if cap is not None else "", tenant)
        if not self.waiting.policy.timeout:
            if verdict == Admission.RATE:
                raise RateExceeded(key, rates_text(self._rates_as(key, tenant)), self._rate_wait)
            if verdict == Admission.TENANT_SHARE:
                raise self._share_refusal(key, line, limit, tenant)
            raise self._refusal(key, limit, cap)
        if verdict in (Admission.TENANT_SHARE, Admission.HOST_FULL) and self._tenant_ahead:
            mine = self.standings(key, line, limit, tenant)[tenant]
            if mine.guarantee <= mine.held < mine.ceiling:  # behind tenants below their guarantee
                why = self._hopeless_wait(key, tenant, self._tenant_ahead, self.fleet_count(key), limit)
                if why:
                    raise TenantShareExceeded(key, limit, tenant, why)
        self._refuse_a_useless_wait(key, line, limit)
        return self._wait(key, line, limit, watch, tenant)

    def acquire_parent(self, key: HostKey, limit: int) -> Slot:
        if self._try_take(key, limit, None, 0) != Admission.ADMITTED:
            raise LimitExceeded(key, limit)
        return self._slot(key, "")

    # tenants ---------------------------------------------------------------------------
    def tenant_counts(self, key: HostKey) -> dict[str, int]:
        return dict(self._tenant_held.get(key, {}))

    def tenant_hosts(self) -> Iterable[HostKey]:
        return list(self._tenant_held)

    def _tenant_gate(self, key: HostKey, line: str, limit: int, tenant: str) -> Admission:
        """Whether the tenants' rules let an arrival of ``tenant`` take a slot of ``key`` now:
        under its max, and fewer waiters before it in fair order than free slots."""
        standings = self.standings(key, line, limit, tenant)
        before: dict[str, int] = {}
        ahead = 0
        mine = standings[tenant]
        queued = [w for w in self.waiting.hosts.get(line, ()) if w.key == key and not w.admitted]
        k = sum(1 for w in queued if w.tenant == tenant)  # its own waiters come first
        if not eligible(mine, k):
            return Admission.TENANT_SHARE
        my_place = place(mine, k)
        for other in queued:
            j = before[other.tenant] = before.get(other.tenant, -1) + 1
            standing = standings[other.tenant]
            if eligible(standing, j) and place(standing, j) <= my_place:
                ahead += 1
        self._tenant_ahead = ahead  # read when it must wait (_hopeless_wait)
        free = limit - self.fleet_count(key)
        if free <= 0:
            return Admission.HOST_FULL
        return Admission.ADMITTED if ahead < free else Admission.TENANT_SHARE

    def _fair_order(self, line: str) -> list[Waiter]:
        """The line's waiters not handed a slot yet whose tenant is under its max, in fair
        order (tenants.py): lowest place first, then arrival."""
        queued = [w for w in self.waiting.hosts.get(line, ()) if not w.admitted]
        seen: dict[tuple[HostKey, str], int] = {}
        standings: dict[HostKey, dict[str, Standing]] = {}
        ranked = []
        for waiter in queued:
            rank = 0
            if waiter.tenant:
                if waiter.key not in standings:
                    standings[waiter.key] = self.standings(waiter.key, line, self.limits.limit_for(waiter.key))
                k = seen[(waiter.key, waiter.tenant)] = seen.get((waiter.key, waiter.tenant), -1) + 1
                standing = standings[waiter.key][waiter.tenant]
                if not eligible(standing, k):
                    continue  # its tenant is at its max: others may go
                rank = place(standing, k)
            ranked.append((rank, waiter.arrived, waiter))
        ranked.sort(key=lambda item: (item[0], item[1]))
        return [waiter for _, _, waiter in ranked]

    def _share_refusal(self, key: HostKey, line: str, limit: int, tenant: str) -> TenantShareExceeded:
        mine = self.standings(key, line, limit, tenant)[tenant]
        if mine.held >= mine.ceiling:
            detail = f"tenant {tenant} holds {mine.held}, its max"
        else:
            owed = f"guaranteed {mine.guarantee}"
            detail = f"tenant {tenant} holds {mine.held} ({owed}); the free slots go to tenants below theirs"
        return TenantShareExceeded(key, limit, tenant, detail)

    def _rates_as(self, key: HostKey, tenant: str) -> tuple[tuple[str, Rate], ...]:
        """The rates an admission of ``tenant`` takes a token of: the host's (and its shared
        cap's), and the tenant's part of the host's own rate among the active tenants."""
        policy = self.limits.policy_for(key)
        if not tenant or policy.rate is None:
            return policy.rates
        now = time.monotonic()
        held = self.tenant_counts(key)
        waiting = self.waiting.tenant_counts(key, policy.line)
        active = [
            t for t in self.tenants.names if held.get(t) or waiting.get(t) or self._rate_busy(tenant_key(t, key), now)
        ]
        return (*policy.rates, (tenant_key(tenant, key), self.tenants.rate_of(policy.rate, tenant, active)))

    # the counts: what MachineLimiter keeps in shared memory instead --------------------
    def _try_take(self, key: HostKey, limit: int, cap: SharedCap | None, since: int, tenant: str = "") -> Admission:
        """Count one slot of ``key`` (and of its shared cap, and of its tenant) if they have
        room: Admission.ADMITTED, or why not. ``since``: when the asking connection arrived
        (ns; 0 = now). The tenants' own rules are ``_tenant_gate``'s."""
        if limit and self._counts.get(key, 0) >= limit:
            return Admission.HOST_FULL
        if cap is not None and self._shared.get(cap.name, 0) >= cap.limit:
            return Admission.GROUP_FULL
        rates = self._rates_as(key, tenant) if tenant else self.limits.rates_for(key)
        if rates:  # checked after the caps: a refusal by a cap takes no token
            wait = self._take_tokens(rates)
            if wait:
                self._rate_wait = wait
                return Admission.RATE
        self._counts[key] = self._counts.get(key, 0) + 1
        if cap is not None:
            self._shared[cap.name] = self._shared.get(cap.name, 0) + 1
        if tenant:
            held = self._tenant_held.setdefault(key, {})
            held[tenant] = held.get(tenant, 0) + 1
        return Admission.ADMITTED

    def _uncount(self, key: HostKey, group: str, tenant: str = "") -> None:
        count_down(self._counts, key)
        if group:
            count_down(self._shared, group)
        if tenant:
            held = self._tenant_held[key]
            if count_down(held, tenant) and not held:
                del self._tenant_held[key]

    def _line_changed(self, line: str) -> None:
        """The waiters of ``line`` in this process changed (one came, left or was admitted)."""

    # ------------------------------------------------------------------------------------
    def _refusal(self, key: HostKey, limit: int, cap: SharedCap | None) -> LimitExceeded:
        host_full = limit and self.fleet_count(key) >= limit
        if cap is not None and self.shared_count(cap.name) >= cap.limit and not host_full:
            return LimitExceeded(key, cap.limit, shared=cap.name)
        return LimitExceeded(key, limit)

    # the rate: what MachineLimiter keeps in shared memory instead ---------------------
    def _rate_busy(self, name: str, now: float) -> bool:
        """Whether the rate ``name`` took a token lately (a tenant's part: it is active)."""
        return self.rate_book.busy(name, now)

    def _take_tokens(self, rates: Sequence[tuple[str, Rate]]) -> float:
        """A token of each rate now: 0.0, or the seconds until all have one (nothing taken)."""
        return self.rate_book.take(rates, time.monotonic())

    def _token_eta(self, key: HostKey, rate: Rate, ahead: int) -> float:
        """Seconds until the token after ``ahead`` others' (0: now)."""
        return self.rate_book.eta(key, rate, time.monotonic(), ahead)

    def pace(self, key: HostKey, watch: Watch | None = None, tenant: str = "") -> None:
        tenanted = tenant and self.tenants.enabled
        rates = self._rates_as(key, self.tenants.tenant(tenant)) if tenanted else self.limits.rates_for(key)
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

    def _slot(self, key: HostKey, group: str, tenant: str = "") -> Slot:
        if tenant:
            return Slot(key, functools.partial(self._release_as, group, tenant, time.monotonic()))
        if group:
            return Slot(key, functools.partial(self._release_shared, group))
        return Slot(key, self._release)

    def _wait(self, key: HostKey, line: str, limit: int, watch: Watch | None, tenant: str = "") -> Slot:
        waiter = self.waiting.enter(key, limit, line, tenant)
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
        except QueueTimeout as exc:
            if tenant and not waiter.admitted:  # held back by the shares? Then that is the reason
                mine = self.standings(key, line, limit, tenant)[tenant]
                if mine.held >= mine.guarantee:
                    raise self._share_refusal(key, line, limit, tenant) from exc
            raise
        except BaseException:
            if waiter.admitted:  # handed a slot as it gave up: pass the slot on
                self.waiting.leave(waiter)
                self._give_back(key, waiter.group, tenant)
            raise
        finally:
            self.waiting.leave(waiter)
            self._line_changed(line)
            self.stats.queue_waited(time.monotonic() - waiter.arrived)
        return self._slot(key, waiter.group, tenant)

    def _hand_over(self, line: str) -> None:
        """Admit the waiters of ``line`` that fit, oldest first (after a release, a raised
        limit, a waiter that left). Counted here, in the same step as the release."""
        if self.tenants.enabled:
            self._hand_over_fairly(line)
            return
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

    def _hand_over_fairly(self, line: str) -> None:
        """``_hand_over`` in fair order (tenants.py): after each admission the order is
        worked out again, as the admitted waiter's tenant stands one slot higher."""
        admitted = True
        while admitted:
            admitted = False
            for waiter in self._fair_order(line):
                limit = self.limits.limit_for(waiter.key)
                tenant = waiter.tenant if limit else ""
                cap = self.limits.shared_cap_for(waiter.key)
                verdict = self._try_take(waiter.key, limit, cap, waiter.arrived_ns, tenant)
                if verdict == Admission.ADMITTED:
                    waiter.group = cap.name if cap is not None else ""
                    waiter.admitted = True
                    waiter.event.set()
                    admitted = True
                    break
                if verdict == Admission.RATE:
                    self._wake_at_token(line, waiter.key)
                    continue  # another tenant's part of the rate may have a token
                if verdict != Admission.HOST_FULL or line == waiter.key:
                    return  # nobody behind it fits either (a shared line's other hosts may)

    def _release(self, key: HostKey) -> None:
        self._give_back(key, "")

    def _release_shared(self, group: str, key: HostKey) -> None:
        self._give_back(key, group)

    def _release_as(self, group: str, tenant: str, admitted: float, key: HostKey) -> None:
        self._closed(tenant, admitted, key)
        self._give_back(key, group, tenant)

    def _give_back(self, key: HostKey, group: str, tenant: str = "") -> None:
        self._uncount(key, group, tenant)
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
