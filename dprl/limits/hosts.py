"""Host keys (what a slot is counted against) and per-host limits.

Normalisation rules (DESIGN.md section 2): lowercase, no trailing dot, IPv6 literals in
brackets, port dropped when it is 80 or 443. Configured limits go through the same
function, so ``set_host_limit("API.example.com:443", 5)`` and a CONNECT to
``api.example.com:443`` meet on the same key.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..http.target import parse_host, split_authority

HostKey = str

DEFAULT_PORTS = (80, 443)


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


class HostLimits:
    """The default cap plus per-host overrides; ``0`` means unlimited.

    Keys given to the constructor are host keys already (the configuration normalised
    them once); ``set`` and ``replace`` take what a user typed. Updates replace whole
    dicts instead of mutating them, so a reader in another thread (the library's
    background proxy) never sees a half-applied ``replace``.
    """

    def __init__(self, default: int = 0, overrides: Mapping[HostKey, int] | None = None) -> None:
        self.default = _check_limit(default)
        self._overrides: dict[HostKey, int] = {key: limit for key, limit in (overrides or {}).items() if limit > 0}

    def limit_for(self, key: HostKey) -> int:
        return self._overrides.get(key, self.default)

    def has_override(self, key: HostKey) -> bool:
        return key in self._overrides

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
        self._overrides = {normalize_host_spec(host): int(n) for host, n in limits.items() if int(n) > 0}

    def set_default(self, limit: int) -> None:
        self.default = _check_limit(limit)

    def overrides(self) -> dict[HostKey, int]:
        return dict(self._overrides)


def _check_limit(limit: int) -> int:
    limit = int(limit)
    if limit < 0:
        raise ValueError(f"limit must be 0 (unlimited) or more, got {limit}")
    return limit
