"""Keys of a prefix found by SCAN (never KEYS), and a dead worker's part removed at once.

A worker killed without a goodbye leaves its counts until its lease runs out. A process
that *knows* a worker died (the ``--workers`` supervisor) removes them at once instead:
``forget_worker`` drops the worker's entry from every count and waiting set of the prefix.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from .address import RedisDeployment
from .scripts import FORGET
from .topology import Shard, Topology, make_topology


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def scan(shard: Shard, pattern: str) -> Iterator[str]:
    """Every key name on ``shard`` matching the glob ``pattern``."""
    cursor: object = b"0"
    while True:
        reply: Any = shard.channel.call("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)  # {cursor, keys}
        cursor, keys = reply
        yield from (name.decode() for name in keys)
        if cursor in (b"0", 0):
            return


def open_topology(url: str, prefix: str, timeout: float, name: str) -> Topology:
    """Connections to every primary of ``url`` (a Cluster's slot map read first)."""
    topology = make_topology(RedisDeployment.from_url(url), prefix, timeout, name, lambda shard: None)
    if topology.kind == "cluster":
        topology.refresh()  # type: ignore[attr-defined]  # kind "cluster": a ClusterTopology
    return topology


def forget_worker(url: str, prefix: str, worker: str, timeout: float) -> int:
    """Remove ``worker``'s part of every count under ``prefix``; returns how many it had."""
    topology = open_topology(url, prefix, timeout, "dprl-supervisor")
    forgotten = 0
    try:
        for shard in topology.shards():
            for name in scan(shard, glob_escape(prefix) + ":*:counts"):
                leases = name[: -len("counts")] + "leases"
                forgotten += int(shard.runner.run(FORGET, (name, leases), (worker,)))
            for name in scan(shard, glob_escape(prefix) + ":*:waiting"):
                shard.runner.run(FORGET, (name, name), (worker,))
    finally:
        topology.close()
    return forgotten
