"""The slot counts of one machine's ``--workers``, in shared memory every worker maps.

One open-addressing hash table (linear probing, backward-shift deletion, so no tombstones
pile up) of fixed size in an anonymous memory file (``memfd_create``: no name in any file
system, gone with the last process that has it open), guarded by ``flock``. Each process
opens its own description of it (``/proc/self/fd/N`` of the descriptor it inherited), so
the locks exclude each other; a lock held by a process that dies is dropped by the
kernel with its descriptors, so a worker killed inside a critical section cannot wedge
the others.

An entry is one waiting line: a host key, a shared cap (``SHARED + name``), or a tenant's
count at a host (``tenant_key``: its own line there, read in the fair order). It holds
the open connections of each worker (one column per worker: the supervisor gives a dead
worker's column back at once) and, per worker, the arrival time of that worker's oldest
waiter on the line (CLOCK_MONOTONIC nanoseconds, one clock for every process of the
machine). Admission leaves room for the other workers' older waiters, so a slot freed
anywhere goes to the oldest waiter of the machine, whichever worker holds it; with tenants,
for the other workers' first waiters of each tenant before it in the fair order
(dprl/limits/tenants.py), under each tenant's count of the whole machine.

No gevent here: the supervisor (plain threads) and the workers (one hub each) both use it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import mmap
import os
import struct
import time
import zlib
from collections.abc import Iterator, Sequence
from typing import NamedTuple

from ..limits.hosts import SHARED
from ..limits.limiter import Admission
from ..limits.rates import Rate, gcra, rescaled
from ..limits.tenants import TENANT, guarantee

MAGIC = b"DPRLTAB1"
_HEADER = struct.Struct("=8sIII")  # magic, capacity, workers, entry size
_HEADER_SIZE = 64
# a host key is at most 253 + ":65535"; a shared cap's line is "shared:" + its name; a
# tenant's "tenant:" + its name (at most 64) + "|" + a host key
KEY_MAX = 338
_HASH = struct.Struct("=IH")  # hash (0 = empty), key length
_KEY_AT = _HASH.size
_COUNTS_AT = _KEY_AT + KEY_MAX  # total, then one count per worker (int32)
_I32 = struct.Struct("=i")
_I64 = struct.Struct("=q")
# Request rates: after the entries, a region of arrival times, one bucket per rated host
# (its own life: a rate outlives every connection). A bucket is the host's 64-bit key hash
# (0 = empty), its TAT and the interval it is in, seconds of CLOCK_MONOTONIC (one clock for
# the machine). A bucket whose TAT has passed says nothing and is free; a host looks in
# RATE_PROBES buckets from its home. Two hosts with one 64-bit hash would share a rate
# (stricter, never looser).
RATE_BUCKETS = 1 << 14
RATE_PROBES = 16
_RATE = struct.Struct("=Qdd")


class TableFull(Exception):
    """More distinct lines in use at once than the table has room for."""


class TenantLine(NamedTuple):
    """One tenant at a host, as ``take`` weighs it."""

    line: str  # its count's entry (tenant_key(name, host))
    weight: float
    ceiling: int  # its max, in slots


class TenantRules(NamedTuple):
    """The tenants dividing a host's cap, for one ``take``: the caller's first."""

    mine: TenantLine
    others: tuple[TenantLine, ...]


class SlotTable:
    """``index`` is this process's column (a worker), or -1 (the supervisor)."""

    def __init__(self, fd: int, index: int = -1) -> None:
        """Map the table behind descriptor ``fd`` (inherited, or this process's own)."""
        self.index = index
        self.shared_fd = -1  # the creator's descriptor, passed on to the workers it starts
        self.rate_wait = 0.0  # of the last take() refused by the rate: seconds until its token
        self._fd = os.open(f"/proc/self/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)  # a description of our own
        try:
            size = os.fstat(self._fd).st_size
            self._map = mmap.mmap(self._fd, size)
        except BaseException:
            os.close(self._fd)
            raise
        magic, self.capacity, self.workers, self.entry_size = _HEADER.unpack_from(self._map, 0)
        if magic != MAGIC:
            raise ValueError(f"descriptor {fd} is not a dprl slot table")
        self._mask = self.capacity - 1
        self._rates_at = _HEADER_SIZE + self.capacity * self.entry_size
        self._heads_at = _align8(_COUNTS_AT + 4 * (1 + self.workers))
        self._heads = struct.Struct(f"={self.workers}q")  # every worker's oldest waiter on a line

    @classmethod
    def create(cls, workers: int, capacity: int = 1 << 16) -> SlotTable:
        """A new zeroed table for ``workers`` columns (``capacity`` a power of two); its
        ``shared_fd`` is what to pass to the workers (``pass_fds``)."""
        assert capacity & (capacity - 1) == 0, capacity
        entry_size = _align8(_align8(_COUNTS_AT + 4 * (1 + workers)) + 8 * workers)
        fd = os.memfd_create("dprl-slots", os.MFD_CLOEXEC)
        try:
            # reserved now: memory that could not be had later would kill a worker with SIGBUS
            os.posix_fallocate(fd, 0, _HEADER_SIZE + capacity * entry_size + RATE_BUCKETS * _RATE.size)
            os.pwrite(fd, _HEADER.pack(MAGIC, capacity, workers, entry_size), 0)
            table = cls(fd)
        except BaseException:
            os.close(fd)
            raise
        table.shared_fd = fd
        return table

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)
        if self.shared_fd >= 0:
            os.close(self.shared_fd)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        _flock(self._fd, _LOCK_EX)
        try:
            yield
        finally:
            _flock(self._fd, _LOCK_UN)

    # admission -------------------------------------------------------------------------
    def take(
        self,
        key: str,
        limit: int,
        group: str = "",
        group_limit: int = 0,
        since: int = 0,
        rates: Sequence[tuple[str, Rate]] = (),
        tenants: TenantRules | None = None,
    ) -> Admission:
        """One slot of ``key`` (and of shared cap line ``group``) for this worker, if the caps,
        the other workers' older waiters and ``rates`` (name, rate) leave room: Admission.ADMITTED, or why
        not (for Admission.RATE, ``rate_wait`` says how long until the token).

        ``since``: when the connection asking arrived (monotonic ns); the waiters of other
        workers on the line who arrived before it go first. ``tenants``: the caller's tenant
        must stay under its ceiling, and the other workers' first waiters of tenants before
        it in the fair order go first instead (their tenant's count is taken too)."""
        _flock(self._fd, _LOCK_EX)
        try:
            host = self._find(key)
            free = limit - self._total(host) if limit else 1 << 30
            if free <= 0:
                return Admission.HOST_FULL
            ahead = -1  # with tenants: the other workers' waiters before this one in fair order
            if tenants is not None:
                ahead = self._tenants_before(tenants, limit, since)
                if ahead < 0:
                    return Admission.TENANT_SHARE  # at its max
                if ahead >= free:
                    return Admission.TENANT_SHARE
            line = host
            if group:
                line = self._find(group)
                group_free = group_limit - self._total(line)
                if group_free <= 0:
                    return Admission.GROUP_FULL
                free = min(free, group_free)
            buckets = []
            if rates:  # after the caps: a refusal by a cap takes no token
                now = time.monotonic()
                for name, rate in rates:
                    at, tat, interval = self._rate_bucket(name, now)
                    tat = rescaled(tat, interval or rate.interval, rate.interval, now)
                    verdict = gcra(rate, tat, now)
                    buckets.append((at, name, verdict, rate.interval))
                    # the tokens there now bound the room too: older waiters of other workers first
                    free = min(free, int((now + rate.tolerance - max(tat, now)) / rate.interval + 1e-9) + 1)
                self.rate_wait = max(verdict.wait for _, _, verdict, _ in buckets)
                if self.rate_wait:
                    return Admission.RATE
            if ahead < 0 and line >= 0:
                ahead = self._others_before(line, since)
            if ahead >= free:
                return Admission.OTHERS_FIRST
            for at, name, verdict, interval in buckets:
                _RATE.pack_into(self._map, at, _key_hash(name), verdict.tat, interval)
            self._add(host if host >= 0 else self._insert(key), 1)
            if group:
                self._add(line if line >= 0 else self._insert(group), 1)
            if tenants is not None:
                entry = self._find(tenants.mine.line)
                self._add(entry if entry >= 0 else self._insert(tenants.mine.line), 1)
            return Admission.ADMITTED
        finally:
            _flock(self._fd, _LOCK_UN)

    def _tenants_before(self, tenants: TenantRules, limit: int, since: int) -> int:
        """The other workers' first waiters of each tenant whose place (held - guarantee,
        tenants.py) comes before the caller's (or ties and arrived first); -1 if the caller's
        tenant is at its max."""
        rows = []  # (tenant, held, the other workers' heads on its line)
        wanting = 0.0
        for tenant in (tenants.mine, *tenants.others):
            entry = self._find(tenant.line)
            held, heads = 0, ()
            if entry >= 0:
                held = self._total(entry)
                every = self._heads.unpack_from(self._map, self._offset(entry) + self._heads_at)
                heads = tuple(h for column, h in enumerate(every) if h and column != self.index)
                if held or any(every) or tenant is tenants.mine:
                    wanting += tenant.weight
            elif tenant is tenants.mine:
                wanting += tenant.weight
            rows.append((tenant, held, heads))
        mine, my_held, _ = rows[0]
        if my_held >= mine.ceiling:
            return -1
        my_place = my_held - guarantee(limit, mine.weight, wanting)
        ahead = 0
        for tenant, held, heads in rows:
            if not heads or held >= tenant.ceiling:
                continue
            place = held - guarantee(limit, tenant.weight, wanting)
            ahead += sum(1 for h in heads if place < my_place or (place == my_place and (not since or h < since)))
        return ahead

    def rate_busy(self, key: str) -> bool:
        """Whether ``key`` took a token lately (its TAT lies ahead: its burst is not full)."""
        with self._locked():
            now = time.monotonic()
            _, tat, _ = self._rate_bucket(key, now)
        return tat > now

    # rates -------------------------------------------------------------------------------
    def pace(self, rates: Sequence[tuple[str, Rate]]) -> float:
        """A token of each of ``rates`` (name, rate) for a request on a connection it holds:
        0.0, or the seconds until all have one (nothing taken)."""
        with self._locked():
            now = time.monotonic()
            taken = []
            for name, rate in rates:
                at, tat, interval = self._rate_bucket(name, now)
                verdict = gcra(rate, rescaled(tat, interval or rate.interval, rate.interval, now), now)
                taken.append((at, name, verdict, rate.interval))
            wait = max(verdict.wait for _, _, verdict, _ in taken)
            if not wait:
                for at, name, verdict, interval in taken:
                    _RATE.pack_into(self._map, at, _key_hash(name), verdict.tat, interval)
            return wait

    def eta(self, key: str, rate: Rate, ahead: int) -> float:
        """Seconds until the token after ``ahead`` others' (0: now); reads only."""
        with self._locked():
            now = time.monotonic()
            _, tat, interval = self._rate_bucket(key, now)
        tat = rescaled(tat, interval or rate.interval, rate.interval, now)
        return max(0.0, max(tat, now) + ahead * rate.interval - rate.tolerance - now)

    def _rate_bucket(self, key: str, now: float) -> tuple[int, float, float]:
        """(offset, TAT, interval) of ``key``'s bucket; a free one (TAT 0) if it has none."""
        wanted = _key_hash(key)
        free = -1
        for probe in range(RATE_PROBES):
            at = self._rates_at + ((wanted + probe) & (RATE_BUCKETS - 1)) * _RATE.size
            found, tat, interval = _RATE.unpack_from(self._map, at)
            if found == wanted:
                return at, tat, interval
            if free < 0 and (not found or tat <= now):
                free = at
        if free < 0:
            raise TableFull(f"more than {RATE_PROBES} hosts owing tokens share buckets (of {RATE_BUCKETS})")
        return free, 0.0, 0.0

    def give_back(self, key: str, group: str = "", tenant_line: str = "") -> list[int]:
        """Return one slot of ``key`` (and ``group``, and a tenant's count at ``key``); the
        workers with waiters on its line."""
        _flock(self._fd, _LOCK_EX)
        try:
            if tenant_line:
                entry = self._find(tenant_line)
                if entry >= 0 and not self._add(entry, -1) and not self._heads_in_use(entry):
                    self._drop(entry)
            host = self._find(key)
            line = host
            if host >= 0 and not self._add(host, -1) and not group and not self._heads_in_use(host):
                self._drop(host)
                return []
            if group:
                line = self._find(group)
                if line >= 0:
                    self._add(line, -1)
            wake = self._waiting_workers(line) if line >= 0 else []
            if group:
                self._drop_if_idle(key)
                self._drop_if_idle(group)
            return wake
        finally:
            _flock(self._fd, _LOCK_UN)

    def set_head(self, line: str, since: int) -> list[int]:
        """This worker's oldest waiter on ``line`` arrived at ``since`` (0: it has none any
        more); the other workers with waiters there (a slot may now be theirs)."""
        with self._locked():
            entry = self._find(line)
            if entry < 0:
                if not since:
                    return []
                entry = self._insert(line)
            _I64.pack_into(self._map, self._head_offset(entry, self.index), since)
            wake = self._waiting_workers(entry)
            if not since:
                self._drop_if_idle(line)
            return wake

    # reading ---------------------------------------------------------------------------
    def waiting_workers(self, line: str) -> list[int]:
        """The workers other than this one with waiters on ``line``."""
        with self._locked():
            return self._waiting_workers(self._find(line))

    def total(self, key: str) -> int:
        with self._locked():
            return self._total(self._find(key))

    def totals_of(self, keys: Sequence[str]) -> list[int]:
        """The machine's counts of ``keys``, read under one lock (every tenant's at a host)."""
        with self._locked():
            return [self._total(self._find(key)) for key in keys]

    def totals(self, column: int | None = None) -> dict[str, int]:
        """Open connections per line: of the machine, or of one worker's ``column``."""
        counts: dict[str, int] = {}
        with self._locked():
            for entry, key in self._entries():
                at = self._counts_offset(entry) + (0 if column is None else 4 * (1 + column))
                count = _I32.unpack_from(self._map, at)[0]
                if count:
                    counts[key] = count
        return counts

    # a worker gone -----------------------------------------------------------------------
    def forget(self, column: int) -> int:
        """Give back every slot of worker ``column`` and drop its waiters' places; how many
        slots it held (the supervisor, when a worker exits; a worker, as it starts)."""
        given = 0
        with self._locked():
            lines = []
            for entry, key in self._entries():
                at = self._counts_offset(entry)
                held = _I32.unpack_from(self._map, at + 4 * (1 + column))[0]
                if held:
                    _I32.pack_into(self._map, at + 4 * (1 + column), 0)
                    _I32.pack_into(self._map, at, _I32.unpack_from(self._map, at)[0] - held)
                    if not key.startswith((SHARED, TENANT)):
                        given += held
                _I64.pack_into(self._map, self._head_offset(entry, column), 0)
                lines.append(key)
            for key in lines:
                self._drop_if_idle(key)
        return given

    # the hash table --------------------------------------------------------------------
    def _offset(self, entry: int) -> int:
        return _HEADER_SIZE + entry * self.entry_size

    def _counts_offset(self, entry: int) -> int:
        return self._offset(entry) + _COUNTS_AT

    def _head_offset(self, entry: int, column: int) -> int:
        return self._offset(entry) + self._heads_at + 8 * column

    def _find(self, key: str) -> int:
        """The entry of ``key``, or -1."""
        data = key.encode()
        wanted = _hash(data)
        mask, size, table = self._mask, self.entry_size, self._map
        entry = wanted & mask
        for _ in range(self.capacity):
            at = _HEADER_SIZE + entry * size
            found, length = _HASH.unpack_from(table, at)
            if not found:
                return -1
            if found == wanted and length == len(data) and table[at + _KEY_AT : at + _KEY_AT + length] == data:
                return entry
            entry = (entry + 1) & mask
        return -1

    def _insert(self, key: str) -> int:
        data = key.encode()
        if len(data) > KEY_MAX:
            raise TableFull(f"line name longer than {KEY_MAX} bytes: {key[:40]}...")
        wanted = _hash(data)
        entry = wanted & self._mask
        for _ in range(self.capacity):
            at = self._offset(entry)
            if not _HASH.unpack_from(self._map, at)[0]:
                _HASH.pack_into(self._map, at, wanted, len(data))
                self._map[at + _KEY_AT : at + _KEY_AT + len(data)] = data
                return entry
            entry = (entry + 1) & self._mask
        raise TableFull(f"more than {self.capacity} hosts with connections or waiters at once")

    def _entries(self) -> Iterator[tuple[int, str]]:
        for entry in range(self.capacity):
            at = self._offset(entry)
            found, length = _HASH.unpack_from(self._map, at)
            if found:
                yield entry, self._map[at + _KEY_AT : at + _KEY_AT + length].decode()

    def _total(self, entry: int) -> int:
        return _I32.unpack_from(self._map, self._counts_offset(entry))[0] if entry >= 0 else 0

    def _add(self, entry: int, delta: int) -> int:
        """Add ``delta`` to the entry's total and this worker's count; the new total."""
        at = _HEADER_SIZE + entry * self.entry_size + _COUNTS_AT
        mine = at + 4 + 4 * self.index
        total = _I32.unpack_from(self._map, at)[0] + delta
        _I32.pack_into(self._map, at, total)
        _I32.pack_into(self._map, mine, _I32.unpack_from(self._map, mine)[0] + delta)
        return total

    def _others_before(self, entry: int, since: int) -> int:
        """Workers other than this one whose oldest waiter on the line came before ``since``."""
        heads = self._heads.unpack_from(self._map, self._offset(entry) + self._heads_at)
        me = self.index
        return sum(1 for column, head in enumerate(heads) if head and column != me and (not since or head < since))

    def _waiting_workers(self, entry: int) -> list[int]:
        """The workers other than this one with waiters on the line."""
        if entry < 0:
            return []
        heads = self._heads.unpack_from(self._map, self._offset(entry) + self._heads_at)
        return [column for column, head in enumerate(heads) if head and column != self.index]

    def _drop_if_idle(self, key: str) -> None:
        """Remove ``key``'s entry once nobody holds or waits on it."""
        entry = self._find(key)
        if entry >= 0 and not self._total(entry) and not self._heads_in_use(entry):
            self._drop(entry)

    def _drop(self, entry: int) -> None:
        """Backward-shift deletion: later entries of the probe run move up into the hole."""
        size, mask = self.entry_size, self._mask
        hole = entry
        probe = entry
        for _ in range(self.capacity - 1):  # to the end of the run (a full table: all the way round)
            probe = (probe + 1) & mask
            at = self._offset(probe)
            found = _HASH.unpack_from(self._map, at)[0]
            if not found:
                break
            home = found & mask
            # the entry at probe may move into the hole unless its home lies cyclically in (hole, probe]
            if (hole < home <= probe) if hole <= probe else (hole < home or home <= probe):
                continue
            hole_at = self._offset(hole)
            self._map[hole_at : hole_at + size] = self._map[at : at + size]
            hole = probe
        hole_at = self._offset(hole)
        self._map[hole_at : hole_at + size] = bytes(size)

    def _heads_in_use(self, entry: int) -> bool:
        return any(self._heads.unpack_from(self._map, self._offset(entry) + self._heads_at))


def _hash(data: bytes) -> int:
    return zlib.crc32(data) or 1


def _key_hash(key: str) -> int:
    """A host's 64-bit name in the rate region (never 0: that is an empty bucket)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") or 1


_flock, _LOCK_EX, _LOCK_UN = fcntl.flock, fcntl.LOCK_EX, fcntl.LOCK_UN


def _align8(n: int) -> int:
    return (n + 7) & ~7
