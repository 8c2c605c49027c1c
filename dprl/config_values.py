"""The values of dprl's options: text (a flag, an env var, an INI value) parsed into
values, and the checks each value passes once, when a Config is made. Every error is a
``ConfigError`` with a one-line message meant for a user.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import ConfigError
from .http.target import split_authority
from .limits.hosts import HostKey, normalize_limit_spec
from .limits.rates import Rate, parse_rate
from .limits.tenants import Share, check_tenant_name, parse_share, parse_shares
from .parents.spec import PoolSpec, parse_pool, parse_pools, parse_route, parse_routes
from .proxy.tenancy import TENANT_BY

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
T = TypeVar("T")


# value parsers (text as typed on a command line, in an env var or an INI file) ------------
def parse_host_limit(text: str) -> tuple[str, int]:
    """``HOST=N`` (the host is normalised later, once, with the rest of the limits)."""
    host, sep, number = text.partition("=")
    host, number = host.strip(), number.strip()
    if not sep or not host or not number.isdigit():
        raise ConfigError(f"host limit must be HOST=N with N a whole number, got {text!r}")
    return host, int(number)


def parse_host_limits(text: str) -> dict[str, int]:
    """Comma-separated ``HOST=N`` pairs."""
    return dict(parse_host_limit(item) for item in text.split(",") if item.strip())


def parse_host_rates(text: str) -> dict[str, Rate]:
    """Comma-separated ``HOST=RATE`` pairs (``api.example.com=10/s:burst=20,*.cdn.net=5/s``)."""
    rates = {}
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        host, sep, spec = item.partition("=")
        if not sep or not host.strip():
            raise ConfigError(f"host rate must be HOST=RATE (10/s, 600/m, 5/s:burst=10), got {item!r}")
        try:
            rate = parse_rate(spec)
        except ValueError as exc:
            raise ConfigError(f"{host.strip()}: {exc}") from None
        if rate is None:
            raise ConfigError(f"host rate for {host.strip()!r} must be more than 0, got {spec.strip()!r}")
        rates[host.strip()] = rate
    return rates


def parse_shared_rates(text: str) -> dict[str, Rate]:
    """Comma-separated ``NAME=RATE`` pairs: a rate for the hosts of the shared cap NAME."""
    rates = parse_host_rates(text)  # the same form, with a cap's name where a host stands
    return {name: rate for name, rate in rates.items()}


def parse_default_rate(text: str) -> Rate | None:
    try:
        return parse_rate(text)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def parse_bool(text: str) -> bool:
    """``true/false``, ``yes/no``, ``on/off``, ``1/0`` (a flag, an env var or an INI value)."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"must be true or false, got {text!r}")


def parse_shared_limit(text: str) -> tuple[str, tuple[int, tuple[str, ...]]]:
    """``NAME=N:HOST,*.DOMAIN,...`` -> (name, (N, specs))."""
    name, sep, rest = text.partition("=")
    number, colon, specs = rest.partition(":")
    name, number = name.strip(), number.strip()
    hosts = tuple(h.strip() for h in specs.split(",") if h.strip())
    if not sep or not colon or not name or not number.isdigit() or not hosts:
        raise ConfigError(f"shared limit must be NAME=N:HOST,*.DOMAIN,... with N a whole number, got {text!r}")
    return name, (int(number), hosts)


def parse_shared_limits(text: str) -> dict[str, tuple[int, tuple[str, ...]]]:
    """Shared limits separated by ``;``."""
    return dict(parse_shared_limit(item) for item in text.split(";") if item.strip())


def parse_tenant_shares(text: str) -> dict[str, Share]:
    """Comma-separated ``NAME=WEIGHT[:max=N%]``."""
    try:
        return parse_shares(text)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def parse_parent_pools(text: str) -> dict[str, PoolSpec]:
    """Pools separated by ``;``: ``NAME=URL[,URL...][,select=STRATEGY][,max=N]``."""
    try:
        return parse_pools(text)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def parse_parent_routes(text: str) -> dict[str, str]:
    """Comma-separated ``PATTERN=POOL|direct``, in order."""
    try:
        return parse_routes(text)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def parse_tenant_groups(text: str) -> dict[str, tuple[IPNetwork, ...]]:
    """Comma-separated ``NAME=CIDR``; a name given again adds a network to its group."""
    groups: dict[str, tuple[IPNetwork, ...]] = {}
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        name, sep, cidr = item.partition("=")
        if not sep:
            raise ConfigError(f"a tenant group is NAME=CIDR, got {item!r}")
        try:
            name = check_tenant_name(name)
            network = ipaddress.ip_network(cidr.strip(), strict=False)
        except ValueError as exc:
            raise ConfigError(f"tenant group {item!r}: {exc}") from None
        groups[name] = (*groups.get(name, ()), network)
    return groups


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    networks = []
    for item in (i.strip() for i in text.split(",")):
        if item:
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ConfigError(f"{item!r} is not an IP address or CIDR range") from None
    return tuple(networks)


def parse_ports(text: str) -> frozenset[int] | None:
    """``443,8443,9000-9100`` -> the set of ports; empty text -> None (any port)."""
    if not text.strip():
        return None
    ports: set[int] = set()
    for item in (i.strip() for i in text.split(",")):
        low, sep, high = item.partition("-")
        try:
            first, last = int(low), int(high if sep else low)
        except ValueError:
            raise ConfigError(f"{item!r} is not a port or a range") from None
        if not 0 < first <= last < 65536:
            raise ConfigError(f"{item!r} is not within 1-65535")
        ports.update(range(first, last + 1))
    return frozenset(ports)


