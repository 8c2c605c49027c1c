"""Every option of dprl, defined once: flag, env var, default, type, check, help, group, docs row.

``Config`` is a frozen dataclass whose fields *are* the option table: the CLI builds its
flags, env vars and INI keys from the fields' metadata, the library passes keywords,
``scripts/options-table`` prints docs/configuration.md's table from it (a test holds the two
together), and each value is checked and normalised exactly once, when a Config is made.
A bad value is a ``ConfigError`` with a one-line message meant for a user.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import quote

from .config_values import (
    IPNetwork,
    _at_least,
    _default_rate,
    _field_name,
    _host_limits,
    _host_rates,
    _not_empty,
    _one_of,
    _parent_pools,
    _parent_routes,
    _port,
    _positive,
    _redis_addr,
    _redis_prefix,
    _reject_status,
    _shared_limits,
    _tenant_by,
    _tenant_groups,
    _tenant_shares,
    _workers,
    parse_bool,
    parse_default_rate,
    parse_host_limits,
    parse_host_rates,
    parse_networks,
    parse_parent_pools,
    parse_parent_routes,
    parse_ports,
    parse_shared_limits,
    parse_shared_rates,
    parse_tenant_groups,
    parse_tenant_shares,
    read_credentials,
)
from .errors import ConfigError
from .limits.hosts import SharedCap
from .limits.rates import Rate
from .limits.tenants import Share
from .parents.spec import PoolSpec, check_routes
from .proxy.tenancy import BY_CLIENT, BY_USER
from .redact import MASK, masked_url
from .redis.address import RedisDeployment

LOG_LEVELS = ("debug", "info", "warn", "warning", "error")
REDIS_POLICIES = ("reject", "allow", "local")
LEASE_LOSS_POLICIES = ("keep", "close")
LOG_FORMATS = ("text", "json")
DEFAULT_ALLOW_CLIENTS = "127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7,fe80::/10"
DEFAULT_DENY_DESTINATIONS = "169.254.0.0/16"


def option(
    default: Any,
    help: str,
    *,
    env: str,
    parse: Callable[[str], Any] | None = None,
    check: Callable[[Any], Any] | None = None,
    docs_default: str | None = None,
    metavar: str | None = None,
    repeat_flag: tuple[str, str, str] | None = None,
    secret: bool = False,
) -> Any:
    """A Config field that is an option. ``parse`` turns text (flag, env, INI) into the value
    (default: the field's type); ``check`` validates and may normalise it; ``repeat_flag`` is
    (flag, metavar, help) of a repeatable flag that adds single entries to a mapping."""
    metadata = {
        "env": env,
        "help": help,
        "parse": parse,
        "check": check,
        "docs_default": docs_default,
        "metavar": metavar,
        "repeat_flag": repeat_flag,
        "secret": secret,  # shown masked (redact.py) wherever a Config is rendered
    }
    factory = (lambda: dict(default)) if isinstance(default, dict) else None
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Config:
    # listening ------------------------------------------------------------------------------
    port: int = option(8080, "port to listen on (0 picks a free one)", env="DPRL_PORT", check=_port)
    bind: str = option("0.0.0.0", "address to listen on", env="DPRL_BIND", check=_not_empty)
    workers: str = option(
        "1",
        "worker processes sharing the port (auto = the CPUs this process may use: affinity, cgroup "
        "quota); in local mode they share one cap per machine through shared memory",
        env="DPRL_WORKERS",
        check=_workers,
    )
    max_clients: int = option(10000, "concurrent client connections", env="DPRL_MAX_CLIENTS", check=_at_least(1))
    # limits ---------------------------------------------------------------------------------
    max_connections: int = option(
        0,
        "default cap on concurrent upstream connections per host (0 = unlimited)",
        env="DPRL_MAX_CONNECTIONS",
        check=_at_least(0, "0 (unlimited) or more"),
    )
    host_limits: dict[str, int] = option(
        {},
        "per-host caps as HOST=N,*.DOMAIN=N (a pattern gives each host it matches a cap of its own; "
        "INI: a [host-limits] section)",
        env="DPRL_HOST_LIMITS",
        parse=parse_host_limits,
        check=_host_limits,
        docs_default="",
        metavar="HOST=N,...",
        repeat_flag=(
            "--host-limit",
            "HOST=N",
            "cap for one host (repeatable); overrides the same host in --host-limits",
        ),
    )
    shared_limits: dict[str, tuple[int, tuple[str, ...]]] = option(
        {},
        "caps shared by sets of hosts, as NAME=N:HOST,*.DOMAIN,...;NAME=N:... (INI: a [shared-limits] section)",
        env="DPRL_SHARED_LIMITS",
        parse=parse_shared_limits,
        check=_shared_limits,
        docs_default="",
        metavar="NAME=N:HOSTS;...",
        repeat_flag=(
            "--shared-limit",
            "NAME=N:HOSTS",
            "one shared cap (repeatable): these hosts together hold at most N connections",
        ),
    )
    max_rate: Rate | None = option(
        None,
        "default request rate per host: N/s, N/m or N/h, with an optional burst (10/s:burst=20); "
        "0 = none. Counts tunnels, upgrades and plain requests",
        env="DPRL_MAX_RATE",
        parse=parse_default_rate,
        check=_default_rate,
        docs_default="0 (none)",
        metavar="RATE",
    )
    host_rates: dict[str, Rate] = option(
        {},
        "per-host rates as HOST=RATE,*.DOMAIN=RATE (a pattern gives each host it matches a rate of its own; "
        "INI: a [host-rates] section)",
        env="DPRL_HOST_RATES",
        parse=parse_host_rates,
        check=_host_rates,
        docs_default="",
        metavar="HOST=RATE,...",
        repeat_flag=(
            "--host-rate",
            "HOST=RATE",
            "rate for one host (repeatable); overrides the same host in --host-rates",
        ),
    )
    shared_rates: dict[str, Rate] = option(
        {},
        "request rates shared by the hosts of a shared cap, as NAME=RATE,... (NAME of --shared-limits; "
        "INI: a [shared-rates] section)",
        env="DPRL_SHARED_RATES",
        parse=parse_shared_rates,
        docs_default="",
        metavar="NAME=RATE,...",
        repeat_flag=(
            "--shared-rate",
            "NAME=RATE",
            "one shared rate (repeatable): the hosts of shared cap NAME together get RATE",
        ),
    )
    # timeouts -------------------------------------------------------------------------------
    connect_timeout: float = option(
        10.0,
        "seconds to resolve and connect to an upstream (then 504)",
        env="DPRL_CONNECT_TIMEOUT",
        check=_positive,
    )
    upstream_timeout: float = option(
        60.0,
        "seconds an upstream may take to send a response head (then 504; 0 = no limit)",
        env="DPRL_UPSTREAM_TIMEOUT",
        check=_at_least(0, "0 (no limit) or more"),
    )
    header_timeout: float = option(
        30.0,
        "seconds for a client to send a whole request head (then 408)",
        env="DPRL_HEADER_TIMEOUT",
        check=_positive,
    )
    idle_timeout: float = option(
        60.0,
        "seconds a keep-alive client connection may sit idle, or stall mid-body",
        env="DPRL_IDLE_TIMEOUT",
        check=_positive,
    )
    tunnel_idle_timeout: float = option(
        0.0,
        "close a tunnel that carried no byte either way for this many seconds (0 = never)",
        env="DPRL_TUNNEL_IDLE_TIMEOUT",
        check=_at_least(0, "0 (off) or more"),
        docs_default="0 (off)",
    )
    tcp_keepalive: float = option(
        60.0,
        "seconds of silence before TCP keepalive probes on client and upstream sockets (0 = off)",
        env="DPRL_TCP_KEEPALIVE",
        check=_at_least(0, "0 (off) or more"),
    )
    shutdown_timeout: float = option(
        10.0,
        "seconds open connections get to finish on SIGTERM/SIGINT",
        env="DPRL_SHUTDOWN_TIMEOUT",
        check=_at_least(0, "0 or more"),
    )
    # request limits -------------------------------------------------------------------------
    max_request_line: int = option(
        8192, "longest request line, bytes (then 414)", env="DPRL_MAX_REQUEST_LINE", check=_at_least(1)
    )
    max_header_size: int = option(
        65536, "largest request head, bytes (then 431)", env="DPRL_MAX_HEADER_SIZE", check=_at_least(1)
    )
    max_header_count: int = option(
        100, "most header fields in a request (then 431)", env="DPRL_MAX_HEADER_COUNT", check=_at_least(1)
    )
    # access ---------------------------------------------------------------------------------
    allow_clients: str = option(
        DEFAULT_ALLOW_CLIENTS,
        "comma-separated CIDRs of clients allowed to use the proxy (others get 403)",
        env="DPRL_ALLOW_CLIENTS",
        docs_default="loopback + private ranges",
    )
    proxy_auth: str = option(
        "",
        "require Basic proxy authentication with this USER:PASSWORD (407 otherwise)",
        env="DPRL_PROXY_AUTH",
        secret=True,
    )
    proxy_auth_file: str = option(
        "", "file of USER:PASSWORD lines accepted for proxy authentication", env="DPRL_PROXY_AUTH_FILE"
    )
    connect_ports: str = option(
        "",
        "ports CONNECT may reach, e.g. 443,8443,9000-9100 (empty = any)",
        env="DPRL_CONNECT_PORTS",
        docs_default="any",
    )
    deny_destinations: str = option(
        DEFAULT_DENY_DESTINATIONS,
        "comma-separated CIDRs never connected to, checked after name resolution (403)",
        env="DPRL_DENY_DESTINATIONS",
    )
    # logging --------------------------------------------------------------------------------
    log_level: str = option("info", "debug, info, warn or error", env="LOG_LEVEL", check=_one_of(LOG_LEVELS))
    refusal_log_interval: float = option(
        10.0,
        "seconds between the aggregated 'refused N connections to HOST' warnings",
        env="DPRL_REFUSAL_LOG_INTERVAL",
        check=_positive,
    )
    access_log: bool = option(
        False,
        "log one line per finished upstream connection at info level (host, client, status, bytes)",
        env="DPRL_ACCESS_LOG",
        parse=parse_bool,
        docs_default="false",
    )
    log_format: str = option(
        "text", "text, or json (one JSON object a line)", env="DPRL_LOG_FORMAT", check=_one_of(LOG_FORMATS)
    )
    # refusals -------------------------------------------------------------------------------
    reject_status: int = option(
        500,
        "status of a refusal at the cap (500 is the reference's; 429 and 503 are usual)",
        env="DPRL_REJECT_STATUS",
        check=_reject_status,
    )
    retry_after: int = option(
        1,
        "Retry-After seconds sent with a refusal at the cap (0 = no header)",
        env="DPRL_RETRY_AFTER",
        check=_at_least(0, "0 (no header) or more"),
    )
    queue_timeout: float = option(
        0.0,
        "seconds a connection over the cap waits for a slot, first come first served (0 = refuse at once)",
        env="DPRL_QUEUE_TIMEOUT",
        check=_at_least(0, "0 (no waiting) or more"),
        docs_default="0 (refuse at once)",
    )
    max_queue: int = option(
        1000,
        "connections that may wait per host in this process; more are refused at once",
        env="DPRL_MAX_QUEUE",
        check=_at_least(1),
    )
    # tenants --------------------------------------------------------------------------------
    tenant_shares: dict[str, Share] = option(
        {},
        "shares of each host's cap and rate, as NAME=WEIGHT[:max=N%],... (a tenant is guaranteed "
        "its weight's part among the tenants that want the host, and borrows idle slots up to its max; "
        "unknown tenants are 'default', weight 1; INI: a [tenant-shares] section)",
        env="DPRL_TENANT_SHARES",
        parse=parse_tenant_shares,
        check=_tenant_shares,
        docs_default="",
        metavar="NAME=WEIGHT,...",
        repeat_flag=(
            "--tenant-share",
            "NAME=WEIGHT[:max=N%]",
            "one tenant's share (repeatable); overrides the same tenant in --tenant-shares",
        ),
    )
    tenant_by: str = option(
        "",
        "who a request's tenant is: user (its proxy-auth user name), client (its address, or the "
        "--tenant-groups group it is in) or header (--tenant-header); default: user with --proxy-auth, else client",
        env="DPRL_TENANT_BY",
        check=_tenant_by,
        docs_default="user with auth, else client",
    )
    tenant_groups: dict[str, tuple[IPNetwork, ...]] = option(
        {},
        "client address groups that are tenants, as NAME=CIDR,... (a name may repeat; the first match wins)",
        env="DPRL_TENANT_GROUPS",
        parse=parse_tenant_groups,
        check=_tenant_groups,
        docs_default="",
        metavar="NAME=CIDR,...",
    )
    tenant_header: str = option(
        "X-Dprl-Tenant",
        "the request header that names the tenant with --tenant-by header (read on CONNECT and plain "
        "requests, never forwarded upstream)",
        env="DPRL_TENANT_HEADER",
        check=_field_name,
    )
    # parent proxies -------------------------------------------------------------------------
    parent_pools: dict[str, PoolSpec] = option(
        {},
        "pools of parent proxies, as NAME=URL[,URL...][,select=STRATEGY][,max=N];... (URLs http://, https://, "
        "socks5://, socks5h://, credentials in the URL, ?max=N caps one parent fleet-wide, ?weight=N; STRATEGY: "
        "round-robin, least-connections or destination-hash; INI: a [parent-pools] section)",
        env="DPRL_PARENT_POOLS",
        parse=parse_parent_pools,
        check=_parent_pools,
        docs_default="",
        metavar="NAME=URL,...;...",
        repeat_flag=("--parent-pool", "NAME=URL,...", "one pool of parent proxies (repeatable)"),
        secret=True,
    )
    routes: dict[str, str] = option(
        {},
        "which destinations go through which pool, as PATTERN=POOL,... (HOST, *.DOMAIN or *; POOL may be "
        "direct; the first match wins; unmatched: direct; INI: a [routes] section)",
        env="DPRL_ROUTES",
        parse=parse_parent_routes,
        check=_parent_routes,
        docs_default="",
        metavar="PATTERN=POOL,...",
        repeat_flag=("--route", "PATTERN=POOL", "one route (repeatable; in order, the first match wins)"),
    )
    parent_auth: str = option(
        "own",
        "credentials for parents: own (each parent URL's, the client's Proxy-Authorization is never "
        "forwarded) or passthrough (the client's Proxy-Authorization goes to the parent unchanged)",
        env="DPRL_PARENT_AUTH",
        check=_one_of(("own", "passthrough")),
    )
    parent_ca_file: str = option(
        "",
        "CA certificates (PEM) to verify https:// parents with, besides the system's",
        env="DPRL_PARENT_CA_FILE",
        metavar="FILE",
    )
    parent_failures: int = option(
        3,
        "consecutive failed connects or handshakes that eject a parent (probed again from 1 s to 60 s)",
        env="DPRL_PARENT_FAILURES",
        check=_at_least(1),
    )
    # operations -----------------------------------------------------------------------------
    admin_port: int = option(
        0,
        "port of the admin listener: /metrics, /healthz, /readyz, /hosts (0 = off)",
        env="DPRL_ADMIN_PORT",
        check=_port,
        docs_default="0 (off)",
    )
    admin_bind: str = option("127.0.0.1", "address of the admin listener", env="DPRL_ADMIN_BIND", check=_not_empty)
    admin_token: str = option(
        "",
        "Bearer token admin writes (PUT/DELETE /limits) need; empty = writes only from loopback",
        env="DPRL_ADMIN_TOKEN",
        secret=True,
    )
    metrics_max_hosts: int = option(
        500,
        'most host label values in /metrics; the rest are summed under host="_other"',
        env="DPRL_METRICS_MAX_HOSTS",
        check=_at_least(1),
    )
    # distributed mode -----------------------------------------------------------------------
    redis_url: str = option(
        "",
        "Redis URL (redis://, rediss:// for TLS, unix://, redis+sentinel://, redis+cluster://): "
        "distributed mode; empty = local mode",
        env="REDIS_URL",
        secret=True,
    )
    redis_addr: str = option("", "Redis host:port, instead of --redis-url", env="REDIS_ADDR", check=_redis_addr)
    redis_password: str = option("", "Redis password (with --redis-addr)", env="REDIS_PASSWORD", secret=True)
    redis_db: int = option(
        0, "Redis database number (with --redis-addr)", env="REDIS_DB", check=_at_least(0, "0 or more")
    )
    redis_prefix: str = option(
        "proxy_rate_limiter", "prefix of every Redis key", env="DPRL_REDIS_PREFIX", check=_redis_prefix
    )
    redis_timeout: float = option(
        0.5, "seconds to connect to Redis and for each call", env="DPRL_REDIS_TIMEOUT", check=_positive
    )
    lease_ttl: float = option(
        15.0,
        "seconds after which a dead worker's slots are free again (refreshed every third of it)",
        env="DPRL_LEASE_TTL",
        check=_at_least(0.3),
    )
    on_redis_error: str = option(
        "reject",
        "when Redis is unreachable: reject (500), allow (fail open) or local (per-process caps)",
        env="DPRL_ON_REDIS_ERROR",
        check=_one_of(REDIS_POLICIES),
    )
    on_lease_loss: str = option(
        "keep",
        "when this worker cannot renew its lease before it runs out: keep its tunnels (they go on "
        "uncounted) or close them (the cap holds at the upstream)",
        env="DPRL_ON_LEASE_LOSS",
        check=_one_of(LEASE_LOSS_POLICIES),
    )
    redis_wait_replicas: int = option(
        0,
        "replicas that must confirm each admission (Redis WAIT) before it counts; 0 = do not wait",
        env="DPRL_REDIS_WAIT_REPLICAS",
        check=_at_least(0, "0 or more"),
    )

    # derived once from the options above (not options themselves)
    client_networks: tuple[IPNetwork, ...] = field(init=False, repr=False, compare=False)
    deny_networks: tuple[IPNetwork, ...] = field(init=False, repr=False, compare=False)
    connect_port_set: frozenset[int] | None = field(init=False, repr=False, compare=False)
    credentials: tuple[bytes, ...] = field(init=False, repr=False, compare=False)
    redis_deployment: RedisDeployment | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for spec in options():
            check = spec.metadata["check"]
            if check is not None:
                try:
                    object.__setattr__(self, spec.name, check(getattr(self, spec.name)))
                except (ConfigError, ValueError) as exc:
                    raise ConfigError(_message(flag(spec)[2:], exc)) from None
        if self.redis_url and self.redis_addr:
            raise ConfigError("give either redis-url or redis-addr, not both")
        for name in self.shared_rates:
            if name not in self.shared_limits:
                raise ConfigError(
                    f"shared rate {name!r}: no shared cap of that name (--shared-limit {name}=N:HOSTS names its hosts)"
                )
        if not self.tenant_by:
            object.__setattr__(self, "tenant_by", BY_USER if self.proxy_auth or self.proxy_auth_file else BY_CLIENT)
        try:
            check_routes(self.routes, self.parent_pools)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        url = self.effective_redis_url
        for name, source, derive in (
            ("client_networks", "allow-clients", lambda: parse_networks(self.allow_clients)),
            ("deny_networks", "deny-destinations", lambda: parse_networks(self.deny_destinations)),
            ("connect_port_set", "connect-ports", lambda: parse_ports(self.connect_ports)),
            ("credentials", "", lambda: read_credentials(self.proxy_auth, self.proxy_auth_file)),
            ("redis_deployment", "redis-url", lambda: RedisDeployment.from_url(url) if url else None),
        ):
            try:
                object.__setattr__(self, name, derive())
            except (ConfigError, ValueError) as exc:
                raise ConfigError(_message(source, exc) if source else str(exc)) from None

    def __repr__(self) -> str:
        """Every option, secrets masked: a Config may end up in a log or a traceback."""
        shown = []
        for spec in options():
            value = getattr(self, spec.name)
            if spec.metadata["secret"] and value:
                value = masked_url(value) if "://" in value else MASK
            shown.append(f"{spec.name}={value!r}")
        return f"Config({', '.join(shown)})"

    def shared_caps(self) -> list[SharedCap]:
        return [
            SharedCap(
                name,
                limit,
                frozenset(k for k in keys if not k.startswith("*.")),
                frozenset(k for k in keys if k.startswith("*.")),
                self.shared_rates.get(name),
            )
            for name, (limit, keys) in self.shared_limits.items()
        ]

    @property
    def effective_redis_url(self) -> str:
        """The Redis URL to use, or "" for local mode."""
        if self.redis_url:
            return self.redis_url
        if self.redis_addr:
            auth = f":{quote(self.redis_password, safe='')}@" if self.redis_password else ""
            return f"redis://{auth}{self.redis_addr}/{self.redis_db}"
        return ""


def _message(name: str, exc: Exception) -> str:
    """One line: ``port must be 0-65535, got 70000`` or ``allow-clients: 'x' is not ...``."""
    text = str(exc)
    return f"{name} {text}" if text.startswith("must ") else f"{name}: {text}"


def options() -> list[Any]:
    """The option fields of Config, in table order."""
    return [spec for spec in fields(Config) if spec.init]


# The groups ``--help`` and the option table show, in order: every option is in one.
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("listener", ("port", "bind", "workers", "max_clients")),
    ("limits", ("max_connections", "host_limits", "shared_limits", "reject_status", "retry_after")),
    ("rates", ("max_rate", "host_rates", "shared_rates")),
    ("queueing", ("queue_timeout", "max_queue")),
    ("tenants", ("tenant_shares", "tenant_by", "tenant_groups", "tenant_header")),
    ("parent proxies", ("parent_pools", "routes", "parent_auth", "parent_ca_file", "parent_failures")),
    (
        "timeouts",
        (
            "connect_timeout",
            "upstream_timeout",
            "header_timeout",
            "idle_timeout",
            "tunnel_idle_timeout",
            "tcp_keepalive",
            "shutdown_timeout",
        ),
    ),
    (
        "access and security",
        (
            "allow_clients",
            "proxy_auth",
            "proxy_auth_file",
            "connect_ports",
            "deny_destinations",
            "max_request_line",
            "max_header_size",
            "max_header_count",
        ),
    ),
    ("logging", ("log_level", "log_format", "access_log", "refusal_log_interval")),
    ("admin", ("admin_port", "admin_bind", "admin_token", "metrics_max_hosts")),
    (
        "Redis (distributed mode)",
        (
            "redis_url",
            "redis_addr",
            "redis_password",
            "redis_db",
            "redis_prefix",
            "redis_timeout",
            "lease_ttl",
            "on_redis_error",
            "on_lease_loss",
            "redis_wait_replicas",
        ),
    ),
)


def grouped_options() -> list[tuple[str, list[Any]]]:
    """The options by group, in GROUPS' order."""
    by_name = {spec.name: spec for spec in options()}
    return [(title, [by_name[name] for name in names]) for title, names in GROUPS]


def flag(spec: Any) -> str:
    return "--" + spec.name.replace("_", "-")


def parser_for(spec: Any) -> Callable[[str], Any]:
    """Text -> value for an option (what argparse applies to flags, env vars and INI values)."""
    if spec.metadata["parse"] is not None:
        return spec.metadata["parse"]
    return {"int": int, "float": float, "str": str}[spec.type]


def docs_default(spec: Any) -> str:
    shown = spec.metadata["docs_default"]
    if shown is not None:
        return shown
    return (
        ""
        if spec.default in ("", None)
        else f"{spec.default:g}"
        if isinstance(spec.default, float)
        else str(spec.default)
    )


DEFAULTS = Config()


def markdown_table() -> str:
    """The table of options in docs/configuration.md, by group, rendered from the fields
    (``scripts/options-table``)."""
    rows = ["| flag | env var | default | meaning |", "|---|---|---|---|"]
    for title, specs in grouped_options():
        rows.append(f"| **{title}** | | | |")
        for spec in specs:
            meta = spec.metadata
            rows.append(f"| `{flag(spec)}` | `{meta['env']}` | {docs_default(spec)} | {meta['help']} |")
            if meta["repeat_flag"] is not None:
                repeat, metavar, text = meta["repeat_flag"]
                rows.append(f"| `{repeat} {metavar}` | | | {text} |")
    rows.append("| `--config` | `DPRL_CONFIG` | | INI file holding any of the above |")
    return "\n".join(rows)
