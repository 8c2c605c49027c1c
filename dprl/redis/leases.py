"""This worker's leases in Redis as the worker sees them: when each was last set, which are
about to lapse.

A lease runs in Redis from when the script that set it ran: never earlier than when the
worker sent it. So each held key is dated by the send time of the last command that set
its lease (the acquire that created it, or a refresh), an estimate never later than the
truth, and a lease counts as lapsing ``margin`` seconds before that date plus the ttl.
That is when ``--on-lease-loss`` acts: before any other worker can see the lease gone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from ..limits.hosts import HostKey
from .topology import Shard


class Lapsing(NamedTuple):
    keys: set[HostKey]
    since: float  # seconds since the oldest of them was set


class LeaseBook:
    def __init__(self, ttl: float, margin: float, held_on: Callable[[Shard], list[HostKey]]) -> None:
        """``held_on(shard)``: the keys this worker holds slots of on ``shard`` now."""
        self.ttl = ttl
        self.margin = margin
        self._held_on = held_on
        self._set_at: dict[HostKey, float] = {}
        self._acted_on: set[HostKey] = set()  # lapsing, and --on-lease-loss applied

    def created(self, shard: Shard, key: HostKey, sent_at: float) -> None:
        """An acquire gave this worker its lease on ``key`` (its first slot there)."""
        self._set_at[key] = sent_at
        if shard.lease_floor is None:
            shard.lease_floor = sent_at  # else the floor is earlier already

    def admitted(self, key: HostKey, sent_at: float) -> None:
        """Another slot on ``key``: the lease is the one its first slot created."""
        self._set_at.setdefault(key, sent_at)

    def renewed(self, key: HostKey, sent_at: float) -> None:
        self._set_at[key] = sent_at
        self._acted_on.discard(key)

    def dropped(self, key: HostKey) -> None:
        """No slot left on ``key``: no lease to keep (the shard's floor may stay early)."""
        self._set_at.pop(key, None)
        self._acted_on.discard(key)

    def recompute(self, shard: Shard) -> None:
        shard.lease_floor = min((self._set_at[k] for k in self._held_on(shard) if k in self._set_at), default=None)

    def lapsed(self, shard: Shard, now: float) -> bool:
        """True if a lease of this worker's on ``shard`` may have run out in Redis, or soon will.

        O(1) while the earliest lease is young; the floor is recomputed only when it looks old.
        """
        floor = shard.lease_floor
        if floor is None or now < floor + self.ttl - self.margin:
            return False
        self.recompute(shard)
        floor = shard.lease_floor
        return floor is not None and now >= floor + self.ttl - self.margin

    def lapsing(self, shard: Shard, now: float) -> Lapsing:
        """Keys whose lease on ``shard`` is lapsing and not yet acted on (they are then marked
        acted on), and how long ago the oldest of them was set."""
        if not self.lapsed(shard, now):
            return Lapsing(set(), 0.0)
        cutoff = now - self.ttl + self.margin
        keys = {k for k in self._held_on(shard) if self._set_at.get(k, now) <= cutoff} - self._acted_on
        if not keys:
            return Lapsing(set(), 0.0)
        self._acted_on |= keys
        return Lapsing(keys, now - min(self._set_at[k] for k in keys))

    def next_deadline(self, shard: Shard, now: float) -> float | None:
        """When the next lease on ``shard`` not yet acted on starts lapsing (None: none held)."""
        floor = shard.lease_floor
        if floor is not None and floor + self.ttl - self.margin <= now:
            waiting = [k for k in self._held_on(shard) if k in self._set_at and k not in self._acted_on]
            floor = min((self._set_at[k] for k in waiting), default=None)
        return None if floor is None else floor + self.ttl - self.margin
