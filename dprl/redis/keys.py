"""The names of a host's keys in Redis, all under one hash tag (one Cluster slot).

``{prefix}:{tag}:counts`` (hash: worker id -> its open connections), ``:leases`` (sorted
set: worker id -> lease expiry in Redis server time), ``:queue`` and ``:waiting`` (the
fleet's line of waiters and their workers' waiting leases), plus the epoch marker of the
slot. The tag is the host key itself, or ``shared:NAME`` for the hosts of a shared cap: a
shared cap's hosts and the cap's own count live in one slot, so one script admits against
both.
"""

from __future__ import annotations

from ..limits.hosts import SHARED, HostKey, HostLimits
from ..limits.tenants import TENANT, TenantShares, split_tenant_key, tenant_key
from .scripts import ACQUIRE, PACE, RELEASE, Script
from .topology import Shard, Topology

_QUEUED = (ACQUIRE, RELEASE)  # scripts that also see the host's queue (KEYS[4], KEYS[5])


class KeySpace:
    def __init__(
        self, prefix: str, limits: HostLimits, topology: Topology, tenants: TenantShares | None = None
    ) -> None:
        self.prefix = prefix
        self.limits = limits
        self.topology = topology
        self.tenants = tenants or TenantShares()
        # script_keys' answers, worked out once per host and script while the limits (and
        # so the shared caps, which decide the tags) stay as they are
        self._script_keys: dict[tuple[str, HostKey, bool], tuple[str, ...]] = {}
        self._generation = (limits.generation, self.tenants.generation)

    def tag(self, key: HostKey) -> str:
        """The hash tag of ``key``'s keys: the host itself, or its shared cap's
        (``shared:NAME``, which is also the key of the cap's own count): its waiting line."""
        if key.startswith(SHARED):
            return key
        if key.startswith(TENANT):  # a tenant's count at a host lives beside the host's
            return self.limits.policy_for(split_tenant_key(key)[1]).line
        return self.limits.policy_for(key).line

    def keys(self, key: HostKey) -> tuple[str, str, str]:
        """counts, leases and the epoch marker of ``key``."""
        tag = self.tag(key)
        base = f"{self.prefix}:{{{tag}}}" if tag == key else f"{self.prefix}:{{{tag}}}:{key}"
        return f"{base}:counts", f"{base}:leases", self.topology.marker(tag)

    def queue_keys(self, key: HostKey) -> tuple[str, str]:
        """The fleet's queue of ``key``'s line (tickets by arrival; a shared cap's hosts share
        one) and the waiting leases of its workers."""
        tag = self.tag(key)
        if key.startswith(TENANT):  # the tenant's own line at the host (the fair order reads them all)
            return f"{self.prefix}:{{{tag}}}:{key}:queue", f"{self.prefix}:{{{tag}}}:waiting"
        return f"{self.prefix}:{{{tag}}}:queue", f"{self.prefix}:{{{tag}}}:waiting"

    def rate_key(self, key: HostKey) -> str:
        """The host's theoretical arrival time (its rate), under the same hash tag."""
        tag = self.tag(key)
        base = f"{self.prefix}:{{{tag}}}" if tag == key else f"{self.prefix}:{{{tag}}}:{key}"
        return f"{base}:rate"

    def script_keys(self, script: Script, key: HostKey, bare: bool = False) -> tuple[str, ...]:
        """Acquire also sees the host's rate (KEYS[4]); acquire and release see the queue,
        and a shared cap's own count (after the queue). ``bare``: without the queue's keys
        (a Cluster slot being migrated, see routing.py), when there is no shared cap."""
        generation = (self.limits.generation, self.tenants.generation)
        if self._generation != generation or len(self._script_keys) >= 10000:
            self._script_keys = {}
            self._generation = generation
        cached = self._script_keys.get((script.name, key, bare))
        if cached is None:
            cached = self._script_keys[(script.name, key, bare)] = self._work_out(script, key, bare)
        return cached

    def _work_out(self, script: Script, key: HostKey, bare: bool) -> tuple[str, ...]:
        if key.startswith(TENANT) and (script in _QUEUED or script is PACE):
            return self._tenant_keys(script, key, bare)
        if script is PACE:  # the host's rate, and its shared cap's (pace.lua skips one it has not)
            tag = self.tag(key)
            return (self.rate_key(key),) if tag == key else (self.rate_key(key), self.rate_key(tag))
        keys: tuple[str, ...] = self.keys(key)
        if script not in _QUEUED:
            return keys
        if script is ACQUIRE:
            keys += (self.rate_key(key),)
        tag = self.tag(key)
        if tag == key:
            return keys if bare else keys + self.queue_keys(key)
        shared = self.keys(tag)[:2] + ((self.rate_key(tag),) if script is ACQUIRE else ())
        return keys + self.queue_keys(key) + shared

    def _tenant_keys(self, script: Script, counted: str, bare: bool) -> tuple[str, ...]:
        """A tenant's acquire or pace: the host's keys, then every tenant's counts, leases,
        queue and rate at the host; its release: the host's keys, the tenant's counts and
        leases, and every tenant's queue (acquire.lua, pace.lua, release.lua)."""
        _, host = split_tenant_key(counted)
        keys = self._work_out(script, host, bare)
        names = [tenant_key(name, host) for name in self.tenants.names]
        if script is RELEASE:
            return keys + self.keys(counted)[:2] + tuple(self.queue_keys(name)[0] for name in names)
        for name in names:
            keys += (*self.keys(name)[:2], self.queue_keys(name)[0], self.rate_key(name))
        return keys

    def marker(self, key: HostKey) -> str:
        return self.topology.marker(self.tag(key))

    def shard_of(self, key: HostKey) -> Shard | None:
        """The shard known to serve ``key`` (None: a Cluster slot not mapped yet)."""
        return self.topology.known_shard(self.tag(key))
