"""Pools of parent proxies: each parent's live state, and the order a pool offers them in.

A pool offers its healthy parents (health.py ejects and restores them) in the order its
strategy gives; the caller tries them in turn until one carries the connection, so the
first is the choice and the rest are the failover order:

- ``round-robin``: smooth weighted round robin (each parent in proportion to its weight,
  spread out rather than in bursts), then the others in pool order;
- ``least-connections``: fewest open connections of this process per unit of weight;
- ``destination-hash``: rendezvous hashing of the destination over the healthy parents
  (weighted), so a destination keeps its parent while that parent is healthy, and only
  the destinations of a parent that goes away move.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Iterable, Mapping
from typing import TypedDict

from ..limits.hosts import HostKey
from .spec import DIRECT, ParentSpec, PoolSpec, route_for

PARENT = "parent:"  # a parent's own count, where a host key could stand: "parent:POOL/HOST:PORT"


class ParentState:
    """One parent and what this process knows of it now."""

    __slots__ = ("_current", "backoff", "ejected_until", "failures", "failures_by_reason", "in_use", "probing", "spec")

    def __init__(self, spec: ParentSpec) -> None:
        self.spec = spec
        self.in_use = 0  # this process's connections through it
        self.failures = 0  # consecutive failed connects or handshakes
        self.failures_by_reason: dict[str, int] = {}
        self.ejected_until = 0.0  # monotonic; 0: up
        self.backoff = 0.0  # the wait before the next probe of an ejected parent
        self.probing = False
        self._current = 0  # smooth weighted round robin's running weight

    @property
    def key(self) -> HostKey:
        """Its count in the limiter (fleet-wide in distributed mode)."""
        return PARENT + self.spec.label

    @property
    def up(self) -> bool:
        return not self.ejected_until


class Pool:
    def __init__(self, spec: PoolSpec, previous: Pool | None = None) -> None:
        self.spec = spec
        old = {p.spec.address: p for p in previous.parents} if previous is not None else {}
        # a parent kept across a reload keeps its state (counts, ejection)
        self.parents: list[ParentState] = [_carried(old.get(p.address), p) for p in spec.parents]
        self._lock = threading.Lock()  # the library may pick from several threads' hubs

    @property
    def name(self) -> str:
        return self.spec.name

    def offer(self, destination: HostKey) -> list[ParentState]:
        """The healthy parents in the order to try them for ``destination``."""
        healthy = [p for p in self.parents if p.up]
        if len(healthy) <= 1:
            return healthy
        select = self.spec.select
        if select == "least-connections":
            return sorted(healthy, key=lambda p: p.in_use / p.spec.weight)
        if select == "destination-hash":
            return sorted(healthy, key=lambda p: _rendezvous(destination, p.spec), reverse=True)
        with self._lock:
            total = sum(p.spec.weight for p in healthy)
            for parent in healthy:
                parent._current += parent.spec.weight
            chosen = max(healthy, key=lambda p: p._current)
            chosen._current -= total
        return [chosen, *(p for p in healthy if p is not chosen)]


def _carried(old: ParentState | None, spec: ParentSpec) -> ParentState:
    """The state of a parent kept across a reload: the same object, with its new settings.
    Connections open through it and a probe under way hold that object and go on counting
    into it."""
    if old is None:
        return ParentState(spec)
    old.spec = spec
    return old


def _rendezvous(destination: str, parent: ParentSpec) -> float:
    """Weighted rendezvous score (highest wins): -w / ln(u), u uniform in (0, 1) from the hash."""
    digest = hashlib.blake2b(f"{destination}|{parent.address}".encode(), digest_size=8).digest()
    u = (int.from_bytes(digest, "big") + 1) / (2**64 + 1)
    return -parent.weight / math.log(u)


class Parents:
    """Every pool and the routes to them; replaced whole on a reload (SIGHUP, the library)."""

    def __init__(self, pools: Mapping[str, PoolSpec] | None = None, routes: Mapping[str, str] | None = None) -> None:
        self.pools: dict[str, Pool] = {}
        self.routes: dict[str, str] = {}
        self.replace(pools or {}, routes or {})

    def replace(self, pools: Mapping[str, PoolSpec], routes: Mapping[str, str]) -> None:
        self.pools = {name: Pool(spec, self.pools.get(name)) for name, spec in pools.items()}
        self.routes = dict(routes)

    def pool_for(self, key: HostKey) -> Pool | None:
        """The pool that carries connections to ``key`` (None: dialled directly)."""
        name = route_for(self.routes, key)
        return None if name == DIRECT else self.pools[name]

    def every_parent(self) -> Iterable[ParentState]:
        for pool in self.pools.values():
            yield from pool.parents


class ParentStatus(TypedDict):
    """One parent as pages, ``dprl status`` and the library show it (no credentials)."""

    parent: str  # POOL/HOST:PORT
    pool: str
    scheme: str
    state: str  # "up" or "ejected"
    probe_in: float  # seconds until the next probe of an ejected parent (0 when up)
    in_use: int  # this process's connections through it
    fleet_in_use: int | None  # the fleet's, as last seen (distributed mode, a parent with a cap)
    max: int  # its cap, fleet-wide (0: none)
    failures: int  # consecutive failed connects or handshakes
    failures_total: dict[str, int]  # by reason: connect, handshake, tls


def parent_status(parent: ParentState, fleet: Mapping[HostKey, int] | None = None) -> ParentStatus:
    """``fleet``: counts as last seen fleet-wide (distributed mode)."""
    spec = parent.spec
    return {
        "parent": spec.label,
        "pool": spec.pool,
        "scheme": spec.scheme,
        "state": "up" if parent.up else "ejected",
        "probe_in": round(max(0.0, parent.ejected_until - time.monotonic()), 3) if parent.ejected_until else 0.0,
        "in_use": parent.in_use,
        "fleet_in_use": fleet.get(parent.key, 0) if fleet is not None and spec.max_connections else None,
        "max": spec.max_connections,
        "failures": parent.failures,
        "failures_total": dict(parent.failures_by_reason),
    }