def read_credentials(inline: str, path: str) -> tuple[bytes, ...]:
    """``user:password`` pairs from the option and from a file (one a line, # comments)."""
    lines = [("proxy-auth", inline)] if inline else []
    if path:
        try:
            with open(path, encoding="utf-8") as source:
                lines += [(f"proxy-auth-file line {n}", line) for n, line in enumerate(source.read().splitlines(), 1)]
        except OSError as exc:
            raise ConfigError(f"proxy-auth-file: cannot read {path}: {exc.strerror}") from None
    credentials = []
    for where, line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, _ = line.partition(":")
        if not sep or not user:
            raise ConfigError(f"{where}: expected user:password")
        credentials.append(line.encode("utf-8"))
    return tuple(credentials)


# checks -------------------------------------------------------------------------------------
def _at_least(low: float, what: str = "") -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value < low:
            raise ConfigError(f"must be {what or f'at least {low:g}'}, got {value}")
        return value

    return check


def _positive(value: float) -> float:
    if value <= 0:
        raise ConfigError(f"must be more than 0, got {value}")
    return value


def _one_of(choices: tuple[str, ...]) -> Callable[[str], str]:
    shown = [c for c in choices if c != "warning"]
    listed = f"{', '.join(shown[:-1])} or {shown[-1]}"

    def check(value: str) -> str:
        if value.lower() not in choices:
            raise ConfigError(f"must be {listed}; got {value!r}")
        return value.lower()

    return check


def _port(value: int) -> int:
    if not 0 <= value <= 65535:
        raise ConfigError(f"must be 0-65535, got {value}")
    return value


def _reject_status(value: int) -> int:
    if not 400 <= value <= 599:
        raise ConfigError(f"must be an HTTP error status (400-599; 429, 500 and 503 are usual), got {value}")
    return value


def _workers(value: str) -> str:
    text = str(value).strip().lower()
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"must be a whole number of 1 or more, or auto; got {value!r}")
    return text


def _not_empty(value: str) -> str:
    if not value:
        raise ConfigError("must not be empty")
    return value


def _redis_addr(value: str) -> str:
    if value:
        try:
            split_authority(value, 6379)
        except ValueError as exc:
            raise ConfigError(f"must be host:port: {exc}") from None
    return value


def _field_name(value: str) -> str:
    """An HTTP field name (RFC 9110 5.1: a token)."""
    if not value or not all(c.isalnum() or c in "!#$%&'*+-.^_`|~" for c in value) or not value.isascii():
        raise ConfigError(f"must be a header name (letters, digits, '-'...), got {value!r}")
    return value


def _tenant_by(value: str) -> str:
    """One of TENANT_BY, or "" (the default: user with proxy auth, else client)."""
    if value and value not in TENANT_BY:
        raise ConfigError(f"must be {', '.join(TENANT_BY[:-1])} or {TENANT_BY[-1]}, got {value!r}")
    return value


def _parent_pools(value: dict[str, PoolSpec | str]) -> dict[str, PoolSpec]:
    """The library may give a pool as its text (``"http://p1:3128,http://p2:3128,select=least-connections"``)."""
    pools = {}
    try:
        for name, pool in value.items():
            pools[name] = parse_pool(f"{name}={pool}") if isinstance(pool, str) else pool
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return pools


def _parent_routes(value: dict[str, str]) -> dict[str, str]:
    try:
        return dict(parse_route(f"{pattern}={pool}") for pattern, pool in value.items())
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _tenant_shares(value: dict[str, Share | str]) -> dict[str, Share]:
    """The library may give a share as its text (``"3:max=50%"``)."""
    shares = {}
    for name, share in value.items():
        try:
            if isinstance(share, str):
                name, share = parse_share(f"{name}={share}")
            shares[check_tenant_name(name)] = share
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    return shares


def _tenant_groups(value: dict[str, Any]) -> dict[str, tuple[IPNetwork, ...]]:
    """The library may give a group's networks as text (``("10.0.0.0/8",)``)."""
    text = ",".join(f"{name}={net}" for name, nets in value.items() for net in nets)
    return parse_tenant_groups(text)


def _redis_prefix(value: str) -> str:
    if not value or any(c in value for c in "{} \t\r\n"):
        raise ConfigError(f"must be non-empty, without braces or spaces: {value!r}")
    return value


def _by_host_key(value: dict[str, T], what: str) -> dict[HostKey, T]:
    """``value`` keyed by normalised host keys and patterns; a bad host is one line."""
    keyed = {}
    for host, item in value.items():
        try:
            keyed[normalize_limit_spec(host)] = item
        except ValueError as exc:
            raise ConfigError(f"{what} {host!r}: {exc}") from None
    return keyed


def _host_limits(value: dict[str, int]) -> dict[HostKey, int]:
    for host, limit in value.items():
        if int(limit) < 0:
            raise ConfigError(f"host limit for {host!r} must be 0 or more, got {limit}")
    return {key: int(limit) for key, limit in _by_host_key(value, "host limit").items()}


def _host_rates(value: dict[str, Rate]) -> dict[HostKey, Rate]:
    return _by_host_key(value, "host rate")


def _default_rate(value: Rate | str | None) -> Rate | None:
    """The library may pass a Rate or its text; "0" and None mean none."""
    return parse_default_rate(value) if isinstance(value, str) else value


def _shared_limits(value: dict) -> dict[str, tuple[int, tuple[HostKey, ...]]]:
    shared = {}
    for name, (limit, specs) in value.items():
        try:
            keys = tuple(normalize_limit_spec(spec) for spec in specs)
        except ValueError as exc:
            raise ConfigError(f"shared limit {name!r}: {exc}") from None
        if int(limit) < 1:
            raise ConfigError(f"shared limit {name!r} must be 1 or more, got {limit}")
        shared[name] = (int(limit), keys)
    return shared
