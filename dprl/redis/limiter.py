"""Redis limiter: per-host caps shared by a fleet of proxy processes.

Keys per host share a hash tag, so each script touches keys in one Cluster slot:
``{prefix}:{key}:counts`` (hash: worker id -> its open connections) and
``{prefix}:{key}:leases`` (sorted set: worker id -> lease expiry in Redis server time),
plus the epoch marker of that slot (below). Admission is one EVALSHA, O(workers holding
that host), whatever else Redis stores.

Never undercount. This worker counts a slot locally (``_local``) from the moment its
acquire is sent until its release is answered, and every ``lease_ttl/3`` sends its
absolute count per host (``refresh.lua``) over the same ordered connection as the
acquires, at a point where no reply is outstanding. Redis runs commands in the order
they were sent, so the refresh lands after every acquire and release it accounts for and
before every one it does not: the count it sets is exact there. Between refreshes the
count in Redis can only be too high (a release lost with its connection), never too
low, and the next refresh corrects it. The same refresh renews this worker's lease: a
killed worker's slots come back within ``lease_ttl``; a live tunnel keeps its slot as
long as its worker lives.

A lease cannot tell a dead holder from a cut-off one, so every way back from a fault
waits for holders before admitting (DESIGN.md section 8):
- Reconnecting to a *different* server (a restart, a failover: Redis's run_id changed),
  or after being cut off longer than the lease: this worker's counts are re-asserted as
  the first commands of the new connection, and it admits nothing for a recovery pause,
  long enough for every other worker (all of them lost the same connection) to do the
  same. The new connection's handshake kills the old one at Redis first, so a late
  release from it cannot land after the re-assertion (channel.py).
- Losing data without a reconnection (FLUSHALL, eviction): the epoch marker the scripts
  check is gone or changed; whoever notices first re-creates it, re-asserts and pauses
  for one refresh interval, in which every holder's periodic refresh re-asserts too.
- This worker cut off alone: it cannot renew, and its lease will lapse in Redis while its
  tunnels live on. ``--on-lease-loss close`` ends those tunnels just before the lease
  runs out, so the cap holds at the upstream; ``keep`` lets them run, uncounted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import gevent
import gevent.event

from ..errors import LimiterUnavailable, LimitExceeded, RedisUnavailable
from ..limits.hosts import SHARED, HostKey, HostLimits
from ..limits.limiter import Limiter, Slot, count_down
from ..limits.waiting import Waiter, Watch
from ..stats import ProxyStats
from .address import RedisDeployment
from .channel import Build, Connected, OnReply
from .leases import LeaseBook
from .protocol import ReplyError
from .scripts import ACQUIRE, ALL, COUNT, LEAVE, REFRESH, RELEASE, ScriptRunner, is_noscript
from .stored_limits import LIMITS_TAG, LimitSync, change, limits_channel
from .subscriber import Subscriber
from .topology import Shard, Topology, make_topology

RETRY_INTERVAL = 1.0  # while a shard is down, admission uses the policy for this long between probes
MAX_REDIRECTS = 4  # MOVED / ASK followed at once per call; more are followed every 10 ms
_FAILURES = (RedisUnavailable, ReplyError)
_REDIRECTS = ("MOVED", "ASK", "TRYAGAIN")
_QUEUED = (ACQUIRE, RELEASE)  # scripts that also see the host's queue (KEYS[4], KEYS[5])


class KeyUnavailable(RedisUnavailable):
    """One host's keys cannot be reached now, though their node answers: split between two
    Cluster nodes by a resharding in progress (TRYAGAIN past the Redis timeout), or
    redirected where this worker cannot follow. That host alone answers by policy."""

    kind = "cluster"


def _kind(exc: BaseException) -> str:
    """The ``kind`` label of dprl_redis_errors_total for a failure."""
    return getattr(exc, "kind", "reply")


def _redirect(reply: object) -> bool:
    return isinstance(reply, ReplyError) and reply.code in _REDIRECTS


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
        self._lease_ms = int(lease_ttl * 1000)
        self._key_ttl_ms = self._lease_ms * 3
        # A reconnection: every worker lost the same connection and reconnects within a
        # probe interval; holders re-assert as their first command.
        self._reconnect_pause = RETRY_INTERVAL + 0.25
        # Data lost behind a live connection: holders notice at their next refresh.
        self._epoch_pause = lease_ttl / 3 + 0.25
        # Act on a lapsing lease this long before Redis would drop it.
        self._lease_margin = min(0.25, lease_ttl / 10)
        self._proposal = secrets.token_hex(8)  # the epoch a missing marker gets (see _epoch_args)
        # Epoch marker key -> the epoch this worker last saw there. Keyed by marker, not by
        # node: in a Cluster a marker moves with its slot when it is resharded.
        self._epochs: dict[str, str] = {}
        self._local: dict[HostKey, int] = {}  # slots counted by this worker, held or in flight
        self._fleet_seen: dict[HostKey, int] = {}  # fleet-wide counts in the last replies (for operators)
        self.leases = LeaseBook(lease_ttl, self._lease_margin, self._held_on)
        self._touched: set[HostKey] = set()  # keys to refresh even at count 0 (clears leftovers)
        self._refresh_now = gevent.event.Event()
        self._queue_skipped = False  # the last call left the queue's keys out (see _run)
        self._tickets = 0  # waiters' tickets so far ("worker|sequence": arrival order within this worker)
        self._lost_tickets: dict[str, HostKey] = {}  # tickets Redis could not be told to drop yet
        self._wake_prefix = f"{prefix}:wake:"
        self._poll = min(1.0, lease_ttl / 3)  # the oldest waiter's safety poll (and waiting lease renewal)
        self._refresher: gevent.Greenlet | None = None
        self._hub: gevent.hub.Hub | None = None
        self._hub_thread = 0
        self.topology: Topology = make_topology(deployment, prefix, timeout, f"dprl:{self.worker}", self._setup_shard)
        self.limit_sync = LimitSync(limits, lambda: self.topology.shard_for(LIMITS_TAG).runner, prefix, log)
        self._subscriber = Subscriber(
            self.topology.wake_address,
            {
                self._wake_prefix + self.worker: self.waiting.wake_oldest,
                limits_channel(prefix): self.limit_sync.on_message,
            },
            timeout,
            self.waiting.wake_all,
            log,
        )

    @property
    def mode(self) -> str:
        return "redis"

    def describe(self) -> str:
        return (
            f"redis={self.deployment} prefix={self.prefix} worker={self.worker} lease-ttl={self.lease_ttl:g}s "
            f"on-redis-error={self.on_error} on-lease-loss={self.on_lease_loss}"
        )

    def _tag(self, key: HostKey) -> str:
        """The hash tag of ``key``'s keys: the host itself, or its shared cap's (``shared:NAME``:
        the hosts of a shared cap and the cap's own count live in one Cluster slot, so one
        script admits against both). ``shared:NAME`` is the key of the cap's own count."""
        if key.startswith(SHARED):
            return key
        cap = self.limits.shared_cap_for(key)
        return key if cap is None else SHARED + cap.name

    def keys(self, key: HostKey) -> tuple[str, str, str]:
        tag = self._tag(key)
        base = f"{self.prefix}:{{{tag}}}" if tag == key else f"{self.prefix}:{{{tag}}}:{key}"
        return f"{base}:counts", f"{base}:leases", self.topology.marker(tag)

    def queue_keys(self, key: HostKey) -> tuple[str, str]:
        """The fleet's queue of ``key``'s line (tickets by arrival; a shared cap's hosts share
        one) and the waiting leases of its workers."""
        tag = self._tag(key)
        return f"{self.prefix}:{{{tag}}}:queue", f"{self.prefix}:{{{tag}}}:waiting"

    def _script_keys(self, script: Any, key: HostKey) -> tuple[str, ...]:
        """Acquire and release see the queue too, and a shared cap's own count (KEYS[6], [7])."""
        keys = self.keys(key)
        if script not in _QUEUED:
            return keys
        tag = self._tag(key)
        if tag == key:
            return keys + self.queue_keys(key)
        return keys + self.queue_keys(key) + self.keys(tag)[:2]

    def _epoch_args(self, key: HostKey) -> tuple[str, str]:
        """(the epoch this worker knows for key's marker, a new one should it be missing).

        The proposal stays the same until a script used it (then a fresh one is drawn), so
        commands keep their cached encoding; a marker re-created after another loss never
        carries an epoch any worker already knows.
        """
        return self._epochs.get(self.topology.marker(self._tag(key)), ""), self._proposal

    # admission -------------------------------------------------------------------------
    def acquire(self, key: HostKey, watch: Watch | None = None) -> Slot:
        limit = self.limits.limit_for(key)
        self._touched.add(key)
        slot, _, shared = self._attempt(key, limit)
        if slot is not None:
            return slot
        if not self.waiting.policy.timeout:
            cap = self.limits.shared_cap_for(key) if shared else None
            raise LimitExceeded(key, cap.limit, shared) if cap is not None else LimitExceeded(key, limit)
        return self._wait(key, limit, watch)

    def _wait(self, key: HostKey, limit: int, watch: Watch | None) -> Slot:
        """Wait in the fleet's queue of ``key``: the first attempt with a ticket enqueues it
        (arrival order by Redis's clock); then the waiter asks again when woken (a slot
        freed for it), and this process's oldest waiter of the host also every poll
        interval (lost wake-ups; it renews the worker's waiting lease too)."""
        waiting = self.waiting
        waiter = waiting.enter(key, limit, self._tag(key))
        self._tickets += 1
        waiter.ticket = f"{self.worker}|{self._tickets:012d}"
        deadline = waiter.arrived + waiting.policy.timeout
        enqueued = False
        slot: Slot | None = None
        self._subscriber.ensure()
        try:
            with watch() if watch is not None else contextlib.nullcontext() as gone:
                while True:
                    slot, wake_next, _ = self._attempt(key, limit, waiter)
                    if slot is not None:
                        if wake_next:
                            waiting.wake_next(waiter)
                        return slot
                    enqueued = True
                    poll = self._poll if waiting.is_oldest(waiter) else None
                    waiting.wait(waiter, limit, deadline, gone, poll)
        finally:
            waiting.leave(waiter)
            self.stats.queue_waited(time.monotonic() - waiter.arrived)
            if slot is None and enqueued:
                self._leave_queue(key, waiter.ticket)

    def _leave_queue(self, key: HostKey, ticket: str) -> None:
        """Give up a place in the fleet's queue (bounded by the Redis timeout). If Redis
        cannot be told, the ticket is retried at each refresh: a ghost never blocks others."""
        line = self._tag(key)
        last = "1" if line not in self.waiting.hosts else "0"
        shard = self.topology.known_shard(self._tag(key))
        if shard is None or not shard.healthy:
            self._lost_tickets[ticket] = key
            return
        try:
            shard.runner.run(LEAVE, self.queue_keys(key), (ticket, self._wake_prefix, line, last))
            self._lost_tickets.pop(ticket, None)
        except _FAILURES as exc:
            self.stats.redis_error(_kind(exc))
            self._lost_tickets[ticket] = key

    def _attempt(self, key: HostKey, limit: int, waiter: Waiter | None = None) -> tuple[Slot | None, bool, str]:
        """One admission: (the slot, or None when refused at the cap; whether another waiter
        of this worker may go too; the shared cap that refused, if it was one). ``waiter``:
        ask with its ticket (enqueued if refused)."""
        try:
            shard = self.topology.shard_for(self._tag(key))
        except RedisUnavailable as exc:
            return self._fallback(key, limit, str(exc)), False, ""
        refusal = self._refusal(shard)
        if refusal:
            return self._fallback(key, limit, refusal), False, ""
        abandoned = False
        sent_at = 0.0

        def count() -> None:
            nonlocal sent_at
            sent_at = time.monotonic()
            self._count(key)  # counted as the acquire leaves, in order with the refreshes

        def on_reply(reply: object) -> None:
            # Runs in the channel's reader as the reply arrives: no refresh sees it half-done.
            admitted = not isinstance(reply, BaseException) and reply[0] == 1  # type: ignore[index]
            if not admitted:
                self._uncount(key)  # refused, not run (NOSCRIPT, MOVED), or unknown: a refresh settles it
            elif abandoned:
                gevent.spawn(self._release, key)  # the caller was killed while waiting

        known, new = self._epoch_args(key)
        ticket, last, line = "", "0", self._tag(key)
        if waiter is not None:
            ticket, last = waiter.ticket, "1" if len(self.waiting.hosts.get(line, ())) <= 1 else "0"
        cap = self.limits.shared_cap_for(key) if line != key else None
        lease, ttl, wake = self._lease_ms, self._key_ttl_ms, self._wake_prefix
        args = (self.worker, limit, lease, ttl, known, new, ticket, wake, line, last, cap.limit if cap else "")
        try:
            shard, reply = self._run(shard, key, ACQUIRE, args, count, on_reply)
        except _FAILURES as exc:  # the shard that failed is marked down (see _run)
            return self._fallback(key, limit, str(exc)), False, ""
        except BaseException:
            abandoned = True
            raise
        finally:
            shard.probing = False
        self._mark_up(shard)
        admitted, total, own_before, epoch, _ahead, wake_self, by_shared = reply
        self._fleet_seen[key] = total
        self._learn_epoch(key, epoch)
        if admitted == -1:
            self._recover(shard, self._epoch_pause, "the epoch marker is gone or changed: Redis lost data")
            return self._fallback(key, limit, "re-asserting counts after Redis lost data"), False, ""
        if not admitted:
            return None, False, cap.name if by_shared and cap is not None else ""
        if own_before < 0:  # this admission gave the worker its lease on key
            self.leases.created(shard, key, sent_at)
        else:
            self.leases.admitted(key, sent_at)
        if waiter is not None and self._queue_skipped:  # its ticket is still queued: give it up
            gevent.spawn(self._leave_queue, key, waiter.ticket)
        slot = Slot(key, self._release, shared=True)
        if self.wait_replicas:
            self._wait_for_replicas(shard, slot)
        return slot, wake_self == 1, ""

    def _refusal(self, shard: Shard) -> str:
        """Why admission on ``shard`` cannot ask Redis now ("" if it can)."""
        now = time.monotonic()
        if now < shard.paused_until:
            return "re-asserting counts after a Redis recovery"
        if self.leases.lapsed(shard, now):
            self._refresh_now.set()
            return "this worker's lease lapsed"
        if not shard.healthy:
            if shard.probing or now < shard.down_until:
                return "Redis is down"
            shard.probing = True  # this caller probes; the others use the policy meanwhile
        return ""

    def _fallback(self, key: HostKey, limit: int, reason: str) -> Slot:
        if self.on_error == "reject":
            raise LimiterUnavailable(f"Redis unavailable ({reason})")
        if self.on_error == "local" and limit and self._local.get(key, 0) >= limit:
            raise LimitExceeded(key, limit)
        cap = self.limits.shared_cap_for(key) if self.on_error == "local" else None
        if cap is not None and self._local.get(SHARED + cap.name, 0) >= cap.limit:
            raise LimitExceeded(key, cap.limit, shared=cap.name)
        # Counted here, not in Redis: the next refresh adds it there once Redis is back.
        self._count(key)
        return Slot(key, self._uncount)

    def _wait_for_replicas(self, shard: Shard, slot: Slot) -> None:
        """--redis-wait-replicas: an admission counts only once replicas hold it (WAIT)."""
        try:
            acknowledged = shard.channel.call("WAIT", self.wait_replicas, int(self.timeout * 1000))
        except _FAILURES as exc:
            acknowledged = 0
            self._mark_down(shard, exc)
        if int(acknowledged) < self.wait_replicas:  # type: ignore[call-overload]
            slot.release()
            raise LimiterUnavailable(f"only {acknowledged} of {self.wait_replicas} replicas confirmed the admission")

    def _release(self, key: HostKey) -> None:
        """Send the release and wait for it (bounded by the Redis timeout).

        Waiting keeps the client's view and the fleet's in step: its connection closes
        only once the slot is free in Redis, so a client that reconnects at once is not
        refused by a slot it just gave back. The local count drops when the reply is
        read (in the channel's reader), so a refresh counts the slot until Redis has
        applied the release: Redis never sees fewer than are open.
        """
        shard = self.topology.known_shard(self._tag(key))
        if shard is None or not shard.healthy or time.monotonic() < shard.down_until:
            self._uncount(key)  # Redis keeps an extra count until the next refresh
            return
        in_flight = settled = False

        def sent() -> None:
            nonlocal in_flight
            in_flight = True

        def on_reply(reply: object) -> None:
            nonlocal in_flight, settled
            in_flight = False
            if is_noscript(reply) or _redirect(reply):
                return  # not run: sent again once the script is loaded, or to the right node
            settled = True
            self._uncount(key)
            if reply == -1:
                self._refresh_now.set()  # Redis had no count of ours: it lost data
            elif reply == -2:
                self._recover(shard, self._epoch_pause, "the epoch marker is gone or changed: Redis lost data")

        known = self._epochs.get(self.topology.marker(self._tag(key)), "")
        try:
            self._run(shard, key, RELEASE, (self.worker, known, self._wake_prefix, self._tag(key)), sent, on_reply)
        except _FAILURES:
            pass  # Redis may keep an extra count until the next refresh
        finally:
            if not in_flight and not settled:
                self._uncount(key)  # never sent, or not run: no reply will settle it

    def _run(
        self,
        shard: Shard,
        key: HostKey,
        script: Any,
        args: tuple[object, ...] | Callable[[], tuple],
        before_send: Callable[[], None] | None = None,
        on_reply: OnReply | None = None,
        redirect: ReplyError | None = None,
    ) -> tuple[Shard, Any]:
        """Run a script for ``key``, following a Cluster's MOVED and ASK (``redirect``: one
        already received), and retrying TRYAGAIN (a slot's keys split by a migration, for
        a moment) until the Redis timeout."""
        deadline = time.monotonic() + self.timeout
        asking = False
        redirects = 0
        # While a Cluster slot migrates, a call naming a key that does not exist (a host's
        # queue, almost always) gets TRYAGAIN until the migration ends: after the first one
        # the queue's keys are left out (the cap still holds; arrival order may not, for
        # that moment, and waiters fall back on their poll).
        bare = False
        while True:
            if redirect is not None:
                try:
                    if redirect.code == "TRYAGAIN":
                        bare = True
                        if time.monotonic() + 0.02 >= deadline:
                            raise KeyUnavailable(f"the Cluster slot of {key} is being migrated (TRYAGAIN)")
                        gevent.sleep(0.01)
                    elif redirect.code in ("MOVED", "ASK"):
                        # Two nodes can send a call back and forth for a moment while they
                        # agree on a slot's new owner: past a few, follow more slowly, and
                        # only until the deadline.
                        redirects += 1
                        if redirects > MAX_REDIRECTS:
                            if time.monotonic() + 0.02 >= deadline:
                                raise KeyUnavailable(f"{key}: {redirect}")
                            gevent.sleep(0.01)
                        try:
                            shard = self.topology.redirected(redirect)
                        except RedisUnavailable as exc:
                            raise KeyUnavailable(f"{key}: {exc}") from None
                        asking = redirect.code == "ASK"
                    else:
                        raise KeyUnavailable(f"{key}: {redirect}")
                except KeyUnavailable:
                    self.stats.redis_error("cluster")
                    raise
            started = time.monotonic()
            try:
                keys = self._script_keys(script, key)
                if bare and len(keys) == 5:
                    keys = keys[:3]
                reply = shard.runner.run(script, keys, args, before_send, on_reply, deadline, asking)
                self.stats.redis_request(time.monotonic() - started)
                self._queue_skipped = bare  # read by the caller before it yields
                return shard, reply
            except _FAILURES as exc:
                if isinstance(exc, ReplyError) and exc.code in _REDIRECTS:
                    redirect = exc
                    continue
                self.stats.redis_error(_kind(exc))
                self._mark_down(shard, exc)
                raise

    def _count(self, key: HostKey) -> None:
        self._local[key] = self._local.get(key, 0) + 1
        tag = self._tag(key)
        if tag != key:  # and the shared cap's own count
            self._local[tag] = self._local.get(tag, 0) + 1

    def _uncount(self, key: HostKey) -> None:
        tag = self._tag(key)
        if tag != key:
            self._uncount(tag)
        if count_down(self._local, key):
            self._touched.add(key)  # refresh it once more, at 0, to clear any leftover
            self.leases.dropped(key)

    def _learn_epoch(self, key: HostKey, epoch: object) -> None:
        if isinstance(epoch, bytes):
            value = epoch.decode()
            self._epochs[self.topology.marker(self._tag(key))] = value
            if value == self._proposal:
                self._proposal = secrets.token_hex(8)

    # health and recovery ---------------------------------------------------------------
    def _mark_down(self, shard: Shard, exc: BaseException) -> None:
        shard.down_until = time.monotonic() + RETRY_INTERVAL
        self.waiting.wake_all()  # waiters answer by policy now, not at their timeout
        if shard.healthy:
            shard.healthy = False
            self.log.error(
                "Redis unavailable at %s (%s): on-redis-error=%s until it is back", shard.name, exc, self.on_error
            )

    def _mark_up(self, shard: Shard) -> None:
        if not shard.healthy:
            shard.healthy = True
            self.log.warning("Redis available again at %s", shard.name)
            self._refresh_now.set()

    def _recover(self, shard: Shard, pause: float, reason: str) -> None:
        """Admit nothing on ``shard`` for ``pause`` while every holder re-asserts its counts."""
        until = time.monotonic() + pause
        if until > shard.paused_until + 0.1:
            self.log.warning("Redis %s: %s; re-asserting counts, admissions paused %.2fs", shard.name, reason, pause)
        shard.paused_until = max(shard.paused_until, until)
        self._refresh_now.set()

    def _held_on(self, shard: Shard) -> list[HostKey]:
        return [key for key, n in self._local.items() if n and self.topology.known_shard(self._tag(key)) is shard]

    def _setup_shard(self, shard: Shard) -> None:
        shard.channel.on_connect = lambda connected: self._on_connect(shard, connected)

    def _on_connect(self, shard: Shard, connected: Connected) -> Sequence[tuple[Build, OnReply | None]]:
        """A connection is up: load the scripts, and re-assert this worker's counts first.

        Runs before anything else is sent on the connection (and without yielding).
        """
        now = time.monotonic()
        if connected.first:
            shard.server_id = connected.server_id
        elif connected.server_id != shard.server_id:
            shard.server_id = connected.server_id
            self._recover(
                shard, self._reconnect_pause, f"now {connected.address}, another server (restart or failover)"
            )
        elif shard.refreshed_at is not None and now - shard.refreshed_at >= self.lease_ttl - self._lease_margin:
            self._recover(shard, self._reconnect_pause, "this worker was cut off longer than its lease")
        if shard.channel.kill_refused:
            self.log.warning("Redis %s refused CLIENT KILL: a dead connection's late commands can land", shard.name)
        commands: list[tuple[Build, OnReply | None]] = [
            (lambda script=script: ("SCRIPT", "LOAD", script.source), None) for script in ALL
        ]
        if connected.first:
            return commands
        keys = [key for key in set(self._local) | self._touched if self.topology.known_shard(self._tag(key)) is shard]
        if keys:
            commands += self._refresh_commands(shard, keys, sent_at=now)
        return commands

    def _refresh_commands(
        self, shard: Shard, keys: Sequence[HostKey], sent_at: float
    ) -> list[tuple[Build, OnReply | None]]:
        """Refreshes of ``keys`` to send first on a new connection; their replies renew the lease."""
        remaining = len(keys)

        def on_reply(key: HostKey) -> OnReply:
            def settle(reply: object) -> None:
                nonlocal remaining
                if isinstance(reply, BaseException):
                    self._touched.add(key)
                    return
                self._refreshed(shard, key, reply, sent_at)
                remaining -= 1
                if not remaining:
                    shard.refreshed_at = sent_at
                    self.leases.recompute(shard)

            return settle

        return [(ScriptRunner.builder(REFRESH, self.keys(key), self._refresh_args(key)), on_reply(key)) for key in keys]

    def _refreshed(self, shard: Shard, key: HostKey, reply: object, sent_at: float) -> None:
        total, epoch, changed = reply  # type: ignore[misc]
        self._learn_epoch(key, epoch)
        self.stats.lease_refreshed()
        if self._local.get(key):  # sent with this worker's count (> 0): its lease was renewed
            self.leases.renewed(key, sent_at)
            self._fleet_seen[key] = total
        else:
            self._fleet_seen.pop(key, None)
        if changed:
            self._recover(shard, self._epoch_pause, "the epoch marker is gone or changed: Redis lost data")

    # lease refresh ---------------------------------------------------------------------
    def start(self) -> None:
        self._hub, self._hub_thread = gevent.get_hub(), threading.get_ident()
        if self._refresher is None:
            self._refresher = gevent.spawn(self._refresh_loop)
        self._subscriber.start()
        self.limit_sync.start()

    def _refresh_loop(self) -> None:
        while True:
            self._refresh_now.wait(self._next_wait())
            self._refresh_now.clear()
            self.refresh()

    def _next_wait(self) -> float:
        """Until the next refresh: a third of the lease, a probe interval while a shard is down,
        and never past the moment a lapsing lease must be acted on."""
        wait = self.lease_ttl / 3
        now = time.monotonic()
        for shard in self.topology.shards():
            if not shard.healthy:
                wait = min(wait, RETRY_INTERVAL)
            deadline = self.leases.next_deadline(shard, now)
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - now))
        return wait

    def refresh(self, goodbye: bool = False) -> bool:
        """Send this worker's exact count and lease for every key it holds or touched.

        The counts are read when nothing is in flight on the ordered channel (see
        RedisChannel.send_drained), so they are exact at the point where Redis runs them.
        ``goodbye`` sends 0 everywhere: this worker's part of every count is removed.
        """
        for ticket, key in list(self._lost_tickets.items()):
            self._leave_queue(key, ticket)
        keys, self._touched = set(self._local) | self._touched, set()
        by_shard: dict[Shard, list[HostKey]] = {}
        for key in keys:
            shard = self.topology.known_shard(self._tag(key))
            if shard is None:
                self._touched.add(key)  # a Cluster slot not mapped yet: next time
            else:
                by_shard.setdefault(shard, []).append(key)
        done = True
        for shard in self.topology.shards():
            if not goodbye:
                self._check_lease(shard)
            done &= self._refresh_shard(shard, by_shard.get(shard, []), goodbye)
        return done

    def _check_lease(self, shard: Shard) -> None:
        """--on-lease-loss: leases about to lapse in Redis, with connections they cover."""
        keys, since = self.leases.lapsing(shard, time.monotonic())
        if not keys:
            return
        if self.on_lease_loss == "close" and self.fence is not None:
            closed = self.fence(keys)
            self.log.error(
                "lease on Redis %s lapsing (not renewed for %.1fs): closed %d upstream connection(s) it covered",
                shard.name,
                since,
                closed,
            )
        else:
            self.log.error(
                "lease on Redis %s lapsing (not renewed for %.1fs): %d connection(s) go on uncounted "
                "(--on-lease-loss keep); the fleet may exceed the cap while they live",
                shard.name,
                since,
                sum(self._local.get(key, 0) for key in keys),
            )

    def _refresh_args(self, key: HostKey, goodbye: bool = False) -> Callable[[], tuple]:
        """refresh.lua's arguments, read only as the command leaves."""

        def args() -> tuple:
            known, new = self._epoch_args(key)
            count = 0 if goodbye else self._local.get(key, 0)
            return (self.worker, count, self._lease_ms, self._key_ttl_ms, known, new)

        return args

    def _refresh_shard(self, shard: Shard, keys: list[HostKey], goodbye: bool) -> bool:
        sent_at = time.monotonic()
        moved: list[tuple[HostKey, ReplyError]] = []
        try:
            if keys:
                calls = [(self.keys(key), self._refresh_args(key, goodbye)) for key in keys]
                replies = shard.runner.run_drained(REFRESH, calls)
                for key, reply in zip(keys, replies, strict=True):
                    if not isinstance(reply, ReplyError):
                        self._refreshed(shard, key, reply, sent_at)
                    elif _redirect(reply):
                        moved.append((key, reply))
                    else:
                        raise reply
            else:
                self._probe(shard)
        except _FAILURES as exc:
            self._touched |= set(keys)
            self.stats.redis_error(_kind(exc))
            self._mark_down(shard, exc)
            return False
        shard.refreshed_at = sent_at
        self.leases.recompute(shard)
        self._mark_up(shard)
        for key, redirect in moved:  # its slot moved (or is moving) to another node: follow it
            self._refresh_moved(shard, key, redirect, goodbye)
        return True

    def _refresh_moved(self, shard: Shard, key: HostKey, redirect: ReplyError, goodbye: bool) -> None:
        """Refresh one key whose slot is elsewhere now. Sent on its own, not drained: across two
        channels a count can only be too high at Redis (a slot is counted from before its
        acquire leaves until its release is answered), and the next refresh corrects that."""
        sent_at = time.monotonic()
        try:
            target, reply = self._run(shard, key, REFRESH, self._refresh_args(key, goodbye), redirect=redirect)
        except _FAILURES:
            self._touched.add(key)  # retried at the next refresh
            return
        self._refreshed(target, key, reply, sent_at)

    def _probe(self, shard: Shard) -> None:
        """A round trip while this worker holds nothing here: notices outages (and data loss)
        while idle, and keeps the epoch markers it knows alive."""
        markers = [marker for marker in self._epochs if self.topology.holder(marker) is shard]
        if not markers:
            shard.channel.call("PING")
            return
        deadline = shard.channel.deadline()
        results = [
            shard.channel.send(lambda m=marker: ("PEXPIRE", m, self._key_ttl_ms), deadline=deadline)
            for marker in markers
        ]
        for marker, result in zip(markers, results, strict=True):
            if shard.channel.wait(result, deadline) == 0:  # gone: Redis lost data
                del self._epochs[marker]
                self._recover(shard, self._epoch_pause, "the epoch marker is gone: Redis lost data")

    def close(self) -> None:
        """Graceful stop: remove this worker's counts for every key it touched."""
        if self._refresher is not None:
            self._refresher.kill()
            self._refresher = None
        self._subscriber.close()
        self.limit_sync.stop()
        if not self.refresh(goodbye=True):
            self.log.warning("could not remove this worker's counts from Redis: they expire with its lease")
        self._touched.clear()
        self.topology.close()
        self._hub = None

    # counts ----------------------------------------------------------------------------
    def fleet_count(self, key: HostKey) -> int:
        """The fleet-wide count (live leases only); callable from any thread."""
        try:
            return int(self._in_hub(lambda topology: self._count_in(topology, key)))  # type: ignore[arg-type]
        except _FAILURES as exc:
            raise LimiterUnavailable(f"Redis unavailable: {exc}") from None

    def _count_in(self, topology: Topology, key: HostKey) -> object:
        shard = topology.shard_for(self._tag(key))
        counts, leases, _ = self.keys(key)
        return shard.runner.run(COUNT, (counts, leases), ())

    def change_stored_limit(self, op: str, host: str = "", limit: int = 0, by: str = "") -> int:
        """Change the fleet's stored limits (see stored_limits.change); from any thread.
        This worker applies the change before returning; the others within a second."""

        def run(topology: Topology) -> int:
            version = change(topology.shard_for(LIMITS_TAG).runner, self.prefix, op, host, limit, by)
            if topology is self.topology:
                self.limit_sync.sync()
            return version

        try:
            return int(self._in_hub(run))  # type: ignore[call-overload]
        except _FAILURES as exc:
            raise LimiterUnavailable(f"Redis unavailable: {exc}") from None

    def process_counts(self) -> dict[HostKey, int]:
        return {key: n for key, n in self._local.items() if n and not key.startswith(SHARED)}

    def seen_fleet_counts(self) -> dict[HostKey, int]:
        return {key: n for key, n in self._fleet_seen.items() if not key.startswith(SHARED)}

    def backend_up(self) -> bool:
        return all(shard.healthy for shard in self.topology.shards())

    def probe(self) -> str:
        """A PING to every primary: the readiness probe's question, answered within the timeout."""
        shards = self.topology.shards()
        down = []
        for shard in shards:
            try:
                shard.channel.call("PING")
            except _FAILURES as exc:
                self.stats.redis_error(_kind(exc))
                self._mark_down(shard, exc)
                down.append(f"{shard.name}: {exc}")
            else:
                self._mark_up(shard)
        if down and len(down) == len(shards) and self.on_error == "reject":
            return f"Redis unavailable ({'; '.join(down)}) and on-redis-error=reject"
        return ""

    def _in_hub(self, call: Callable[[Topology], object]) -> object:
        """Run ``call`` on this worker's connections, in its hub, whatever thread asks.

        Before start (or after close) there is no hub to ask: short-lived connections of
        the calling thread answer instead.
        """
        hub = self._hub
        if hub is None:
            topology = make_topology(self.deployment, self.prefix, self.timeout, "", lambda shard: None)
            try:
                return call(topology)
            finally:
                topology.close()
        if threading.get_ident() == self._hub_thread:
            return call(self.topology)
        done = threading.Event()
        outcome: list[tuple[bool, object]] = []

        def job() -> None:
            try:
                outcome.append((True, call(self.topology)))
            except BaseException as exc:
                outcome.append((False, exc))
            finally:
                done.set()

        hub.loop.run_callback_threadsafe(gevent.spawn, job)
        if not done.wait(self.timeout * 3 + 1):
            raise RedisUnavailable("the proxy's hub did not answer")
        ok, value = outcome[0]
        if not ok:
            raise value  # type: ignore[misc]
        return value
