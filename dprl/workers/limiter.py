"""The limiter of a ``--workers`` worker in local mode: one cap for the whole machine.

The rules are the in-memory limiter's; only the counts live in the machine's slot table
(``slot_table.py``), shared with the other workers, and this worker publishes there when
its oldest waiter on each line arrived. A worker that frees a slot, or whose oldest waiter
leaves, tells the workers with waiters on that line with one datagram to their wake socket
(a Unix socket in the abstract namespace: nothing on disk to clean up); they hand the slot
to their oldest waiter if the table says it is theirs. A lost datagram costs at most one
safety poll (``POLL``).

With tenant shares, each tenant's count at a host is a line of the table too, where this
worker also publishes its oldest waiter of that tenant: the table weighs them in the fair
order, so the shares hold for the whole machine.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterable, Sequence

import gevent
import gevent.socket

from ..errors import LimiterUnavailable
from ..limits.hosts import SHARED, HostKey, HostLimits, SharedCap
from ..limits.limiter import Admission, Slot
from ..limits.memory import MemoryLimiter
from ..limits.rates import Rate
from ..limits.tenants import TENANT, ceiling, split_tenant_key, tenant_key
from ..limits.waiting import Waiter, Watch
from ..stats import ProxyStats
from .seat import Seat
from .slot_table import SlotTable, TableFull, TenantLine, TenantRules

POLL = 0.1  # seconds between re-checks of the lines this worker waits on


def wake_address(prefix: str, index: int) -> bytes:
    """Worker ``index``'s wake socket: a name in the abstract namespace (a leading NUL)."""
    return f"\0{prefix}-w{index}".encode()


