"""Lease refresh and recovery: keeping this worker's counts right in Redis through faults.

Every ``lease_ttl/3`` the refresher sends this worker's absolute count per host
(``refresh.lua``) over the same ordered connection as the acquires, at a point where no
reply is outstanding. Redis runs commands in the order they were sent, so the refresh
lands after every acquire and release it accounts for and before every one it does not:
the count it sets is exact there. The same refresh renews this worker's lease: a killed
worker's slots come back within ``lease_ttl``; a live tunnel keeps its slot as long as
its worker lives.

A lease cannot tell a dead holder from a cut-off one, so every way back from a fault
waits for holders before admitting (docs/design.md, "Leases and faults"):
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

import logging
import time
from collections.abc import Callable, Sequence

import gevent
import gevent.event

from ..background import Background
from ..limits.hosts import HostKey
from ..stats import ProxyStats
from .channel import Build, Connected, OnReply
from .counts import DATA_LOST, WorkerCounts
from .keys import KeySpace
from .leases import LeaseBook
from .protocol import ReplyError
from .routing import FAILURES, Router, failure_kind, is_redirect
from .scripts import ALL, REFRESH, RefreshReply, ScriptRunner
from .topology import Shard, Topology

RETRY_INTERVAL = 1.0  # while a shard is down, admission uses the policy for this long between probes
Fence = Callable[[set[HostKey]], int]  # closes the connections of these keys; how many


def _command(*parts: object) -> Build:
    """A command known in full now (a Build is called as the command leaves)."""
    return lambda: parts


class Refresher:
    def __init__(
        self,
        worker: str,
        lease_ttl: float,
        counts: WorkerCounts,
        keyspace: KeySpace,
        router: Router,
        leases: LeaseBook,
        stats: ProxyStats,
        log: logging.Logger,
        *,
        on_error: str,
        on_lease_loss: str,
        on_down: Callable[[], None],
        fence: Callable[[], Fence | None],
        before_round: Callable[[], None],
    ) -> None:
        """``on_down``: a shard went down (waiters answer by policy now); ``fence()``: what
        closes connections whose lease lapses (--on-lease-loss close); ``before_round``:
        work to retry at each refresh (queue tickets Redis could not be told to drop)."""
        self.worker = worker
        self.lease_ttl = lease_ttl
        self.counts = counts
        self.keyspace = keyspace
        self.topology: Topology = keyspace.topology
        self.router = router
        self.leases = leases
        self.stats = stats
        self.log = log
        self.on_error = on_error
        self.on_lease_loss = on_lease_loss
        self._on_down = on_down
        self._fence = fence
        self._before_round = before_round
        self.lease_ms = int(lease_ttl * 1000)
        self.key_ttl_ms = self.lease_ms * 3
        # A reconnection: every worker lost the same connection and reconnects within a
        # probe interval; holders re-assert as their first command.
        self.reconnect_pause = RETRY_INTERVAL + 0.25
        # Data lost behind a live connection: holders notice at their next refresh.
        self.epoch_pause = lease_ttl / 3 + 0.25
        self._now = gevent.event.Event()
        self._loop = Background(self._run)

    def wake(self) -> None:
        """Refresh now rather than at the next interval."""
        self._now.set()

    # health and recovery ---------------------------------------------------------------
    def mark_down(self, shard: Shard, exc: BaseException) -> None:
        shard.down_until = time.monotonic() + RETRY_INTERVAL
        self._on_down()
        if shard.healthy:
            shard.healthy = False
            self.log.error(
                "Redis unavailable at %s (%s): on-redis-error=%s until it is back", shard.name, exc, self.on_error
            )

    def mark_up(self, shard: Shard) -> None:
        if not shard.healthy:
            shard.healthy = True
            self.log.warning("Redis available again at %s", shard.name)
            self._now.set()

    def recover(self, shard: Shard, pause: float, reason: str) -> None:
        """Admit nothing on ``shard`` for ``pause`` while every holder re-asserts its counts."""
        until = time.monotonic() + pause
        if until > shard.paused_until + 0.1:
            self.log.warning("Redis %s: %s; re-asserting counts, admissions paused %.2fs", shard.name, reason, pause)
        shard.paused_until = max(shard.paused_until, until)
        self._now.set()

    def data_lost(self, shard: Shard) -> None:
        self.recover(shard, self.epoch_pause, DATA_LOST)

    def on_connect(self, shard: Shard, connected: Connected) -> Sequence[tuple[Build, OnReply | None]]:
        """A connection is up: load the scripts, and re-assert this worker's counts first.

        Runs before anything else is sent on the connection (and without yielding).
        """
        now = time.monotonic()
        if connected.first:
            shard.server_id = connected.server_id
        elif connected.server_id != shard.server_id:
            shard.server_id = connected.server_id
            self.recover(shard, self.reconnect_pause, f"now {connected.address}, another server (restart or failover)")
        elif shard.refreshed_at is not None and now - shard.refreshed_at >= self.lease_ttl - self.leases.margin:
            self.recover(shard, self.reconnect_pause, "this worker was cut off longer than its lease")
        if shard.channel.kill_refused:
            self.log.warning("Redis %s refused CLIENT KILL: a dead connection's late commands can land", shard.name)
        commands: list[tuple[Build, OnReply | None]] = [
            (_command("SCRIPT", "LOAD", script.source), None) for script in ALL
        ]
        if connected.first:
            return commands
        keys = [key for key in set(self.counts.local) | self.counts.touched if self.keyspace.shard_of(key) is shard]
        if keys:
            commands += self._first_refreshes(shard, keys, sent_at=now)
        return commands

    def _first_refreshes(
        self, shard: Shard, keys: Sequence[HostKey], sent_at: float
    ) -> list[tuple[Build, OnReply | None]]:
        """Refreshes of ``keys`` to send first on a new connection; their replies renew the lease."""
        remaining = len(keys)

        def on_reply(key: HostKey) -> OnReply:
            def settle(reply: object) -> None:
                nonlocal remaining
                if isinstance(reply, BaseException):
                    self.counts.touched.add(key)
                    return
                self._refreshed(shard, key, reply, sent_at)
                remaining -= 1
                if not remaining:
                    shard.refreshed_at = sent_at
                    self.leases.recompute(shard)

            return settle

        return [
            (ScriptRunner.builder(REFRESH, self.keyspace.keys(key), self._args(key)), on_reply(key)) for key in keys
        ]

    def _refreshed(self, shard: Shard, key: HostKey, reply: object, sent_at: float) -> None:
        refreshed = RefreshReply.parse(reply)
        self.counts.learn_epoch(key, refreshed.epoch)
        self.stats.lease_refreshed()
        if self.counts.held(key):  # sent with this worker's count (> 0): its lease was renewed
            self.leases.renewed(key, sent_at)
            self.counts.fleet_seen[key] = refreshed.total
        else:
            self.counts.fleet_seen.pop(key, None)
        if refreshed.changed:
            self.data_lost(shard)

    # the refresh loop ------------------------------------------------------------------
    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()

    def _run(self) -> None:
        while True:
            self._now.wait(self._next_wait())
            self._now.clear()
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
        self._before_round()
        by_shard: dict[Shard, list[HostKey]] = {}
        for key in self.counts.to_refresh():
            shard = self.keyspace.shard_of(key)
            if shard is None:
                self.counts.touched.add(key)  # a Cluster slot not mapped yet: next time
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
        fence = self._fence()
        if self.on_lease_loss == "close" and fence is not None:
            closed = fence(keys)
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
                sum(self.counts.held(key) for key in keys),
            )

    def _args(self, key: HostKey, goodbye: bool = False) -> Callable[[], tuple]:
        """refresh.lua's arguments, read only as the command leaves."""

        def args() -> tuple:
            known, new = self.counts.epoch_args(key)
            count = 0 if goodbye else self.counts.held(key)
            return (self.worker, count, self.lease_ms, self.key_ttl_ms, known, new)

        return args

    def _refresh_shard(self, shard: Shard, keys: list[HostKey], goodbye: bool) -> bool:
        sent_at = time.monotonic()
        moved: list[tuple[HostKey, ReplyError]] = []
        try:
            if keys:
                calls = [(self.keyspace.keys(key), self._args(key, goodbye)) for key in keys]
                replies = shard.runner.run_drained(REFRESH, calls)
                for key, reply in zip(keys, replies, strict=True):
                    if not isinstance(reply, ReplyError):
                        self._refreshed(shard, key, reply, sent_at)
                    elif is_redirect(reply):
                        moved.append((key, reply))
                    else:
                        raise reply
            else:
                self._probe(shard)
        except FAILURES as exc:
            self.counts.touched |= set(keys)
            self.stats.redis_error(failure_kind(exc))
            self.mark_down(shard, exc)
            return False
        shard.refreshed_at = sent_at
        self.leases.recompute(shard)
        self.mark_up(shard)
        for key, redirect in moved:  # its slot moved (or is moving) to another node: follow it
            self._refresh_moved(shard, key, redirect, goodbye)
        return True

    def _refresh_moved(self, shard: Shard, key: HostKey, redirect: ReplyError, goodbye: bool) -> None:
        """Refresh one key whose slot is elsewhere now. Sent on its own, not drained: across two
        channels a count can only be too high at Redis (a slot is counted from before its
        acquire leaves until its release is answered), and the next refresh corrects that."""
        sent_at = time.monotonic()
        try:
            target, reply = self.router.run(shard, key, REFRESH, self._args(key, goodbye), redirect=redirect)
        except FAILURES:
            self.counts.touched.add(key)  # retried at the next refresh
            return
        self._refreshed(target, key, reply, sent_at)

    def _probe(self, shard: Shard) -> None:
        """A round trip while this worker holds nothing here: notices outages (and data loss)
        while idle, and keeps the epoch markers it knows alive."""
        epochs = self.counts.epochs
        markers = [marker for marker in epochs if self.topology.holder(marker) is shard]
        if not markers:
            shard.channel.call("PING")
            return
        deadline = shard.channel.deadline()
        results = [
            shard.channel.send(_command("PEXPIRE", marker, self.key_ttl_ms), deadline=deadline) for marker in markers
        ]
        for marker, result in zip(markers, results, strict=True):
            if shard.channel.wait(result, deadline) == 0:  # gone: Redis lost data
                del epochs[marker]
                self.data_lost(shard)
