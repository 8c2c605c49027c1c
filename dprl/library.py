"""ProxyRateLimiter: the proxy as a library, in a gevent program or a plain threaded one.

In a monkey-patched program the server runs as greenlets in the caller's hub. Otherwise
``start`` runs it in a background thread with its own gevent hub, so a program that never
imports gevent (``requests`` from the main thread) can still embed the proxy. Limits may
be changed from any thread: each change replaces a dict, so readers never see half of it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from typing import Any, TypedDict

import gevent
import gevent.event
from gevent import monkey

from .config import DEFAULTS, Config
from .limits.hosts import HostLimits, SharedCap, normalize_host_spec, normalize_limit_spec
from .limits.limiter import Limiter
from .limits.memory import MemoryLimiter
from .limits.rates import Rate, parse_rate
from .limits.tenants import Share, parse_share
from .net.dial import Resolver
from .ops.admin import AdminServer
from .parents.pool import Parents, ParentStatus, parent_status
from .parents.spec import check_routes, parse_pool, parse_route
from .proxy.server import ProxyServer
from .stats import ProxyStats
from .workers.seat import Seat

DEFAULT_LOGGER = "dprl"


def make_limiter(
    config: Config,
    limits: HostLimits,
    log: logging.Logger,
    seat: Seat | None = None,
) -> Limiter:
    """The limiter the configuration asks for: in memory unless Redis is configured;
    a ``--workers`` worker's ``seat`` in local mode: its share of one machine's counts."""
    stats = ProxyStats(config.metrics_max_hosts, pinned=limits.has_override)
    if config.redis_deployment is None:
        if seat is not None and seat.shares_table:
            from .workers.limiter import MachineLimiter

            return MachineLimiter(limits, seat, stats=stats)
        return MemoryLimiter(limits, stats)
    from .redis.limiter import RedisLimiter

    return RedisLimiter(
        limits,
        config.redis_deployment,
        prefix=config.redis_prefix,
        lease_ttl=config.lease_ttl,
        on_error=config.on_redis_error,
        on_lease_loss=config.on_lease_loss,
        wait_replicas=config.redis_wait_replicas,
        timeout=config.redis_timeout,
        log=log,
        stats=stats,
        worker_id=seat.worker_id if seat is not None else None,
    )


class ProxyStatus(TypedDict):
    clients: int  # client connections open
    slots: dict[str, int]  # slots held by this process, per host key
    mode: str  # local, workers or redis


def local_url(bind: str, port: int) -> str:
    """``http://HOST:PORT`` that reaches a listener bound to ``bind`` from this machine
    (a wildcard bind is reached on loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(bind, bind)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class ProxyRateLimiter:
    """An HTTP(S) forward proxy capping concurrent upstream connections per host.

    ``port=0`` picks a free port; ``proxy_url`` tells which one after ``start()``.
    """

    def __init__(
        self,
        port: int = 0,
        max_connections_per_host: int = 0,
        logger: logging.Logger | None = None,
        *,
        bind: str = "127.0.0.1",
        host_limits: Mapping[str, int] | None = None,
        config: Config | None = None,
        resolver: Resolver | None = None,
        seat: Seat | None = None,
        **settings: Any,
    ) -> None:
        """``settings`` are any other Config fields (``connect_timeout=5``...).

        ``seat`` is for the CLI's ``--workers``: a worker that shares the port
        (SO_REUSEPORT), has its own id in Redis, and in local mode its column of the
        machine's slot table.

        ``resolver(name, port) -> [(family, sockaddr), ...]`` replaces the system resolver
        for upstream names (service discovery, or a fixed map); IP literals never use it.
        """
        if config is None:
            config = Config(
                port=port,
                bind=bind,
                max_connections=max_connections_per_host,
                host_limits=dict(host_limits or {}),
                **settings,
            )
        self.config = config  # checked once, when it was made
        self.log = logger or logging.getLogger(DEFAULT_LOGGER)
        self.resolver = resolver
        self.limits = HostLimits(self.config.max_connections, self.config.host_limits, self.config.shared_caps())
        self.limits.default_rate = self.config.max_rate
        self.limits.replace_rates(self.config.host_rates)
        self.reuse_port = seat is not None
        self.limiter = make_limiter(self.config, self.limits, self.log, seat)
        self.limiter.waiting.policy.timeout = self.config.queue_timeout
        self.limiter.waiting.policy.max_queue = self.config.max_queue
        self.limiter.tenants.replace(self.config.tenant_shares)
        self.parents = Parents(self.config.parent_pools, self.config.routes)  # replaced in place on reload
        self._server: ProxyServer | None = None
        self._admin: AdminServer | None = None
        self._thread: threading.Thread | None = None
        self._hub: gevent.hub.Hub | None = None
        self._stop_requested: gevent.event.Event | None = None
        self._done = gevent.event.Event()
        self._serving = False
        self._stop_early = False
        self._stop_timeout: float | None = None
        self._start_error: BaseException | None = None

    # limits ----------------------------------------------------------------------------
    def set_default_max_connections_per_host(self, limit: int) -> None:
        self.limits.set_default(limit)

    def set_host_limit(self, host: str, limit: int) -> None:
        """Cap ``host`` at ``limit``; 0 or less removes the override (the default applies)."""
        self.limits.set(host, limit)

    def set_host_limits(self, limits: Mapping[str, int]) -> None:
        """Replace every per-host override at once."""
        self.limits.replace(limits)

    def remove_host_limit(self, host: str) -> None:
        self.limits.remove(host)

    def set_shared_limit(self, name: str, limit: int, hosts: Iterable[str]) -> None:
        """Cap the hosts (names or ``*.domain`` patterns) together at ``limit``; 0 removes the cap."""
        if self.config.redis_deployment is not None:
            raise ValueError("in distributed mode shared caps are set at start (they decide where counts live)")
        caps = [cap for cap in self.limits.shared if cap.name != name]
        if limit > 0:
            keys = [normalize_limit_spec(h) for h in hosts]
            plain = frozenset(k for k in keys if not k.startswith("*."))
            caps.append(SharedCap(name, int(limit), plain, frozenset(keys) - plain))
        self.limits.replace_shared(caps)

    # the fleet's stored limits (distributed mode) -------------------------------------
    def set_fleet_limit(self, host: str, limit: int) -> None:
        """Store ``host``'s (or a ``*.domain`` pattern's) limit in Redis for every worker of the
        fleet (0 = unlimited); it beats the processes' own limits. Applied here at once,
        everywhere within a second."""
        self._fleet().change_stored_limit("set", host, limit)

    def remove_fleet_limit(self, host: str) -> None:
        self._fleet().change_stored_limit("rm", host)

    def set_fleet_default_limit(self, limit: int | None) -> None:
        """The fleet's default limit; None gives each process its own default back."""
        if limit is None:
            self._fleet().change_stored_limit("rmdefault")
        else:
            self._fleet().change_stored_limit("default", "", limit)

    def set_fleet_rate(self, host: str, rate: str | Rate | None) -> None:
        """Store ``host``'s (or a pattern's) rate in Redis for the whole fleet (``"10/s"``); it
        beats the processes' own. None removes it. Applied here at once, everywhere within a second."""
        if rate is None:
            self._fleet().change_stored_limit("rmrate", host)
        else:
            self._fleet().change_stored_limit("setrate", host, rate=str(rate))

    def set_fleet_default_rate(self, rate: str | Rate | None) -> None:
        """The fleet's default rate; None gives each process its own default back."""
        if rate is None:
            self._fleet().change_stored_limit("rmdefaultrate")
        else:
            self._fleet().change_stored_limit("defaultrate", rate=str(rate))

    def fleet_rates(self) -> dict[str, Rate]:
        """The stored rates as this worker last read them (hosts and patterns)."""
        self._fleet()
        return self.limits.stored_rates()

    def fleet_limits(self) -> dict[str, int]:
        """The stored limits as this worker last read them (hosts and patterns)."""
        self._fleet()
        return self.limits.stored()

    def _fleet(self):
        if self.config.redis_deployment is None:
            raise RuntimeError("fleet limits are stored in Redis: give a redis_url (distributed mode)")
        return self.limiter

    def reload(self, config: Config) -> None:
        """Apply the limits, patterns, shared caps and queueing of ``config`` (SIGHUP)."""
        self.limits.set_default(config.max_connections)
        self.limits.replace(config.host_limits)
        self.limits.default_rate = config.max_rate
        self.limits.replace_rates(config.host_rates)
        if self.config.redis_deployment is None:
            self.limits.replace_shared(config.shared_caps())
        elif config.shared_caps() != list(self.limits.shared):
            self.log.warning("shared-limits changed: in distributed mode they take effect at the next start")
        self.limiter.waiting.policy.timeout = config.queue_timeout
        self.limiter.waiting.policy.max_queue = config.max_queue
        if config.tenant_shares != self.limiter.tenants.shares():
            self.limiter.tenants.replace(config.tenant_shares)
        self.parents.replace(config.parent_pools, config.routes)

    # parent proxies ----------------------------------------------------------------------
    def set_parent_pool(self, name: str, pool: str | None) -> None:
        """Add or replace the pool ``name`` (``"http://p1:3128,http://p2:3128,select=least-connections"``);
        None removes it (routes to it must go first). Parents kept keep their state."""
        pools = {n: p.spec for n, p in self.parents.pools.items()}
        if pool is None:
            pools.pop(name, None)
        else:
            pools[name] = parse_pool(f"{name}={pool}")
        check_routes(self.parents.routes, pools)
        self.parents.replace(pools, self.parents.routes)

    def set_route(self, pattern: str, pool: str | None) -> None:
        """Send destinations matching ``pattern`` (a host, ``*.DOMAIN`` or ``*``) through ``pool``
        (or ``"direct"``); None removes the route. A new route goes last (the first match wins)."""
        routes = dict(self.parents.routes)
        key, target = parse_route(f"{pattern}={pool or 'direct'}")
        routes.pop(key, None)
        if pool is not None:
            routes[key] = target
        check_routes(routes, self.parents.pools)
        self.parents.replace({n: p.spec for n, p in self.parents.pools.items()}, routes)

    def parent_states(self) -> list[ParentStatus]:
        """Each parent's state now: up or ejected (until when), in use, cap, failures."""
        fleet = self.limiter.seen_fleet_counts()
        return [parent_status(state, fleet) for state in self.parents.every_parent()]

    # tenants ---------------------------------------------------------------------------
    def set_tenant_share(self, tenant: str, share: str | Share | None) -> None:
        """Give ``tenant`` a share of every host's cap and rate: ``"3"``, ``"1:max=50%"`` or a
        Share; None removes it (the tenant falls into ``default``). With no share left, tenants
        are off. Applies to admissions from now on (nothing is preempted)."""
        if isinstance(share, str):
            share = parse_share(f"{tenant}={share}")[1]
        self.limiter.tenants.set(tenant, share)

    def tenant_shares(self) -> dict[str, Share]:
        return self.limiter.tenants.shares()

    def tenant_connections_for_host(self, host: str) -> dict[str, int]:
        """Open connections to ``host`` per tenant (fleet-wide as last seen in distributed mode)."""
        return self.limiter.tenant_counts(normalize_host_spec(host))

    def set_host_rate(self, host: str, rate: str | Rate | None) -> None:
        """Rate ``host`` (or a ``*.domain`` pattern): ``"10/s"``, ``"600/m:burst=20"`` or a Rate;
        None or ``"0"`` removes its own (the default applies). Local mode only, for now."""
        self.limits.set_rate(host, parse_rate(rate) if isinstance(rate, str) else rate)

    def set_default_rate(self, rate: str | Rate | None) -> None:
        """The rate of hosts without one of their own (None or ``"0"``: none)."""
        self.limits.default_rate = parse_rate(rate) if isinstance(rate, str) else rate

    def active_connections_for_host(self, host: str) -> int:
        """Open connections to ``host`` fleet-wide (this process alone in local mode)."""
        return self.limiter.fleet_count(normalize_host_spec(host))

    def set_queue_timeout(self, seconds: float) -> None:
        """Seconds a connection over the cap waits for a slot from now on (0 = refuse at once)."""
        if seconds < 0:
            raise ValueError(f"queue timeout must be 0 or more, got {seconds}")
        self.limiter.waiting.policy.timeout = float(seconds)

    def queued_for_host(self, host: str) -> int:
        """Connections of this process waiting for a slot to ``host`` now."""
        return self.limiter.waiting_counts().get(normalize_host_spec(host), 0)

    def status(self) -> ProxyStatus:
        """A snapshot for operators (logged on SIGUSR1): clients and slots held by this process."""
        server = self._server
        return {
            "clients": len(server.sessions) if server is not None else 0,
            "slots": self.limiter.process_counts(),
            "mode": self.limiter.mode,
        }

    # lifecycle -------------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the proxy is not started")
        return self._server.server_port

    @property
    def admin_url(self) -> str | None:
        """The admin listener's base URL (None when --admin-port is 0)."""
        if self._admin is None:
            return None
        return local_url(self.config.admin_bind, self._admin.port)

    @property
    def proxy_url(self) -> str:
        return local_url(self.config.bind, self.port)

    def start(self) -> ProxyRateLimiter:
        """Start serving in the background and return once the port is listening."""
        if self._server is not None:
            raise RuntimeError("the proxy is already started")
        self._stop_early = False  # a stop() before this start() is not a stop of it
        if monkey.is_module_patched("socket"):
            self._build_server()
            return self
        ready = threading.Event()
        self._thread = threading.Thread(target=self._thread_main, args=(ready,), name="dprl-proxy", daemon=True)
        self._thread.start()
        ready.wait()
        if self._start_error is not None:
            error, self._start_error = self._start_error, None
            self._thread.join()
            self._thread = None
            raise error
        return self

    def listen(self) -> None:
        """Open the listening socket (and the admin one) now; ``serve_forever`` then serves."""
        if self._server is None:
            self._build_server()

    def serve_forever(self) -> None:
        """Serve in this thread until ``stop()`` (the reference's ListenAndServe)."""
        if self._server is None:
            self._build_server()
        self._serve_until_stopped()

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting, let open connections finish up to ``timeout`` s, then close them."""
        if timeout is not None:
            self._stop_timeout = timeout
        if self._server is None or self._stop_requested is None:
            self._stop_early = True  # a signal before listening: serve_forever ends at once
            return
        if self._thread is not None and threading.current_thread() is not self._thread:
            assert self._hub is not None
            self._hub.loop.run_callback_threadsafe(self._stop_requested.set)
            self._thread.join()
            self._thread = None
        elif self._serving:
            self._stop_requested.set()
            self._done.wait()
        else:
            self._shutdown()

    def __enter__(self) -> ProxyRateLimiter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # internals -------------------------------------------------------------------------
    def _build_server(self) -> None:
        c = self.config
        server = ProxyServer(c, self.limiter, self.log, self.resolver, self.reuse_port, self.parents)
        admin = AdminServer(server, c.admin_bind, c.admin_port, self.log) if c.admin_port else None
        if admin is not None:
            admin.start()  # first: a port that cannot be bound stops the start before any serving
        try:
            server.start()
        except BaseException:
            if admin is not None:
                admin.stop()
            raise
        self._admin = admin
        self._hub = gevent.get_hub()
        self._stop_requested = gevent.event.Event()
        self._done = gevent.event.Event()
        self._server = server
        self.log.info(
            "dprl listening on %s:%d mode=%s max-connections=%s host-limits=%s%s%s",
            c.bind,
            server.server_port,
            self.limiter.mode,
            c.max_connections or "unlimited",
            ",".join(f"{h}={n}" for h, n in sorted(self.limits.overrides().items())) or "none",
            f" {self.limiter.describe()}" if self.limiter.describe() else "",
            f" admin=http://{c.admin_bind}:{admin.port}" if admin is not None else "",
        )

    def _thread_main(self, ready: threading.Event) -> None:
        try:
            self._build_server()
        except BaseException as exc:  # re-raised in the thread that called start()
            self._start_error = exc
            ready.set()
            return
        ready.set()
        self._serve_until_stopped()

    def _serve_until_stopped(self) -> None:
        assert self._stop_requested is not None
        if self._stop_early:
            self._stop_early = False
            self._stop_requested.set()
        self._serving = True
        try:
            self._stop_requested.wait()
        finally:
            self._serving = False
            self._shutdown()

    def _shutdown(self) -> None:
        server, self._server = self._server, None
        admin, self._admin = self._admin, None
        if server is not None:
            server.stop(self._stop_timeout)  # /readyz answers 503 from its first moment
            self.log.info("dprl stopped")
        if admin is not None:
            admin.stop()
        self._done.set()


class DistributedProxyRateLimiter(ProxyRateLimiter):
    """A ProxyRateLimiter whose caps hold across every proxy sharing ``redis_url``.

    The reference's ``NewDistributedProxyRateLimiter(port, default, redisOptions,
    maxLifetime, logger)``; ``lease_ttl`` replaces the 5-minute safety TTL: a killed
    worker's slots come back within it, and a live tunnel keeps its slot however long.
    """

    def __init__(
        self,
        port: int = 0,
        max_connections_per_host: int = 50,
        redis_url: str = "redis://127.0.0.1:6379/0",
        lease_ttl: float = DEFAULTS.lease_ttl,
        logger: logging.Logger | None = None,
        **settings: Any,
    ) -> None:
        super().__init__(port, max_connections_per_host, logger, redis_url=redis_url, lease_ttl=lease_ttl, **settings)
