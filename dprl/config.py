"""The one typed configuration object, validated once at start.

The CLI fills it from flags, env vars and an INI file (``cli.py``); the library fills it
from keyword arguments. Every check lives in ``validate`` so both paths agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote

from .access import (
    DEFAULT_ALLOW_CLIENTS,
    DEFAULT_DENY_DESTINATIONS,
    AccessPolicy,
    parse_credentials,
    parse_networks,
    parse_ports,
)
from .errors import ConfigError
from .hosts import normalize_host_spec, split_authority

LOG_LEVELS = ("debug", "info", "warn", "warning", "error")


@dataclass
class Config:
    port: int = 8080
    bind: str = "0.0.0.0"
    max_connections: int = 0  # default per-host cap; 0 = unlimited
    host_limits: dict[str, int] = field(default_factory=dict)
    log_level: str = "info"
    redis_addr: str = ""
    redis_password: str = ""
    redis_db: int = 0
    redis_url: str = ""  # redis://, rediss:// or unix://; alternative to redis_addr
    redis_prefix: str = "proxy_rate_limiter"
    redis_timeout: float = 0.5  # connect and per-call timeout
    lease_ttl: float = 15.0  # a dead worker's slots come back within this
    on_redis_error: str = "reject"  # reject | allow | local
    connect_timeout: float = 10.0  # upstream dial, including name resolution
    header_timeout: float = 30.0  # a client's whole request head must arrive within this
    idle_timeout: float = 60.0  # keep-alive idle, and the longest stall in a request body
    shutdown_timeout: float = 10.0
    max_request_line: int = 8192
    max_header_size: int = 65536
    max_header_count: int = 100
    max_clients: int = 10000
    refusal_log_interval: float = 10.0
    tunnel_idle_timeout: float = 0.0  # close a tunnel with no bytes either way for this long; 0 = never
    allow_clients: str = DEFAULT_ALLOW_CLIENTS  # CIDRs allowed to use the proxy
    proxy_auth: str = ""  # user:password (Basic); empty = no authentication
    proxy_auth_file: str = ""  # one user:password a line
    connect_ports: str = ""  # CONNECT destination ports, e.g. 443,8443; empty = any
    deny_destinations: str = DEFAULT_DENY_DESTINATIONS  # refused after name resolution

    def validate(self) -> Config:
        """Raise ConfigError (one line, for a user) on the first invalid value."""
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be 0-65535, got {self.port}")
        if not self.bind:
            raise ConfigError("bind address must not be empty")
        if self.max_connections < 0:
            raise ConfigError(f"max-connections must be 0 (unlimited) or more, got {self.max_connections}")
        limits: dict[str, int] = {}
        for host, limit in self.host_limits.items():
            try:
                key = normalize_host_spec(host)
            except ValueError as exc:
                raise ConfigError(f"host limit {host!r}: {exc}") from None
            if limit < 0:
                raise ConfigError(f"host limit for {host!r} must be 0 or more, got {limit}")
            limits[key] = limit
        self.host_limits = limits
        level = self.log_level.lower()
        if level not in LOG_LEVELS:
            raise ConfigError(f"log-level must be one of debug, info, warn, error; got {self.log_level!r}")
        self.log_level = level
        if self.redis_addr:
            try:
                split_authority(self.redis_addr, 6379)
            except ValueError as exc:
                raise ConfigError(f"redis-addr must be host:port: {exc}") from None
        if self.redis_db < 0:
            raise ConfigError(f"redis-db must be 0 or more, got {self.redis_db}")
        if self.redis_url and self.redis_addr:
            raise ConfigError("give either redis-url or redis-addr, not both")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"redis-url must start with redis://, rediss:// or unix://, got {self.redis_url!r}")
        if not self.redis_prefix or any(c in self.redis_prefix for c in "{} \t\r\n"):
            raise ConfigError(f"redis-prefix must be non-empty, without braces or spaces: {self.redis_prefix!r}")
        if self.on_redis_error not in ("reject", "allow", "local"):
            raise ConfigError(f"on-redis-error must be reject, allow or local; got {self.on_redis_error!r}")
        if self.lease_ttl < 0.3:
            raise ConfigError(f"lease-ttl must be at least 0.3 seconds, got {self.lease_ttl}")
        for name in ("connect_timeout", "header_timeout", "idle_timeout", "refusal_log_interval", "redis_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name.replace('_', '-')} must be more than 0, got {getattr(self, name)}")
        if self.tunnel_idle_timeout < 0:
            raise ConfigError(f"tunnel-idle-timeout must be 0 (off) or more, got {self.tunnel_idle_timeout}")
        self.access_policy()  # raises ConfigError on a bad CIDR, port list or credentials file
        if self.shutdown_timeout < 0:
            raise ConfigError(f"shutdown-timeout must be 0 or more, got {self.shutdown_timeout}")
        for name in ("max_request_line", "max_header_size", "max_header_count", "max_clients"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        return self

    def access_policy(self) -> AccessPolicy:
        return AccessPolicy(
            allow_clients=parse_networks(self.allow_clients, "allow-clients"),
            credentials=parse_credentials(self.proxy_auth, self.proxy_auth_file),
            connect_ports=parse_ports(self.connect_ports),
            deny_destinations=parse_networks(self.deny_destinations, "deny-destinations"),
        )

    @property
    def effective_redis_url(self) -> str:
        """The Redis URL to use, or "" for local mode."""
        if self.redis_url:
            return self.redis_url
        if self.redis_addr:
            auth = f":{quote(self.redis_password, safe='')}@" if self.redis_password else ""
            return f"redis://{auth}{self.redis_addr}/{self.redis_db}"
        return ""


def parse_host_limit(text: str) -> tuple[str, int]:
    """``HOST=N`` as written on the command line, in env vars and in the INI file."""
    host, sep, number = text.partition("=")
    host, number = host.strip(), number.strip()
    if not sep or not host or not number.isdigit():
        raise ConfigError(f"host limit must be HOST=N with N a whole number, got {text!r}")
    try:
        return normalize_host_spec(host), int(number)
    except ValueError as exc:
        raise ConfigError(f"host limit {text!r}: {exc}") from None


def parse_host_limits(text: str) -> dict[str, int]:
    """Comma-separated ``HOST=N`` pairs (``DPRL_HOST_LIMITS``)."""
    limits: dict[str, int] = {}
    for item in text.split(","):
        if item.strip():
            host, limit = parse_host_limit(item)
            limits[host] = limit
    return limits


__all__ = ["Config", "parse_host_limit", "parse_host_limits"]
