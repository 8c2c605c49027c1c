"""Tenants: guaranteed shares of a host's cap and rate, idle share lent, fair order of waiters.

The model (docs/tenants.md has it for users), one set of rules for every limiter (in
memory, in the machine's table, and the same arithmetic in ``acquire.lua``):

- The tenants that *want* a host are those holding or waiting for its slots, and the one
  asking. With weights ``w``, tenant ``t`` is guaranteed ``floor(C * w[t] / sum(w))`` of the
  host's cap ``C``; ``max=P%`` caps it at ``floor(C * P / 100)`` (at least 1) even when the
  host is idle.
- Nothing is preempted. Waiters are served in *fair order*: a waiter's place is how far its
  tenant would stand above its guarantee were it admitted (``held + k - guarantee`` for the
  tenant's k-th waiter, 0-based), lowest first, then arrival. So a freed slot goes to the
  waiting tenant furthest below its guarantee, first come first served within a tenant,
  and an arrival over its guarantee is admitted only while the free slots outnumber the
  waiters before it in that order.

Unknown tenants fall into ``default`` (weight 1 unless configured), so the set of tenants,
and with it every label and key they name, is what the configuration lists.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from .rates import Rate

DEFAULT_TENANT = "default"
TENANT = "tenant:"  # a tenant's count at a host: "tenant:NAME|HOST" where a host key could stand
_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_SHARE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(?::\s*max\s*=\s*([0-9]+(?:\.[0-9]+)?)\s*%?\s*)?")
EPSILON = 1e-9  # C * w / sum(w) computed in floats must not lose a whole slot to 6.9999999


@dataclass(frozen=True, slots=True)
class Share:
    """A tenant's weight, and the most of a host's cap (and rate) it may use, in percent."""

    weight: float = 1.0
    max_percent: float = 100.0

    def __str__(self) -> str:
        text = f"{self.weight:g}"
        return text if self.max_percent >= 100 else f"{text}:max={self.max_percent:g}%"


def check_tenant_name(name: str) -> str:
    name = name.strip()
    if not _NAME.fullmatch(name):
        raise ValueError(f"a tenant name is 1-64 letters, digits, '_', '.' or '-', got {name!r}")
    return name


def parse_share(text: str) -> tuple[str, Share]:
    """``NAME=WEIGHT[:max=N%]`` (``batch=1:max=50%``)."""
    name, sep, spec = text.partition("=")
    match = _SHARE.fullmatch(spec) if sep else None
    if match is None:
        raise ValueError(f"a tenant share is NAME=WEIGHT or NAME=WEIGHT:max=N%, got {text.strip()!r}")
    weight, top = float(match[1]), float(match[2]) if match[2] else 100.0
    if weight <= 0:
        raise ValueError(f"a tenant's weight is more than 0, got {text.strip()!r}")
    if not 0 < top <= 100:
        raise ValueError(f"a tenant's max is more than 0% and at most 100%, got {text.strip()!r}")
    return check_tenant_name(name), Share(weight, top)


def parse_shares(text: str) -> dict[str, Share]:
    """Comma-separated ``NAME=WEIGHT[:max=N%]``."""
    return dict(parse_share(item) for item in text.split(",") if item.strip())


def guarantee(cap: int, weight: float, total_weight: float) -> int:
    """The slots of a cap ``cap`` that a tenant of ``weight`` is guaranteed among wanting
    tenants whose weights add up to ``total_weight``."""
    return math.floor(cap * weight / total_weight + EPSILON)


def ceiling(cap: int, share: Share) -> int:
    """The most slots of a cap ``cap`` a tenant may hold (its ``max``; at least one)."""
    if share.max_percent >= 100:
        return cap
    return max(1, math.floor(cap * share.max_percent / 100 + EPSILON))


def tenant_key(tenant: str, key: str) -> str:
    """Where a host key could stand, the count of ``tenant``'s connections to ``key``."""
    return f"{TENANT}{tenant}|{key}"


def split_tenant_key(counted: str) -> tuple[str, str]:
    """(tenant, host key) of a ``tenant_key``."""
    tenant, _, key = counted[len(TENANT) :].partition("|")
    return tenant, key


class Standing(NamedTuple):
    """One tenant at one host, as admission sees it."""

    held: int  # its open connections to the host
    waiting: int  # its connections waiting for the host
    guarantee: int
    ceiling: int


