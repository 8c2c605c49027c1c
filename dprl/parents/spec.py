"""Parent proxies as configured: pools of parent URLs, and routes from destinations to pools.

Pure parsing, no sockets. A pool is ``NAME=URL[,URL...][,select=STRATEGY][,max=N]``; a
parent URL is ``SCHEME://[USER:PASSWORD@]HOST:PORT[?max=N&weight=W]`` with SCHEME
``http``, ``https``, ``socks5`` (dprl resolves the destination) or ``socks5h`` (the parent
does). A route is ``PATTERN=POOL`` or ``PATTERN=direct``: a host, a ``*.DOMAIN`` pattern
(as for limits) or ``*`` (every destination); the first matching route wins.

A parent's credentials live only in ``ParentSpec.username``/``password``: its ``label``
(what logs, pages and metrics show) is ``POOL/HOST:PORT`` and never carries them.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..http.target import split_authority
from ..limits.hosts import HostKey, normalize_limit_spec, pattern_candidates
from ..redact import masked_url

SCHEMES = ("http", "https", "socks5", "socks5h")
STRATEGIES = ("round-robin", "least-connections", "destination-hash")
DIRECT = "direct"
EVERYTHING = "*"


@dataclass(frozen=True)
class ParentSpec:
    """One parent proxy of a pool."""

    pool: str
    scheme: str
    host: str  # normalised (IPv6 in brackets)
    port: int
    username: str = field(default="", repr=False)
    password: str = field(default="", repr=False)
    max_connections: int = 0  # this parent's cap, fleet-wide (0: none)
    weight: int = 1

    @property
    def label(self) -> str:
        """``POOL/HOST:PORT``: what logs, pages and metrics name it by (no credentials)."""
        return f"{self.pool}/{self.host}:{self.port}"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class PoolSpec:
    name: str
    parents: tuple[ParentSpec, ...]
    select: str = "round-robin"


def _check_name(name: str, what: str) -> str:
    name = name.strip()
    if not name or not all(c.isalnum() or c in "_.-" for c in name) or name == DIRECT:
        raise ValueError(f"a {what} name is letters, digits, '_', '.' or '-' (and not 'direct'), got {name!r}")
    return name


def parse_parent_url(pool: str, url: str, pool_max: int = 0) -> ParentSpec:
    """One parent: ``SCHEME://[USER:PASSWORD@]HOST:PORT[?max=N&weight=W]``."""
    shown = masked_url(url.strip())  # errors show the URL without its password
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in SCHEMES:
        raise ValueError(f"a parent URL starts with {', '.join(s + '://' for s in SCHEMES)}; got {shown!r}")
    if parts.path not in ("", "/") or parts.fragment:
        raise ValueError(f"a parent URL is SCHEME://HOST:PORT, without a path; got {shown!r}")
    authority = parts.netloc.rpartition("@")[2]
    try:
        host, port = split_authority(authority, None)
    except ValueError:
        raise ValueError(f"a parent URL needs a host and a port; got {shown!r}") from None
    options = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    unknown = set(options) - {"max", "weight"}
    if unknown:
        raise ValueError(f"a parent URL's options are max= and weight=, got {sorted(unknown)} in {shown!r}")
    cap, weight = pool_max, 1
    try:
        if "max" in options:
            cap = int(options["max"][-1])
        if "weight" in options:
            weight = int(options["weight"][-1])
    except ValueError:
        raise ValueError(f"max= and weight= are whole numbers, in {shown!r}") from None
    if cap < 0 or weight < 1:
        raise ValueError(f"max= is 0 (no cap) or more and weight= 1 or more, in {shown!r}")
    username = urllib.parse.unquote(parts.username or "")
    password = urllib.parse.unquote(parts.password or "")
    return ParentSpec(pool, parts.scheme, host, port, username, password, cap, weight)


def parse_pool(text: str) -> PoolSpec:
    """``NAME=URL[,URL...][,select=STRATEGY][,max=N]``."""
    name, sep, rest = text.partition("=")
    if not sep:
        raise ValueError(f"a parent pool is NAME=URL[,URL...], got {masked_url(text.strip())!r}")
    name = _check_name(name, "pool")
    urls, select, pool_max = [], "round-robin", 0
    for item in (i.strip() for i in rest.split(",")):
        if "://" in item:
            urls.append(item)
        elif item.startswith("select="):
            select = item[len("select=") :].strip()
            if select not in STRATEGIES:
                raise ValueError(f"pool {name}: select= is one of {', '.join(STRATEGIES)}, got {select!r}")
        elif item.startswith("max="):
            try:
                pool_max = int(item[len("max=") :])
            except ValueError:
                raise ValueError(f"pool {name}: max= is a whole number, got {item!r}") from None
            if pool_max < 0:
                raise ValueError(f"pool {name}: max= is 0 (no cap) or more, got {item!r}")
        elif item:
            raise ValueError(f"pool {name}: expected a parent URL, select= or max=, got {masked_url(item)!r}")
    if not urls:
        raise ValueError(f"pool {name} has no parent URL")
    parents = tuple(parse_parent_url(name, url, pool_max) for url in urls)
    seen = [p.address for p in parents]
    if len(set(seen)) != len(seen):
        raise ValueError(f"pool {name} names a parent twice")
    return PoolSpec(name, parents, select)


def parse_pools(text: str) -> dict[str, PoolSpec]:
    """Pools separated by ``;`` (``--parent-pools``, the environment, an INI section)."""
    pools: dict[str, PoolSpec] = {}
    for item in (i for i in text.split(";") if i.strip()):
        pool = parse_pool(item)
        pools[pool.name] = pool
    return pools


def parse_route(text: str) -> tuple[str, str]:
    """``PATTERN=POOL`` or ``PATTERN=direct``: (normalised pattern, pool)."""
    pattern, sep, pool = text.rpartition("=")
    if not sep or not pattern.strip():
        raise ValueError(f"a route is PATTERN=POOL or PATTERN=direct, got {text.strip()!r}")
    pattern = pattern.strip()
    if pattern != EVERYTHING:
        pattern = normalize_limit_spec(pattern)
    pool = pool.strip()
    return pattern, pool if pool == DIRECT else _check_name(pool, "pool")


def parse_routes(text: str) -> dict[str, str]:
    """Comma-separated ``PATTERN=POOL|direct``, in order (the first match wins)."""
    return dict(parse_route(item) for item in text.split(",") if item.strip())


def check_routes(routes: Mapping[str, str], pools: Iterable[str]) -> None:
    known = set(pools)
    for pattern, pool in routes.items():
        if pool != DIRECT and pool not in known:
            raise ValueError(f"route {pattern}={pool}: no parent pool named {pool!r} (--parent-pool {pool}=URL,...)")


def route_for(routes: Mapping[str, str], key: HostKey) -> str:
    """The pool (or ``direct``) of destination ``key``: the first route that matches it."""
    if not routes:
        return DIRECT
    candidates = {key, *pattern_candidates(key), EVERYTHING}
    for pattern, pool in routes.items():
        if pattern in candidates:
            return pool
    return DIRECT
