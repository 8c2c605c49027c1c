"""Host keys (what a slot is counted against) and per-host limits.

Normalisation rules (docs/design.md, "Hosts and limits"): lowercase, no trailing dot, IPv6 literals in
brackets, port dropped when it is 80 or 443. Configured limits go through the same
function, so ``set_host_limit("API.example.com:443", 5)`` and a CONNECT to
``api.example.com:443`` meet on the same key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

from ..http.target import parse_host, split_authority
from .rates import Rate

T = TypeVar("T")

HostKey = str

DEFAULT_PORTS = (80, 443)
SHARED = "shared:"  # names a shared cap where a host key could stand (its waiting line, its count)
COUNTED_ALONE = ("parent:",)  # keys counted with a limit of their own: no pattern, default or rate applies


def host_key(host: str, port: int) -> HostKey:
    """The key a slot is counted against; ``host`` is already normalised (``parse_host``)."""
    return host if port in DEFAULT_PORTS else f"{host}:{port}"


def normalize_host_spec(spec: str) -> HostKey:
    """The key of a configured host (``api.example.com``, ``b.example.com:8443``, ``::1``)."""
    spec = spec.strip()
    if spec.startswith("[") or spec.count(":") <= 1:
        host, port = split_authority(spec, 443)
    else:  # bare IPv6 literal without a port
        host, port = parse_host(spec), 443
    return host_key(host, port)


def normalize_limit_spec(spec: str) -> HostKey:
    """A configured host or pattern: ``api.example.com`` or ``*.example.com[:port]``."""
    spec = spec.strip()
    if spec.startswith("*."):
        return "*." + normalize_host_spec(spec[2:])
    if "*" in spec:
        raise ValueError(f"a pattern is *.DOMAIN, got {spec!r}")
    return normalize_host_spec(spec)


def pattern_candidates(key: HostKey) -> list[str]:
    """The patterns that could match ``key``, longest first: for ``a.b.example.com:8443``,
    ``*.b.example.com:8443``, ``*.example.com:8443``, ``*.com:8443``. A pattern's port
    follows the host keys' rule (none for 80 and 443), so ``*.example.com`` matches
    ``a.example.com`` and ``a.example.com:443``, and not ``a.example.com:8443``."""
    return ["*" + key[i:] for i, char in enumerate(key) if char == "."]


@dataclass(frozen=True)
class SharedCap:
    """Hosts that are one service behind many names: together at most ``limit`` connections."""

    name: str
    limit: int
    hosts: frozenset[HostKey]  # exact host keys
    patterns: frozenset[str]  # ``*.domain`` patterns
    rate: Rate | None = None  # one request rate for all of them together (--shared-rate)

    def covers(self, key: HostKey) -> bool:
        return key in self.hosts or any(p in self.patterns for p in pattern_candidates(key))


class HostPolicy(NamedTuple):
    """Everything an admission to one host key needs to know of the limits, looked up once."""

    limit: int  # 0: unlimited
    cap: SharedCap | None  # the shared cap it also counts against
    line: str  # its waiting line: the key, or its shared cap's
    rate: Rate | None  # its own rate
    rates: tuple[tuple[str, Rate], ...]  # every rate an admission takes a token of, by name


class HostLimits:
    """The default cap, per-host overrides and ``*.domain`` patterns; ``0`` means unlimited.

    A host's limit is its own if set, else that of the longest pattern matching it, else
    the default; each host matched by a pattern has a cap of its own (``*.example.com=5``:
    5 for ``a.example.com`` and 5 for ``b.example.com``). ``shared`` caps count sets of hosts
    together, on top of their own caps. Keys given to the constructor are normalised
    already (the configuration did it once); ``set`` and ``replace`` take what a user
    typed. Updates replace whole dicts instead of mutating them, so a reader in another
    thread (the library's background proxy, a metrics render) never sees half of one.
    """

    def __init__(
        self,
        default: int = 0,
        overrides: Mapping[HostKey, int] | None = None,
        shared: Iterable[SharedCap] = (),
    ) -> None:
        self._policies: dict[HostKey, HostPolicy] = {}  # policy_for's cache, replaced on every change
        self.generation = 0  # counts the changes: caches of what follows from the limits compare it
        self.default = _check_limit(default)
        self._exact: dict[HostKey, int] = {}
        self._patterns: dict[str, int] = {}
        self._load(overrides or {})
        self.shared: tuple[SharedCap, ...] = tuple(shared)
        # The fleet's limits stored in Redis (distributed mode): they come first.
        self._stored_exact: dict[HostKey, int] = {}
        self._stored_patterns: dict[str, int] = {}
        self.stored_default: int | None = None
        # Request rates (rates.py): the same shape, without the "0 removes" rule (None does).
        self._default_rate: Rate | None = None
        self._rate_exact: dict[HostKey, Rate] = {}
        self._rate_patterns: dict[str, Rate] = {}
        self._stored_rate_exact: dict[HostKey, Rate] = {}
        self._stored_rate_patterns: dict[str, Rate] = {}
        self.stored_default_rate: Rate | None = None

    def _load(self, limits: Mapping[HostKey, int]) -> None:
        exact = {key: int(n) for key, n in limits.items() if int(n) > 0 and not key.startswith("*.")}
        patterns = {key: int(n) for key, n in limits.items() if int(n) > 0 and key.startswith("*.")}
        self._exact, self._patterns = exact, patterns
        self._changed()

    def _changed(self) -> None:
        """Any limit, rate or shared cap changed: forget the policies worked out so far.
        (A reader in another thread that looked one up meanwhile stores it in the old dict.)"""
        self._policies = {}
        self.generation += 1

    @property
    def default_rate(self) -> Rate | None:
        """The rate of hosts with none of their own (None: unlimited)."""
        return self._default_rate

    @default_rate.setter
    def default_rate(self, rate: Rate | None) -> None:
        self._default_rate = rate
        self._changed()

    def policy_for(self, key: HostKey) -> HostPolicy:
        """The limit, shared cap, waiting line and rates of ``key``, worked out once per
        change of the limits (the hot path asks for each admission)."""
        policies = self._policies
        policy = policies.get(key)
        if policy is None:
            if len(policies) >= 10000:
                policies.clear()
            policy = policies[key] = self._work_out(key)
        return policy

    def _work_out(self, key: HostKey) -> HostPolicy:
        if key.startswith(COUNTED_ALONE):  # a parent proxy's count: its cap is the caller's
            return HostPolicy(0, None, key, None, ())
        cap = self._shared_cap(key)
        rate = self._rate(key)
        rates: list[tuple[str, Rate]] = [] if rate is None else [(key, rate)]
        if cap is not None and cap.rate is not None:
            rates.append((SHARED + cap.name, cap.rate))
        line = key if cap is None else SHARED + cap.name
        return HostPolicy(self._limit(key), cap, line, rate, tuple(rates))

    def limit_for(self, key: HostKey) -> int:
        return self.policy_for(key).limit

    def _limit(self, key: HostKey) -> int:
        """Stored in Redis (exact, then pattern), else this process's (exact, then pattern),
        else the stored default, else this process's default."""
        if self._stored_exact or self._stored_patterns:
            limit = _lookup(key, self._stored_exact, self._stored_patterns)
            if limit is not None:
                return limit
        limit = _lookup(key, self._exact, self._patterns)
        if limit is not None:
            return limit
        return self.effective_default()

    def limit_source(self, key: HostKey) -> str:
        """What gives ``key`` its limit, for operators: "fleet HOST", "fleet *.DOMAIN", "HOST",
        "*.DOMAIN" (a pattern), or "default"; with ", shared:NAME" when a shared cap also applies."""
        source = "default"
        for scope, exact, patterns in (
            ("fleet ", self._stored_exact, self._stored_patterns),
            ("", self._exact, self._patterns),
        ):
            if key in exact:
                source = f"{scope}{key}"
                break
            match = next((c for c in pattern_candidates(key) if c in patterns), None) if patterns else None
            if match is not None:
                source = f"{scope}{match}"
                break
        cap = self.policy_for(key).cap
        return f"{source}, shared:{cap.name}" if cap is not None else source

    def effective_default(self) -> int:
        """The limit of hosts with none of their own: the fleet's stored default, else this process's."""
        return self.default if self.stored_default is None else self.stored_default

    def set_stored(self, limits: Mapping[HostKey, int], default: int | None) -> None:
        """The fleet's stored limits replace the previous ones (0 = unlimited, kept as such)."""
        exact = {k: int(n) for k, n in limits.items() if not k.startswith("*.")}
        patterns = {k: int(n) for k, n in limits.items() if k.startswith("*.")}
        self._stored_exact, self._stored_patterns, self.stored_default = exact, patterns, default
        self._changed()

    def stored(self) -> dict[HostKey, int]:
        return {**self._stored_exact, **self._stored_patterns}

    # rates -----------------------------------------------------------------------------
    def rate_for(self, key: HostKey) -> Rate | None:
        return self.policy_for(key).rate

    def _rate(self, key: HostKey) -> Rate | None:
        """As ``_limit``: stored (exact, pattern), own (exact, pattern), stored default, default."""
        if self._stored_rate_exact or self._stored_rate_patterns:
            rate = _lookup(key, self._stored_rate_exact, self._stored_rate_patterns)
            if rate is not None:
                return rate
        if self._rate_exact or self._rate_patterns:
            rate = _lookup(key, self._rate_exact, self._rate_patterns)
            if rate is not None:
                return rate
        return self.default_rate if self.stored_default_rate is None else self.stored_default_rate

    def rates_for(self, key: HostKey) -> tuple[tuple[str, Rate], ...]:
        """Every rate an admission to ``key`` takes a token of, by name: its own, and its
        shared cap's (``shared:NAME``)."""
        return self.policy_for(key).rates

    def set_rate(self, host: str, rate: Rate | None) -> None:
        """Set one host's (or pattern's) rate; None removes it (the default applies)."""
        key = normalize_limit_spec(host)
        updated = {**self._rate_exact, **self._rate_patterns}
        if rate is not None:
            updated[key] = rate
        else:
            updated.pop(key, None)
        self.replace_rates(updated)

    def replace_rates(self, rates: Mapping[str, Rate]) -> None:
        keyed = {normalize_limit_spec(host): rate for host, rate in rates.items()}
        exact = {k: r for k, r in keyed.items() if not k.startswith("*.")}
        self._rate_exact, self._rate_patterns = exact, {k: r for k, r in keyed.items() if k.startswith("*.")}
        self._changed()

    def set_stored_rates(self, rates: Mapping[HostKey, Rate], default: Rate | None) -> None:
        """The fleet's stored rates replace the previous ones (they come before this process's)."""
        exact = {k: r for k, r in rates.items() if not k.startswith("*.")}
        patterns = {k: r for k, r in rates.items() if k.startswith("*.")}
        self._stored_rate_exact, self._stored_rate_patterns = exact, patterns
        self.stored_default_rate = default
        self._changed()

    def stored_rates(self) -> dict[HostKey, Rate]:
        return {**self._stored_rate_exact, **self._stored_rate_patterns}

    def rates(self) -> dict[HostKey, Rate]:
        """This process's own rates, hosts and patterns."""
        return {**self._rate_exact, **self._rate_patterns}

    def shared_cap_for(self, key: HostKey) -> SharedCap | None:
        """The shared cap ``key`` counts against too (the first that covers it), if any."""
        return self.policy_for(key).cap

    def _shared_cap(self, key: HostKey) -> SharedCap | None:
        return next((cap for cap in self.shared if cap.covers(key)), None)

    def has_override(self, key: HostKey) -> bool:
        return key in self._exact

    def set(self, host: str, limit: int) -> None:
        """Set one host's (or pattern's) limit; 0 or less removes it (reference semantics)."""
        key = normalize_limit_spec(host)
        updated = {**self._exact, **self._patterns}
        if limit > 0:
            updated[key] = int(limit)
        else:
            updated.pop(key, None)
        self._load(updated)

    def remove(self, host: str) -> None:
        self.set(host, 0)

    def replace(self, limits: Mapping[str, int]) -> None:
        self._load({normalize_limit_spec(host): int(n) for host, n in limits.items()})

    def replace_shared(self, shared: Iterable[SharedCap]) -> None:
        self.shared = tuple(shared)
        self._changed()

    def set_default(self, limit: int) -> None:
        self.default = _check_limit(limit)
        self._changed()

    def overrides(self) -> dict[HostKey, int]:
        """Limits of single hosts (patterns are in ``patterns()``)."""
        return dict(self._exact)

    def patterns(self) -> dict[str, int]:
        return dict(self._patterns)


def _lookup(key: HostKey, exact: Mapping[HostKey, T], patterns: Mapping[str, T]) -> T | None:
    limit = exact.get(key)
    if limit is not None or not patterns:
        return limit
    for candidate in pattern_candidates(key):
        limit = patterns.get(candidate)
        if limit is not None:
            return limit
    return None


def _check_limit(limit: int) -> int:
    limit = int(limit)
    if limit < 0:
        raise ValueError(f"limit must be 0 (unlimited) or more, got {limit}")
    return limit
