"""Where each host key's counts live: one Redis (plain or Sentinel-managed) or a Cluster.

A ``Shard`` is one primary and what this worker knows of it: the ordered channel, the
script runner, whether it answers, whether admissions wait for holders to re-assert,
when this worker's leases there were last renewed. Health is per shard: in a Cluster, a
node that fails affects only the hosts whose slots it serves.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..errors import RedisUnavailable
from .address import RedisAddress, RedisDeployment
from .channel import RedisChannel, query
from .cluster import SLOTS, key_slot, marker_tag, tag_slot
from .protocol import ReplyError
from .scripts import ScriptRunner
from .sentinel import sentinel_locator


class Shard:
    __slots__ = (
        "channel",
        "down_until",
        "healthy",
        "lease_floor",
        "name",
        "paused_until",
        "probing",
        "refreshed_at",
        "runner",
        "server_id",
    )

    def __init__(self, name: str, channel: RedisChannel) -> None:
        self.name = name
        self.channel = channel
        self.runner = ScriptRunner(channel)
        self.healthy = True
        self.down_until = 0.0  # while down, admissions answer by policy until then, then probe
        self.probing = False  # one caller probes a down shard; the others use the policy meanwhile
        self.paused_until = 0.0  # after a recovery: no admission until holders re-asserted their counts
        self.server_id = ""  # Redis's run_id at the last connection: a new one means another server
        self.refreshed_at: float | None = None  # monotonic send time of the last refresh round answered
        # The earliest renewal among this worker's leases here (None: it holds nothing here).
        # Never later than the truth: a released key may leave it early until recomputed.
        self.lease_floor: float | None = None

    def __repr__(self) -> str:
        return f"<Shard {self.name} {'up' if self.healthy else 'down'}>"


class Topology:
    """The shards of one deployment, and which one serves a host key."""

    kind = ""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def shard_for(self, key: str) -> Shard:
        raise NotImplementedError

    def known_shard(self, key: str) -> Shard | None:
        """The shard of ``key`` if known without asking anyone (never blocks)."""
        raise NotImplementedError

    def shards(self) -> list[Shard]:
        raise NotImplementedError

    def wake_address(self, timeout: float) -> RedisAddress:
        """Where to subscribe to this worker's wake-up channel."""
        raise NotImplementedError

    def marker(self, key: str) -> str:
        """The epoch marker key the scripts for ``key`` check (see limiter.py)."""
        raise NotImplementedError

    def holder(self, name: str) -> Shard | None:
        """The shard known to hold the Redis key ``name`` (never blocks)."""
        raise NotImplementedError

    def redirected(self, error: ReplyError) -> Shard:
        raise RedisUnavailable(f"{error}: this Redis is a Cluster node, give dprl a redis+cluster:// URL")

    def close(self) -> None:
        for shard in self.shards():
            shard.channel.close()


class SingleTopology(Topology):
    """One primary: a plain server, or the master the sentinels name."""

    def __init__(self, deployment: RedisDeployment, prefix: str, timeout: float, client_name: str) -> None:
        super().__init__(prefix)
        self.kind = deployment.kind
        if deployment.kind == "sentinel":
            locate = sentinel_locator(deployment)
            name = f"sentinel:{deployment.service}"
        else:
            address = deployment.template
            locate = lambda timeout: address  # noqa: E731
            name = str(address)
        channel = RedisChannel(locate, timeout, client_name, require_master=deployment.kind == "sentinel")
        self.shard = Shard(name, channel)
        self._marker = f"{prefix}:epoch"

    def shard_for(self, key: str) -> Shard:
        return self.shard

    def known_shard(self, key: str) -> Shard | None:
        return self.shard

    def shards(self) -> list[Shard]:
        return [self.shard]

    def wake_address(self, timeout: float) -> RedisAddress:
        return self.shard.channel.locate(timeout)

    def marker(self, key: str) -> str:
        return self._marker

    def holder(self, name: str) -> Shard | None:
        return self.shard