class TenantShares:
    """The configured shares, changeable at runtime (replaced whole: readers in other
    threads never see half of a change). Empty: no tenants, behaviour as without them."""

    def __init__(self, shares: Mapping[str, Share] | None = None) -> None:
        self._shares: dict[str, Share] = {}
        self.names: tuple[str, ...] = ()
        self.generation = 0
        self.replace(shares or {})

    @property
    def enabled(self) -> bool:
        return bool(self._shares)

    def replace(self, shares: Mapping[str, Share]) -> None:
        checked = {check_tenant_name(name): share for name, share in shares.items()}
        self._shares = checked
        self.names = tuple(sorted({*checked, DEFAULT_TENANT})) if checked else ()
        self.generation += 1

    def set(self, name: str, share: Share | None) -> None:
        """Set one tenant's share; None removes it (the tenant falls into ``default``)."""
        updated = dict(self._shares)
        if share is None:
            updated.pop(name, None)
        else:
            updated[name] = share
        self.replace(updated)

    def shares(self) -> dict[str, Share]:
        return dict(self._shares)

    def tenant(self, name: str) -> str:
        """The tenant a request names (unknown or empty: ``default``)."""
        return name if name in self._shares else DEFAULT_TENANT

    def share(self, tenant: str) -> Share:
        return self._shares.get(tenant) or Share()

    def standings(
        self, cap: int, held: Mapping[str, int], waiting: Mapping[str, int], asking: str = ""
    ) -> dict[str, Standing]:
        """Every tenant's standing at a host of cap ``cap``: guarantees among the tenants that
        want it (holding, waiting, or ``asking``)."""
        wanting = [t for t in self.names if held.get(t, 0) or waiting.get(t, 0) or t == asking]
        total = sum(self.share(t).weight for t in wanting) or 1.0
        out = {}
        for t in self.names:
            share = self.share(t)
            owed = guarantee(cap, share.weight, total) if t in wanting else 0
            out[t] = Standing(held.get(t, 0), waiting.get(t, 0), owed, ceiling(cap, share))
        return out

    def rate_of(self, rate: Rate, tenant: str, active: Iterable[str]) -> Rate:
        """A tenant's part of a host's rate among the ``active`` tenants (and itself): by
        weight, at most its ``max`` of the whole. The host's own rate still holds for all."""
        share = self.share(tenant)
        total = sum(self.share(t).weight for t in {*active, tenant})
        part = min(share.weight / total, share.max_percent / 100)
        if part >= 1:
            return rate
        return Rate(rate.count * part, rate.per, max(1, math.floor(rate.burst * part + EPSILON)))


def place(standing: Standing, k: int) -> int:
    """How far a tenant stands above its guarantee once its ``k``-th waiter (0-based) is
    admitted, minus one: below 0 while that waiter is within its guarantee. Lower goes first."""
    return standing.held + k - standing.guarantee


def eligible(standing: Standing, k: int) -> bool:
    """Whether the tenant's ``k``-th waiter fits under its ``max``."""
    return standing.held + k < standing.ceiling


class Lifetimes:
    """How long connections to each host lasted lately (per host, a running mean over about
    the last 16), to tell at arrival whether a tenant's wait behind others can end within
    its queue timeout. Bounded: forgotten whole past ``size`` hosts."""

    SAMPLES = 8  # closed connections seen before the mean is trusted
    WINDOW = 16

    def __init__(self, size: int = 10000) -> None:
        self._seen: dict[str, tuple[float, int]] = {}  # host key -> (mean lifetime s, samples)
        self._size = size

    def closed(self, key: str, lifetime: float) -> None:
        mean, samples = self._seen.get(key, (lifetime, 0))
        samples += 1
        if samples > 1:
            mean += (lifetime - mean) / min(samples, self.WINDOW)
        if key not in self._seen and len(self._seen) >= self._size:
            self._seen.clear()
        self._seen[key] = (mean, samples)

    def expected_wait(self, key: str, slots: int, open_: int) -> float | None:
        """Seconds until ``slots`` of the ``open_`` connections to ``key`` have closed, as the
        host's recent lifetimes suggest (closes spread evenly); None: not known yet."""
        seen = self._seen.get(key)
        if seen is None or seen[1] < self.SAMPLES or open_ <= 0:
            return None
        return max(slots, 0) * seen[0] / open_
