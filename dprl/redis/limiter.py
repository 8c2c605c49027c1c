"""Redis limiter: per-host caps shared by a fleet of proxy processes (admission).

Admission is one EVALSHA of ``acquire.lua`` on the node that serves the host, O(workers
holding that host), whatever else Redis stores; the release is one ``release.lua``. The
pieces this class wires together each live in a room of their own:

- ``keys``: the names of a host's keys, under one hash tag (one Cluster slot);
- ``counts``: this worker's own counts (never below the truth) and the epochs it knows;
- ``routing``: running a script on the node that serves a host (MOVED, ASK, TRYAGAIN);
- ``refresh``: lease refresh and the ways back from faults (re-assert, pause, fence);
- ``leases``: when this worker's leases were set, which are about to lapse;
- ``bridge``: calls from other threads into the hub that owns the connections.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import secrets
import socket
import time
from collections.abc import Iterable
from typing import NamedTuple

import gevent

from ..errors import (
    LimiterUnavailable,
    LimitExceeded,
    QueueTimeout,
    RateExceeded,
    RedisUnavailable,
    TenantShareExceeded,
)
from ..limits.hosts import SHARED, HostKey, HostLimits
from ..limits.limiter import Limiter, Slot
from ..limits.rates import Rate, RateBook, rates_text
from ..limits.tenants import TENANT, ceiling, split_tenant_key, tenant_key
from ..limits.waiting import Waiter, Watch
from ..stats import ProxyStats
from .address import RedisDeployment
from .bridge import HubBridge
from .counts import WorkerCounts
from .keys import KeySpace
from .leases import LeaseBook
from .protocol import Reply
from .refresh import Refresher
from .routing import FAILURES, Router, failure_kind, is_redirect
from .scripts import ACQUIRE, COUNT, LEAVE, PACE, RELEASE, AcquireReply, is_noscript
from .stored_limits import LIMITS_TAG, LimitSync, change, limits_channel
from .subscriber import Subscriber
from .topology import Shard, Topology, make_topology


class Attempt(NamedTuple):
    """One admission try."""

    slot: Slot | None  # None: refused at the cap
    wake_next: bool = False  # another waiter of this worker may go too
    shared_cap: str = ""  # the shared cap that refused, if it was one
    rate_wait: float = 0.0  # seconds until the caller's token, when the rate (not a cap) refused it
    by_tenant: bool = False  # refused by the tenants' rules (its max, or others first in fair order)
    over_guarantee: bool = False  # others first, and its tenant holds its guarantee or more
    ahead: int = 0  # waiters before it (in fair order, with tenants)
    fleet: int = 0  # the host's open connections, fleet-wide


def _rate_args(rate: Rate | None) -> tuple[str, str]:
    """acquire.lua's and pace.lua's rate arguments: T and tau in µs ("" and "": no rate)."""
    if rate is None:
        return "", ""
    return f"{rate.interval * 1e6:.3f}", f"{rate.tolerance * 1e6:.3f}"


class RedisLimiter(Limiter):
    """Caps shared through Redis; ``on_error`` is the policy while Redis is unreachable.

    Every setting comes from the configuration (``Config``): this class has no defaults
    of its own, so each one is defined in one place.
    """

    def __init__(
        self,
        limits: HostLimits,
        deployment: RedisDeployment,
        *,
        prefix: str,
        lease_ttl: float,
        on_error: str,
        timeout: float,
        log: logging.Logger,
        on_lease_loss: str = "keep",
        wait_replicas: int = 0,
        worker_id: str | None = None,
        stats: ProxyStats | None = None,
    ) -> None:
        super().__init__(limits, stats)
        self.deployment = deployment
        self.prefix = prefix
        self.lease_ttl = lease_ttl
        self.on_error = on_error
        self.on_lease_loss = on_lease_loss
        self.wait_replicas = wait_replicas
        self.timeout = timeout
        self.log = log
        self.worker = worker_id or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._tickets = 0  # waiters' tickets so far ("worker|sequence": arrival order within this worker)
        self._lost_tickets: dict[str, HostKey] = {}  # tickets Redis could not be told to drop yet
        self._wake_prefix = f"{prefix}:wake:"
        self._poll = min(1.0, lease_ttl / 3)  # the oldest waiter's safety poll (and waiting lease renewal)
        self._local_rates = RateBook()  # --on-redis-error local: this process paces alone
        self._token_at: dict[HostKey, float] = {}  # each rated host's next token, as last seen (monotonic)
        self._tenant_args_cache: dict[tuple[int, str], tuple[object, ...]] = {}
        self._tenant_args_generation = -1
        self.topology: Topology = make_topology(deployment, prefix, timeout, f"dprl:{self.worker}", self._setup_shard)
        self.keyspace = KeySpace(prefix, limits, self.topology, self.tenants)
        # Act on a lapsing lease this long before Redis would drop it.
        self.leases = LeaseBook(lease_ttl, min(0.25, lease_ttl / 10), lambda shard: self.counts.held_on(shard))
        self.counts = WorkerCounts(self.keyspace, self.leases)
        self.router = Router(
            self.topology, self.keyspace, self.stats, timeout, lambda s, e: self.refresher.mark_down(s, e)
        )
        self.refresher = Refresher(
            self.worker,
            lease_ttl,
            self.counts,
            self.keyspace,
            self.router,
            self.leases,
            self.stats,
            log,
            on_error=on_error,
            on_lease_loss=on_lease_loss,
            on_down=self.waiting.wake_all,  # waiters answer by policy now, not at their timeout
            fence=lambda: self.fence,
            before_round=self._retry_lost_tickets,
        )
        self.bridge = HubBridge(self.topology, deployment, prefix, timeout)
        self.limit_sync = LimitSync(limits, lambda: self.topology.shard_for(LIMITS_TAG).runner, prefix, log)
        self._subscriber = Subscriber(
            self.topology.wake_address,
            {
                self._wake_prefix + self.worker: self.waiting.wake_message,
                limits_channel(prefix): self.limit_sync.on_message,
            },
            timeout,
            self.waiting.wake_all,
            log,
        )

    @property
    def mode(self) -> str:
        return "redis"

    def _setup_shard(self, shard: Shard) -> None:
        """A new shard's connections re-assert this worker's counts first (Refresher.on_connect)."""
        shard.channel.on_connect = lambda connected: self.refresher.on_connect(shard, connected)

    def describe(self) -> str:
        return (
            f"redis={self.deployment} prefix={self.prefix} worker={self.worker} lease-ttl={self.lease_ttl:g}s "
            f"on-redis-error={self.on_error} on-lease-loss={self.on_lease_loss}"
        )

    # admission -------------------------------------------------------------------------
    def acquire(self, key: HostKey, watch: Watch | None = None, tenant: str = "") -> Slot:
        limit = self.limits.limit_for(key)
        tenant = self.tenants.tenant(tenant) if limit and self.tenants.enabled else ""
        self.counts.touched.add(key)
        attempt = self._attempt(key, limit, tenant)
        if attempt.slot is not None:
            return attempt.slot
        timeout = self.waiting.policy.timeout
        if attempt.rate_wait and attempt.rate_wait > timeout:  # waiting could only end in a refusal
            detail = (
                f"its token comes in {attempt.rate_wait:.2f}s, after --queue-timeout {timeout:g}s" if timeout else ""
            )
            raise RateExceeded(key, rates_text(self.limits.rates_for(key)), attempt.rate_wait, detail)
        if not timeout:
            cap = self.limits.shared_cap_for(key) if attempt.shared_cap else None
            if cap is not None:
                raise LimitExceeded(key, cap.limit, attempt.shared_cap)
            if attempt.by_tenant:
                raise self._share_refusal(key, limit, tenant)
            raise LimitExceeded(key, limit)
        if attempt.over_guarantee:  # behind tenants below their guarantee: in time?
            why = self._hopeless_wait(key, tenant, attempt.ahead, attempt.fleet, limit)
            if why:
                raise TenantShareExceeded(key, limit, tenant, why)
        return self._wait(key, limit, watch, tenant)

    def acquire_parent(self, key: HostKey, limit: int) -> Slot:
        self.counts.touched.add(key)
        attempt = self._attempt(key, limit)
        if attempt.slot is None:
            raise LimitExceeded(key, limit)
        return attempt.slot

    def _share_refusal(self, key: HostKey, limit: int, tenant: str) -> TenantShareExceeded:
        held = self.counts.tenant_counts(key).get(tenant, 0)
        ceiling_ = ceiling(limit, self.tenants.share(tenant))
        if held >= ceiling_:
            return TenantShareExceeded(key, limit, tenant, f"tenant {tenant} holds {held}, its max (fleet-wide)")
        detail = f"tenant {tenant} holds {held} fleet-wide; the free slots go to tenants below their guarantee"
        return TenantShareExceeded(key, limit, tenant, detail)

    def tenant_counts(self, key: HostKey) -> dict[str, int]:
        return {t: n for t, n in self.counts.tenant_counts(key).items() if n}

    def tenant_hosts(self) -> Iterable[HostKey]:
        """Hosts whose tenants' counts were last seen above zero, or that this worker holds."""
        seen = [key for key, held in list(self.counts.tenants_seen.items()) if any(held.values())]
        return {*seen, *self.counts.process_counts()}

    def _wait(self, key: HostKey, limit: int, watch: Watch | None, tenant: str = "") -> Slot:
        """Wait in the fleet's queue of ``key``: the first attempt with a ticket enqueues it
        (arrival order by Redis's clock); then the waiter asks again when woken (a slot
        freed for it), and this process's oldest waiter of the host also every poll
        interval (lost wake-ups; it renews the worker's waiting lease too)."""
        waiting = self.waiting
        waiter = waiting.enter(key, limit, self.keyspace.tag(key), tenant)
        self._tickets += 1
        waiter.ticket = f"{self.worker}|{self._tickets:012d}" + (f"|{tenant}" if tenant else "")
        deadline = waiter.arrived + waiting.policy.timeout
        enqueued = False
        slot: Slot | None = None
        self._subscriber.ensure()
        try:
            with watch() if watch is not None else contextlib.nullcontext() as gone:
                while True:
                    attempt = self._attempt(key, limit, tenant, waiter)
                    slot = attempt.slot
                    if slot is not None:
                        if attempt.wake_next:
                            waiting.wake_next(waiter)
                        return slot
                    enqueued = True
                    poll = self._poll if waiting.is_oldest(waiter) else None
                    if attempt.rate_wait:  # a timer for its token's moment (after those ahead of it)
                        if time.monotonic() + attempt.rate_wait > deadline:
                            rate = rates_text(self.limits.rates_for(key))
                            raise RateExceeded(key, rate, attempt.rate_wait, "its token comes after --queue-timeout")
                        poll = min(poll or attempt.rate_wait, attempt.rate_wait)
                    try:
                        waiting.wait(waiter, limit, deadline, gone, poll)
                    except QueueTimeout as exc:
                        if attempt.by_tenant:  # held back by the shares: that is the reason
                            raise self._share_refusal(key, limit, tenant) from exc
                        raise
        finally:
            waiting.leave(waiter)
            self.stats.queue_waited(time.monotonic() - waiter.arrived)
            if slot is None and enqueued:
                self._leave_queue(tenant_key(tenant, key) if tenant else key, waiter.ticket)

    def _leave_queue(self, key: HostKey, ticket: str) -> None:
        """Give up a place in the fleet's queue (bounded by the Redis timeout). If Redis
        cannot be told, the ticket is retried at each refresh: a ghost never blocks others.
        ``key``: the host's, or a tenant's at the host (its own line there)."""
        line = self.keyspace.tag(key)
        last = "1" if line not in self.waiting.hosts else "0"
        shard = self.keyspace.shard_of(key)
        if shard is None or not shard.healthy:
            self._lost_tickets[ticket] = key
            return
        try:
            message = f"{line}|{split_tenant_key(key)[0]}" if key.startswith(TENANT) else line
            shard.runner.run(LEAVE, self.keyspace.queue_keys(key), (ticket, self._wake_prefix, message, last))
            self._lost_tickets.pop(ticket, None)
        except FAILURES as exc:
            self.stats.redis_error(failure_kind(exc))
            self._lost_tickets[ticket] = key

    def _retry_lost_tickets(self) -> None:
        for ticket, key in list(self._lost_tickets.items()):
            self._leave_queue(key, ticket)

    def _attempt(self, key: HostKey, limit: int, tenant: str = "", waiter: Waiter | None = None) -> Attempt:
        """One admission; ``waiter``: ask with its ticket (enqueued if refused)."""
        policy = self.limits.policy_for(key)  # its line is the hash tag of its keys
        try:
            shard = self.topology.shard_for(policy.line)
        except RedisUnavailable as exc:
            return Attempt(self._fallback(key, limit, str(exc), tenant))
        refusal = self._refusal(shard)
        if refusal:
            return Attempt(self._fallback(key, limit, refusal, tenant))
        abandoned = False
        sent_at = 0.0

        def count() -> None:
            nonlocal sent_at
            sent_at = time.monotonic()
            self.counts.count(key, tenant)  # counted as the acquire leaves, in order with the refreshes

        def on_reply(reply: Reply) -> None:
            # Runs in the channel's reader as the reply arrives: no refresh sees it half-done.
            admitted = not isinstance(reply, BaseException) and reply[0] == 1
            if not admitted:
                self.counts.uncount(key, tenant)  # refused, not run (NOSCRIPT, MOVED), or unknown: a refresh settles it
            elif abandoned:
                gevent.spawn(self._release, tenant, key)  # the caller was killed while waiting

        known, new = self.counts.epoch_args(key)
        ticket, last, line, cap, rate = "", "0", policy.line, policy.cap, policy.rate
        if waiter is not None:
            ticket, last = waiter.ticket, "1" if len(self.waiting.hosts.get(line, ())) <= 1 else "0"
        refresher = self.refresher
        lease, ttl, wake = refresher.lease_ms, refresher.key_ttl_ms, self._wake_prefix
        interval, tolerance = _rate_args(rate)
        shared_limit = cap.limit if cap else ""
        shared_interval, shared_tolerance = _rate_args(cap.rate if cap else None)
        args: tuple[object, ...] = (
            *(self.worker, limit, lease, ttl, known, new, ticket, wake, line, last, shared_limit),
            *(interval, tolerance, shared_interval, shared_tolerance),
        )
        if tenant:
            args += self._tenant_args(limit, tenant)
        try:
            routed = tenant_key(tenant, key) if tenant else key  # its keys: the host's and the tenants'
            shard, raw = self.router.run(shard, routed, ACQUIRE, args, count, on_reply)
        except FAILURES as exc:  # the shard that failed is marked down (see Router.run)
            return Attempt(self._fallback(key, limit, str(exc), tenant))
        except BaseException:
            abandoned = True
            raise
        finally:
            shard.probing = False
        refresher.mark_up(shard)
        reply = AcquireReply.parse(raw)
        self.counts.fleet_seen[key] = reply.total
        if rate is not None or shared_interval:  # for operators: the next token as last seen
            self._token_at[key] = time.monotonic() + reply.next_token_us / 1e6
        self.counts.learn_epoch(key, reply.epoch)
        if tenant:
            held = reply.tenants_held
            self.counts.tenants_seen[key] = {held[i].decode(): int(held[i + 1]) for i in range(0, len(held), 2)}
        if reply.admitted == -1:
            refresher.data_lost(shard)
            return Attempt(self._fallback(key, limit, "re-asserting counts after Redis lost data", tenant))
        if not reply.admitted:
            shared_cap = cap.name if reply.by_shared and cap is not None else ""
            rate_wait = reply.rate_wait_us / 1e6
            by_tenant, over = bool(reply.by_tenant), reply.by_tenant == 2
            return Attempt(None, False, shared_cap, rate_wait, by_tenant, over, reply.ahead, reply.total)
        if reply.own_before < 0:  # this admission gave the worker its lease on key
            self.leases.created(shard, key, sent_at)
        else:
            self.leases.admitted(key, sent_at)
        if waiter is not None and self.router.queue_skipped:  # its ticket is still queued: give it up
            gevent.spawn(self._leave_queue, key, waiter.ticket)
        if tenant:  # how long it lasts is kept too (Limiter._hopeless_wait)
            release = functools.partial(self._release_timed, tenant, time.monotonic())
        else:
            release = functools.partial(self._release, "")
        slot = Slot(key, release, shared=True)
        if self.wait_replicas:
            self._wait_for_replicas(shard, slot)
        return Attempt(slot, wake_next=reply.wake_self == 1)

    def _refusal(self, shard: Shard) -> str:
        """Why admission on ``shard`` cannot ask Redis now ("" if it can)."""
        now = time.monotonic()
        if now < shard.paused_until:
            return "re-asserting counts after a Redis recovery"
        if self.leases.lapsed(shard, now):
            self.refresher.wake()
            return "this worker's lease lapsed"
        if not shard.healthy:
            if shard.probing or now < shard.down_until:
                return "Redis is down"
            shard.probing = True  # this caller probes; the others use the policy meanwhile
        return ""

    def _tenant_args(self, limit: int, tenant: str) -> tuple[object, ...]:
        """acquire.lua's and pace.lua's tenant arguments: "1", the caller's tenant, and each
        tenant's name, weight, ceiling (in slots of ``limit``) and max (a part of 1)."""
        tenants = self.tenants
        if self._tenant_args_generation != tenants.generation:  # the shares changed
            self._tenant_args_cache, self._tenant_args_generation = {}, tenants.generation
        cached = self._tenant_args_cache.get((limit, tenant))
        if cached is None:
            every: list[object] = []
            for name in tenants.names:
                share = tenants.share(name)
                every += [name, f"{share.weight:g}", ceiling(limit, share), f"{share.max_percent / 100:g}"]
            cached = self._tenant_args_cache[(limit, tenant)] = ("1", tenant, len(tenants.names), *every)
        return cached

    def _fallback(self, key: HostKey, limit: int, reason: str, tenant: str = "") -> Slot:
        if self.on_error == "reject":
            raise LimiterUnavailable(f"Redis unavailable ({reason})")
        if self.on_error == "local" and limit and self.counts.held(key) >= limit:
            raise LimitExceeded(key, limit)
        cap = self.limits.shared_cap_for(key) if self.on_error == "local" else None
        if cap is not None and self.counts.held(SHARED + cap.name) >= cap.limit:
            raise LimitExceeded(key, cap.limit, shared=cap.name)
        if self.on_error == "local":
            self._pace_locally(key)
        # Counted here, not in Redis: the next refresh adds it there once Redis is back.
        self.counts.count(key, tenant)
        return Slot(key, functools.partial(self._uncount_as, tenant))

    def _uncount_as(self, tenant: str, key: HostKey) -> None:
        self.counts.uncount(key, tenant)

    def _pace_locally(self, key: HostKey) -> None:
        """--on-redis-error local: this process paces the host at the configured rates alone."""
        rates = self.limits.rates_for(key)
        wait = self._local_rates.take(rates, time.monotonic()) if rates else 0.0
        if wait:
            raise RateExceeded(key, rates_text(rates), wait)

    def pace(self, key: HostKey, watch: Watch | None = None, tenant: str = "") -> None:
        """A token for a request on a kept-alive connection: ``pace.lua``, fleet-wide (of the
        host's rate, its shared cap's, and its tenant's part of the host's)."""
        policy = self.limits.policy_for(key)
        rate, cap = policy.rate, policy.cap
        if rate is None and (cap is None or cap.rate is None):
            return
        started = time.monotonic()
        deadline = started + self.waiting.policy.timeout
        args: tuple[object, ...] = (1, *_rate_args(rate))
        if cap is not None:  # the shared cap's rate too (pace.lua skips one that is "")
            args = (2, *_rate_args(rate), *_rate_args(cap.rate))
        routed = key
        if policy.limit and rate is not None and self.tenants.enabled:  # and the tenant's part
            tenant = self.tenants.tenant(tenant)
            args += self._tenant_args(policy.limit, tenant)
            routed = tenant_key(tenant, key)
        while True:
            shard: Shard | None = None
            try:
                shard = self.topology.shard_for(self.keyspace.tag(key))
                refusal = self._refusal(shard)
                if refusal:
                    raise RedisUnavailable(refusal)
                _, wait_us = self.router.run(shard, routed, PACE, args)
                self.refresher.mark_up(shard)
            except FAILURES as exc:
                if self.on_error == "reject":
                    raise LimiterUnavailable(f"Redis unavailable ({exc})") from None
                if self.on_error == "local":
                    self._pace_locally(key)
                return
            finally:
                if shard is not None:
                    shard.probing = False  # this call was the probe _refusal may have let through
            if not wait_us:
                if time.monotonic() > started + 0.001:
                    self.stats.queue_waited(time.monotonic() - started)  # a rate wait, as a waiter's
                return
            wait = int(wait_us) / 1e6
            if time.monotonic() + wait > deadline:
                raise RateExceeded(key, rates_text(self.limits.rates_for(key)), wait)
            gevent.sleep(wait)  # a timer for the token's moment

    def _wait_for_replicas(self, shard: Shard, slot: Slot) -> None:
        """--redis-wait-replicas: an admission counts only once replicas hold it (WAIT)."""
        try:
            acknowledged = shard.channel.call("WAIT", self.wait_replicas, int(self.timeout * 1000))
        except FAILURES as exc:
            acknowledged = 0
            self.refresher.mark_down(shard, exc)
        if int(acknowledged) < self.wait_replicas:
            slot.release()
            raise LimiterUnavailable(f"only {acknowledged} of {self.wait_replicas} replicas confirmed the admission")

    def _release_timed(self, tenant: str, admitted: float, key: HostKey) -> None:
        self._closed(tenant, admitted, key)
        self._release(tenant, key)

    def _release(self, tenant: str, key: HostKey) -> None:
        """Send the release and wait for it (bounded by the Redis timeout).

        Waiting keeps the client's view and the fleet's in step: its connection closes
        only once the slot is free in Redis, so a client that reconnects at once is not
        refused by a slot it just gave back. The local count drops when the reply is
        read (in the channel's reader), so a refresh counts the slot until Redis has
        applied the release: Redis never sees fewer than are open.
        """
        shard = self.keyspace.shard_of(key)
        if shard is None or not shard.healthy or time.monotonic() < shard.down_until:
            self.counts.uncount(key, tenant)  # Redis keeps an extra count until the next refresh
            return
        in_flight = settled = False

        def sent() -> None:
            nonlocal in_flight
            in_flight = True

        def on_reply(reply: object) -> None:
            nonlocal in_flight, settled
            in_flight = False
            if is_noscript(reply) or is_redirect(reply):
                return  # not run: sent again once the script is loaded, or to the right node
            settled = True
            self.counts.uncount(key, tenant)
            if reply == -1:
                self.refresher.wake()  # Redis had no count of ours: it lost data
            elif reply == -2:
                self.refresher.data_lost(shard)

        known, _ = self.counts.epoch_args(key)
        try:
            args: tuple[object, ...] = (self.worker, known, self._wake_prefix, self.keyspace.tag(key))
            routed = key
            if tenant:
                args, routed = (*args, len(self.tenants.names)), tenant_key(tenant, key)
            self.router.run(shard, routed, RELEASE, args, sent, on_reply)
        except FAILURES:
            pass  # Redis may keep an extra count until the next refresh
        finally:
            if not in_flight and not settled:
                self.counts.uncount(key, tenant)  # never sent, or not run: no reply will settle it

    # lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self.bridge.attach()
        self.refresher.start()
        self._subscriber.start()
        self.limit_sync.start()

    def refresh(self, goodbye: bool = False) -> bool:
        """Send this worker's exact count and lease for every key it holds or touched."""
        return self.refresher.refresh(goodbye)

    def close(self) -> None:
        """Graceful stop: remove this worker's counts for every key it touched."""
        self.refresher.stop()
        self._subscriber.close()
        self.limit_sync.stop()
        if not self.refresher.refresh(goodbye=True):
            self.log.warning("could not remove this worker's counts from Redis: they expire with its lease")
        self.counts.touched.clear()
        self.topology.close()
        self.bridge.detach()

    # counts ----------------------------------------------------------------------------
    def fleet_count(self, key: HostKey) -> int:
        """The fleet-wide count (live leases only); callable from any thread."""

        def count(topology: Topology) -> int:
            shard = topology.shard_for(self.keyspace.tag(key))
            counts, leases, _ = self.keyspace.keys(key)
            return int(shard.runner.run(COUNT, (counts, leases), ()))

        return self.bridge.call(count)

    def change_stored_limit(self, op: str, host: str = "", limit: int = 0, by: str = "", rate: str = "") -> int:
        """Change the fleet's stored limits or rates (see stored_limits.change); from any thread.
        This worker applies the change before returning; the others within a second."""

        def run(topology: Topology) -> int:
            version = change(topology.shard_for(LIMITS_TAG).runner, self.prefix, op, host, limit, by, rate)
            if topology is self.topology:
                self.limit_sync.sync()
            return version

        return self.bridge.call(run)

    def process_counts(self) -> dict[HostKey, int]:
        return self.counts.process_counts()

    def next_tokens(self, keys: Iterable[HostKey] = ()) -> dict[HostKey, float]:
        """As last seen in acquire's replies (the TAT lives in Redis); forgotten once passed."""
        now = time.monotonic()
        self._token_at = {key: at for key, at in self._token_at.items() if at > now}
        return {key: at - now for key, at in self._token_at.items()}

    def seen_fleet_counts(self) -> dict[HostKey, int]:
        return self.counts.seen_fleet_counts()

    def backend_up(self) -> bool:
        return all(shard.healthy for shard in self.topology.shards())

    def probe(self) -> str:
        """A PING to every primary: the readiness probe's question, answered within the timeout."""
        shards = self.topology.shards()
        down = []
        for shard in shards:
            try:
                shard.channel.call("PING")
            except FAILURES as exc:
                self.stats.redis_error(failure_kind(exc))
                self.refresher.mark_down(shard, exc)
                down.append(f"{shard.name}: {exc}")
            else:
                self.refresher.mark_up(shard)
        if down and len(down) == len(shards) and self.on_error == "reject":
            return f"Redis unavailable ({'; '.join(down)}) and on-redis-error=reject"
        return ""