class ClusterTopology(Topology):
    """A Redis Cluster: one shard per primary, the slot map from CLUSTER SLOTS, MOVED followed."""

    kind = "cluster"

    def __init__(
        self,
        deployment: RedisDeployment,
        prefix: str,
        timeout: float,
        client_name: str,
        on_new_shard: Callable[[Shard], None],
    ) -> None:
        super().__init__(prefix)
        self.template = deployment.template
        self.seeds = [deployment.template.at(s.host, s.port) for s in deployment.servers]
        self.timeout = timeout
        self.client_name = client_name
        self.on_new_shard = on_new_shard
        self.slots: list[str | None] = [None] * SLOTS
        self._shards: dict[str, Shard] = {}
        self._refreshed_at = 0.0
        self._wake_turn = -1

    def shard_for(self, key: str) -> Shard:
        shard = self.known_shard(key)
        if shard is None:
            self.refresh()
            shard = self.known_shard(key)
            if shard is None:
                raise RedisUnavailable(f"no Cluster node serves the slot of {key}")
        return shard

    def known_shard(self, key: str) -> Shard | None:
        name = self.slots[tag_slot(key)]
        return None if name is None else self._shards.get(name)

    def shards(self) -> list[Shard]:
        return list(self._shards.values())

    def wake_address(self, timeout: float) -> RedisAddress:
        """Any node: a Cluster carries PUBLISH to every node. Each call names the next one,
        so a listener whose node died subscribes elsewhere."""
        candidates = [self._address(name) for name in self._shards] or self.seeds
        self._wake_turn += 1
        return candidates[self._wake_turn % len(candidates)]

    def marker(self, key: str) -> str:
        return f"{self.prefix}:{{{marker_tag(tag_slot(key))}}}:epoch"

    def holder(self, name: str) -> Shard | None:
        owner = self.slots[key_slot(name)]
        return None if owner is None else self._shards.get(owner)

    def redirected(self, error: ReplyError) -> Shard:
        """After MOVED or ASK: the shard to send to (and, for MOVED, the map updated)."""
        _code, slot, where = str(error).split()
        host, _, port = where.rpartition(":")
        shard = self._shard(host, int(port))
        if error.code == "MOVED":
            self.slots[int(slot)] = shard.name
            if time.monotonic() - self._refreshed_at > 1.0:  # a resharding: learn the rest of it
                self.refresh(quiet=True)
        return shard

    def refresh(self, quiet: bool = False) -> None:
        """Read the slot map from the first node that answers (known primaries first, then seeds)."""
        self._refreshed_at = time.monotonic()
        candidates = [self._address(name) for name in self._shards] + self.seeds
        errors = []
        for address in candidates:
            try:
                (reply,) = query(address, self.timeout, ("CLUSTER", "SLOTS"))
            except RedisUnavailable as exc:
                errors.append(str(exc))
                continue
            if isinstance(reply, ReplyError):
                errors.append(f"{address}: {reply}")
                continue
            for start, end, primary, *_replicas in reply:  # type: ignore[attr-defined]  # CLUSTER SLOTS: a list
                host = primary[0].decode() or address.host
                name = self._shard(host, int(primary[1])).name
                for slot in range(int(start), int(end) + 1):
                    self.slots[slot] = name
            return
        if not quiet:
            raise RedisUnavailable(f"no Cluster node gave its slot map: {'; '.join(errors)}")

    def _address(self, name: str) -> RedisAddress:
        host, _, port = name.rpartition(":")
        return self.template.at(host, int(port))

    def _shard(self, host: str, port: int) -> Shard:
        name = f"{host}:{port}"
        shard = self._shards.get(name)
        if shard is None:
            address = self.template.at(host, port)
            channel = RedisChannel(lambda timeout: address, self.timeout, self.client_name, cluster=True)
            shard = self._shards[name] = Shard(name, channel)
            self.on_new_shard(shard)
        return shard


def make_topology(
    deployment: RedisDeployment,
    prefix: str,
    timeout: float,
    client_name: str,
    on_new_shard: Callable[[Shard], None],
) -> Topology:
    if deployment.kind == "cluster":
        return ClusterTopology(deployment, prefix, timeout, client_name, on_new_shard)
    topology = SingleTopology(deployment, prefix, timeout, client_name)
    on_new_shard(topology.shard)
    return topology
