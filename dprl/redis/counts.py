"""This worker's own counts, and what it learned of the fleet's from the replies.

Never undercount: a slot is counted here from the moment its acquire is sent until its
release is answered, and the lease refresh sends these counts, absolute, over the same
ordered connection (see refresh.py). Between refreshes the count in Redis can only be
too high, never too low.

The epoch of each marker is what this worker last saw there: a marker gone or changed
means Redis lost data (restart, FLUSHALL, failover) and counts must be re-asserted.
"""

from __future__ import annotations

import secrets

from ..limits.hosts import SHARED, HostKey
from ..limits.limiter import count_down
from ..limits.tenants import TENANT, tenant_key
from .keys import KeySpace
from .leases import LeaseBook
from .topology import Shard

DATA_LOST = "the epoch marker is gone or changed: Redis lost data"


class WorkerCounts:
    def __init__(self, keyspace: KeySpace, leases: LeaseBook) -> None:
        self.keyspace = keyspace
        self.leases = leases
        self.local: dict[HostKey, int] = {}  # slots counted by this worker, held or in flight
        self.fleet_seen: dict[HostKey, int] = {}  # fleet-wide counts in the last replies (for operators)
        self.touched: set[HostKey] = set()  # keys to refresh even at count 0 (clears leftovers)
        self.tenants_seen: dict[HostKey, dict[str, int]] = {}  # fleet-wide per tenant, as last seen
        # Epoch marker key -> the epoch this worker last saw there. Keyed by marker, not by
        # node: in a Cluster a marker moves with its slot when it is resharded.
        self.epochs: dict[str, str] = {}
        self._proposal = secrets.token_hex(8)  # the epoch a missing marker gets (see epoch_args)

    def count(self, key: HostKey, tenant: str = "") -> None:
        self.local[key] = self.local.get(key, 0) + 1
        tag = self.keyspace.tag(key)
        if tag != key:  # and the shared cap's own count
            self.local[tag] = self.local.get(tag, 0) + 1
        if tenant:  # and the tenant's at this host
            counted = tenant_key(tenant, key)
            self.local[counted] = self.local.get(counted, 0) + 1

    def uncount(self, key: HostKey, tenant: str = "") -> None:
        tag = self.keyspace.tag(key)
        if tag != key:
            self._count_down(tag)
        if tenant:
            self._count_down(tenant_key(tenant, key))
        self._count_down(key)

    def _count_down(self, key: str) -> None:
        if count_down(self.local, key):
            self.touched.add(key)  # refresh it once more, at 0, to clear any leftover
            self.leases.dropped(key)

    def held(self, key: HostKey) -> int:
        return self.local.get(key, 0)

    def held_on(self, shard: Shard) -> list[HostKey]:
        return [key for key, n in self.local.items() if n and self.keyspace.shard_of(key) is shard]

    def to_refresh(self) -> set[HostKey]:
        """Every key held or touched since the last refresh (the touched set starts over)."""
        keys, self.touched = set(self.local) | self.touched, set()
        return keys

    def process_counts(self) -> dict[HostKey, int]:
        return {key: n for key, n in self.local.items() if n and not key.startswith((SHARED, TENANT))}

    def seen_fleet_counts(self) -> dict[HostKey, int]:
        return {key: n for key, n in self.fleet_seen.items() if not key.startswith((SHARED, TENANT))}

    def tenant_counts(self, key: HostKey) -> dict[str, int]:
        """Fleet-wide per tenant at ``key``, as last seen in acquire's replies."""
        return self.tenants_seen.get(key, {})

    # epochs ----------------------------------------------------------------------------
    def epoch_args(self, key: HostKey) -> tuple[str, str]:
        """(the epoch this worker knows for key's marker, a new one should it be missing).

        The proposal stays the same until a script used it (then a fresh one is drawn), so
        commands keep their cached encoding; a marker re-created after another loss never
        carries an epoch any worker already knows.
        """
        return self.epochs.get(self.keyspace.marker(key), ""), self._proposal

    def learn_epoch(self, key: HostKey, epoch: object) -> None:
        if isinstance(epoch, bytes):
            value = epoch.decode()
            self.epochs[self.keyspace.marker(key)] = value
            if value == self._proposal:
                self._proposal = secrets.token_hex(8)