def wake_all(prefix: str, workers: int) -> None:
    """Every worker re-checks every line it waits on (a worker's slots were given back)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.setblocking(False)
        for index in range(workers):
            with contextlib.suppress(OSError):
                sender.sendto(b"*", wake_address(prefix, index))


class MachineLimiter(MemoryLimiter):
    """A worker's limiter over the slot table its ``seat`` names (its column, the workers'
    wake sockets)."""

    def __init__(self, limits: HostLimits, seat: Seat, stats: ProxyStats | None = None) -> None:
        super().__init__(limits, stats)
        self.wake_prefix = seat.wake_prefix
        self.table = SlotTable(seat.table_fd, seat.index)
        self.table.forget(seat.index)  # a column left by a predecessor the supervisor could not clear
        self._heads: dict[str, int] = {}  # line -> arrival (ns) of our oldest waiter, as published
        self._tenant_heads: dict[str, dict[str, int]] = {}  # line -> tenant line -> our oldest waiter
        self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sender.setblocking(False)
        self._inbox: gevent.socket.socket | None = None
        self._listener: gevent.Greenlet | None = None

    # the counts ------------------------------------------------------------------------
    def acquire(self, key: HostKey, watch: Watch | None = None, tenant: str = "") -> Slot:
        try:
            return super().acquire(key, watch, tenant)
        except TableFull as exc:
            raise LimiterUnavailable(str(exc)) from None

    def _try_take(self, key: HostKey, limit: int, cap: SharedCap | None, since: int, tenant: str = "") -> Admission:
        rules = None
        if tenant:
            rates = self._rates_as(key, tenant)
            rules = self._tenant_rules(key, limit, tenant)
        else:
            rates = self.limits.rates_for(key)
        group, group_limit = (SHARED + cap.name, cap.limit) if cap is not None else ("", 0)
        verdict = self.table.take(key, limit, group, group_limit, since, rates, rules)
        if verdict == Admission.RATE:
            self._rate_wait = self.table.rate_wait
        return verdict

    def _tenant_rules(self, key: HostKey, limit: int, tenant: str) -> TenantRules:
        """The table's view of the tenants at ``key``: the caller's first."""
        lines = []
        for name in self.tenants.names:
            share = self.tenants.share(name)
            lines.append(TenantLine(tenant_key(name, key), share.weight, ceiling(limit, share)))
        mine = next(line for line in lines if line.line == tenant_key(tenant, key))
        return TenantRules(mine, tuple(line for line in lines if line is not mine))

    def tenant_counts(self, key: HostKey) -> dict[str, int]:
        """The machine's counts (every worker's), from the table."""
        names = self.tenants.names
        held = self.table.totals_of([tenant_key(name, key) for name in names])
        return {name: n for name, n in zip(names, held, strict=True) if n}

    def tenant_hosts(self) -> Iterable[HostKey]:
        return {split_tenant_key(line)[1] for line in self.table.totals() if line.startswith(TENANT)}

    def _rate_busy(self, name: str, now: float) -> bool:
        try:
            return self.table.rate_busy(name)
        except TableFull:
            return True  # its bucket cannot be told apart: counted as active (a smaller part)

    def _take_tokens(self, rates: Sequence[tuple[str, Rate]]) -> float:
        try:
            return self.table.pace(rates)
        except TableFull as exc:
            raise LimiterUnavailable(str(exc)) from None

    def _token_eta(self, key: HostKey, rate: Rate, ahead: int) -> float:
        return self.table.eta(key, rate, ahead)

    def next_tokens(self, keys: Iterable[HostKey] = ()) -> dict[HostKey, float]:
        """Read from the machine's table for the hosts shown (the table keeps no names)."""
        out = {}
        for key in keys:
            rate = self.limits.rate_for(key)
            if rate is not None:
                with contextlib.suppress(TableFull):
                    out[key] = self.table.eta(key, rate, 0)
        return out

    def _uncount(self, key: HostKey, group: str, tenant: str = "") -> None:
        shared = SHARED + group if group else ""
        self._wake(self.table.give_back(key, shared, tenant_key(tenant, key) if tenant else ""), shared or key)

    def _line_changed(self, line: str) -> None:
        waiters = self.waiting.hosts.get(line, ())
        oldest = next((w for w in waiters if not w.admitted), None)
        since = oldest.arrived_ns if oldest is not None else 0
        published = self._heads.get(line, 0)
        later = False  # ours went or is younger: another worker's waiter may come first now
        others: list[int] | None = None
        if since != published:
            try:
                others = self.table.set_head(line, since)
            except TableFull:  # not published: other workers' waiters may go first meanwhile
                return
            if since:
                self._heads[line] = since
            else:
                self._heads.pop(line, None)
            later = not since or since > published
        if self.tenants.enabled and self._tenant_heads_changed(line, waiters):
            later = True  # one of ours went or is younger: the fair order changed
        if later:
            self._wake(others if others is not None else self.table.waiting_workers(line), line)

    def _tenant_heads_changed(self, line: str, waiters: Iterable[Waiter]) -> bool:
        """Publish this worker's oldest waiter of each tenant on ``line``; True if one went
        or is younger (another worker's waiter may come first in the fair order now)."""
        oldest: dict[str, int] = {}
        for waiter in waiters:
            if waiter.tenant and not waiter.admitted:
                oldest.setdefault(tenant_key(waiter.tenant, waiter.key), waiter.arrived_ns)
        published = self._tenant_heads.get(line, {})
        if oldest == published:
            return False
        later = False
        for tenant_line in {*published, *oldest}:
            since, before = oldest.get(tenant_line, 0), published.get(tenant_line, 0)
            if since != before:
                with contextlib.suppress(TableFull):  # not published: its waiters may go later
                    self.table.set_head(tenant_line, since)
                later = later or not since or since > before
        if oldest:
            self._tenant_heads[line] = oldest
        else:
            self._tenant_heads.pop(line, None)
        return later

    def _hand_over(self, line: str) -> None:
        with contextlib.suppress(TableFull):  # no room to note a new line: the waiters time out
            super()._hand_over(line)

    def _wake(self, workers: list[int], line: str) -> None:
        for index in workers:
            with contextlib.suppress(OSError):  # restarting, or its inbox full: its poll will see
                self._sender.sendto(line.encode(), wake_address(self.wake_prefix, index))

    def _recheck(self, lines: list[str]) -> None:
        for line in lines:
            if line in self.waiting.hosts:
                self._hand_over(line)
                self._line_changed(line)

    # reading ---------------------------------------------------------------------------
    def fleet_count(self, key: HostKey) -> int:
        return self.table.total(key)

    def shared_count(self, name: str) -> int:
        return self.table.total(SHARED + name)

    def process_counts(self) -> dict[HostKey, int]:
        return {k: n for k, n in self.table.totals(self.table.index).items() if not k.startswith((SHARED, TENANT))}

    def shared_counts(self) -> dict[str, int]:
        mine = self.table.totals(self.table.index)
        return {k[len(SHARED) :]: n for k, n in mine.items() if k.startswith(SHARED)}

    # lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        inbox = gevent.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        inbox.bind(wake_address(self.wake_prefix, self.table.index))
        inbox.settimeout(POLL)
        self._inbox = inbox
        self._listener = gevent.spawn(self._listen, inbox)

    def _listen(self, inbox: gevent.socket.socket) -> None:
        while True:
            try:
                line = inbox.recv(1024).decode()
            except TimeoutError:
                line = "*"
            try:
                self._recheck(list(self.waiting.hosts) if line == "*" else [line])
            except Exception:  # a bug: reported, and the wake-ups go on
                logging.getLogger("dprl").exception("re-checking the waiters of %s", line)

    def close(self) -> None:
        if self._listener is not None:
            self._listener.kill()
        if self._inbox is not None:
            self._inbox.close()
        self._sender.close()
        self.table.forget(self.table.index)  # normally nothing left: every path released
        self.table.close()

    def describe(self) -> str:
        return f"workers={self.table.workers} slot-table=shared-memory"
