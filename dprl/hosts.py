"""Host keys (what a slot is counted against) and per-host limits.

Normalisation rules (DESIGN.md section 2): lowercase, no trailing dot, IPv6 literals in
brackets, port dropped when it is 80 or 443. Configured limits go through the same
function, so ``set_host_limit("API.example.com:443", 5)`` and a CONNECT to
``api.example.com:443`` meet on the same key.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping

HostKey = str

DEFAULT_PORTS = (80, 443)
# RFC 1123 labels, plus "_" which real DNS names carry (service records, some CDNs).
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_REG_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
# RFC 3986 3.2.3: port = *DIGIT; leading zeros name the same port (":00080" is 80)
_PORT = re.compile(r"[0-9]{1,16}")


def parse_host(host: str) -> str:
    """Validate and normalise a bare host (no port); raise ValueError if it is not one.

    IPv6 literals come back in brackets, compressed; names lowercased without trailing dot.
    Zone ids (``fe80::1%eth0``) are refused: they name an interface of one machine, not a
    destination, and Python would otherwise accept any text after the ``%``.
    """
    if "%" in host:
        raise ValueError(f"invalid host {host!r}")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"unterminated IPv6 literal {host!r}")
        inner = host[1:-1]
        try:
            return f"[{ipaddress.IPv6Address(inner).compressed}]"
        except ValueError:
            raise ValueError(f"invalid IPv6 literal {host!r}") from None
    if ":" in host:
        try:  # a bare IPv6 literal, as people write them in config files
            return f"[{ipaddress.IPv6Address(host).compressed}]"
        except ValueError:
            raise ValueError(f"invalid host {host!r}") from None
    name = host.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > 253 or not _REG_NAME.fullmatch(name):
        raise ValueError(f"invalid host name {host!r}")
    return name


def parse_port(text: str) -> int:
    if not _PORT.fullmatch(text) or not 0 < int(text) < 65536:
        raise ValueError(f"invalid port {text!r}")
    return int(text)


def split_authority(authority: str, default_port: int | None) -> tuple[str, int]:
    """Split ``host[:port]`` into a normalised host and a port.

    ``default_port=None`` means the port is required (CONNECT's authority-form).
    """
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise ValueError(f"unterminated IPv6 literal in {authority!r}")
        host, rest = authority[: end + 1], authority[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"invalid authority {authority!r}")
        port_text = rest[1:] if rest else None
    elif authority.count(":") == 1:
        host, port_text = authority.split(":")
    elif ":" in authority:
        raise ValueError(f"IPv6 literal must be in brackets: {authority!r}")
    else:
        host, port_text = authority, None
    if port_text is None:
        if default_port is None:
            raise ValueError(f"port required in {authority!r}")
        port = default_port
    else:
        port = parse_port(port_text)
    return parse_host(host), port


def host_key(host: str, port: int) -> HostKey:
    """The key a slot is counted against; ``host`` is already normalised by parse_host."""
    return host if port in DEFAULT_PORTS else f"{host}:{port}"


def normalize_host_spec(spec: str) -> HostKey:
    """Normalise a configured host (``api.example.com``, ``b.example.com:8443``, ``::1``)."""
    spec = spec.strip()
    if spec.startswith("[") or spec.count(":") <= 1:
        host, port = split_authority(spec, 443)
    else:  # bare IPv6 literal without a port
        host, port = parse_host(spec), 443
    return host_key(host, port)


class HostLimits:
    """The default cap plus per-host overrides; ``0`` means unlimited.

    Updates replace whole dicts instead of mutating them, so a reader in another thread
    (the library's background proxy) never sees a half-applied ``set_host_limits``.
    """

    def __init__(self, default: int = 0, overrides: Mapping[str, int] | None = None) -> None:
        self.default = _check_limit(default)
        self._overrides: dict[HostKey, int] = {}
        if overrides:
            self.replace(overrides)

    def limit_for(self, key: HostKey) -> int:
        return self._overrides.get(key, self.default)

    def set(self, host: str, limit: int) -> None:
        """Set one host's limit; 0 or less removes the override (reference semantics)."""
        key = normalize_host_spec(host)
        updated = dict(self._overrides)
        if limit > 0:
            updated[key] = int(limit)
        else:
            updated.pop(key, None)
        self._overrides = updated

    def remove(self, host: str) -> None:
        self.set(host, 0)

    def replace(self, limits: Mapping[str, int]) -> None:
        updated: dict[HostKey, int] = {}
        for host, limit in limits.items():
            if int(limit) > 0:
                updated[normalize_host_spec(host)] = int(limit)
        self._overrides = updated

    def set_default(self, limit: int) -> None:
        self.default = _check_limit(limit)

    def overrides(self) -> dict[HostKey, int]:
        return dict(self._overrides)


def _check_limit(limit: int) -> int:
    limit = int(limit)
    if limit < 0:
        raise ValueError(f"limit must be 0 (unlimited) or more, got {limit}")
    return limit
