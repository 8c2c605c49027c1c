"""Redis limiter: per-host caps shared by a fleet of proxy processes.

Keys per host share a hash tag, so each script touches two keys in one cluster slot:
``{prefix}:{key}:counts`` (hash: worker id -> its open connections) and
``{prefix}:{key}:leases`` (sorted set: worker id -> lease expiry in Redis server time).
Admission is one EVALSHA, O(workers holding that host), whatever else Redis stores.

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
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event

from ..errors import LimiterUnavailable, LimitExceeded, RedisUnavailable
from ..limits.hosts import HostKey, HostLimits
from ..limits.limiter import Limiter, Slot, count_down
from .address import RedisAddress
from .channel import RedisChannel
from .protocol import ReplyError
from .scripts import ACQUIRE, COUNT, REFRESH, RELEASE, ScriptRunner, is_noscript

RETRY_INTERVAL = 1.0  # while Redis is down, admission uses the policy for this long between probes
_FAILURES = (RedisUnavailable, ReplyError)


class RedisLimiter(Limiter):
    """Caps shared through Redis; ``on_error`` is the policy while Redis is unreachable.

    Every setting comes from the configuration (``Config``): this class has no defaults
    of its own, so each one is defined in one place.
    """

    def __init__(
        self,
        limits: HostLimits,
        address: RedisAddress,
        *,
        prefix: str,
        lease_ttl: float,
        on_error: str,
        timeout: float,
        log: logging.Logger,
        worker_id: str | None = None,
    ) -> None:
        super().__init__(limits)
        self.address = address
        self.prefix = prefix
        self.lease_ttl = lease_ttl
        self.on_error = on_error
        self.timeout = timeout
        self.log = log
        self.worker = worker_id or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.channel = RedisChannel(address, timeout, client_name=f"dprl:{self.worker}")
        self.runner = ScriptRunner(self.channel)
        self._lease_ms = int(lease_ttl * 1000)
        self._key_ttl_ms = self._lease_ms * 3
        self._local: dict[HostKey, int] = {}  # slots counted by this worker, held or in flight
        self._touched: set[HostKey] = set()  # keys to refresh even at count 0 (clears leftovers)
        self._healthy = True
        self._down_until = 0.0
        self._probing = False
        self._refresh_now = gevent.event.Event()
        self._refresher: gevent.Greenlet | None = None
        self._hub: gevent.hub.Hub | None = None
        self._hub_thread = 0

    @property
    def mode(self) -> str:
        return "redis"

    def describe(self) -> str:
        return (
            f"redis={self.address} prefix={self.prefix} worker={self.worker} "
            f"lease-ttl={self.lease_ttl:g}s on-redis-error={self.on_error}"
        )

    def keys(self, key: HostKey) -> tuple[str, str]:
        return f"{self.prefix}:{{{key}}}:counts", f"{self.prefix}:{{{key}}}:leases"

    # admission -------------------------------------------------------------------------
    def acquire(self, key: HostKey) -> Slot:
        limit = self.limits.limit_for(key)
        self._touched.add(key)
        if not self._redis_usable():
            return self._fallback(key, limit, "Redis is down")
        abandoned = False

        def count() -> None:
            self._count(key)  # counted as the acquire leaves, in order with the refreshes

        def on_reply(reply: object) -> None:
            # Runs in the channel's reader as the reply arrives: no refresh sees it half-done.
            admitted = not isinstance(reply, BaseException) and reply[0] == 1  # type: ignore[index]
            if not admitted:
                self._uncount(key)  # refused, not run (NOSCRIPT), or unknown: a refresh settles it
            elif abandoned:
                gevent.spawn(self._release, key)  # the caller was killed while waiting

        args = (self.worker, limit, self._lease_ms, self._key_ttl_ms)
        try:
            reply: Any = self.runner.run(ACQUIRE, self.keys(key), args, before_send=count, on_reply=on_reply)
        except _FAILURES as exc:
            self._mark_down(exc)
            return self._fallback(key, limit, str(exc))
        except BaseException:
            abandoned = True
            raise
        finally:
            self._probing = False
        self._mark_up()
        admitted, _total, own_before = reply
        if not admitted:
            raise LimitExceeded(key, limit)
        if own_before < 0 and self._local.get(key, 0) > 1:
            self._refresh_now.set()  # our other slots are missing from Redis: it lost data
        return Slot(key, self._release)

    def _fallback(self, key: HostKey, limit: int, reason: str) -> Slot:
        if self.on_error == "reject":
            raise LimiterUnavailable(f"Redis unavailable ({reason})")
        if self.on_error == "local" and limit and self._local.get(key, 0) >= limit:
            raise LimitExceeded(key, limit)
        # Counted here, not in Redis: the next refresh adds it there once Redis is back.
        self._count(key)
        return Slot(key, self._uncount)

    def _release(self, key: HostKey) -> None:
        """Send the release and wait for it (bounded by the Redis timeout).

        Waiting keeps the client's view and the fleet's in step: its connection closes
        only once the slot is free in Redis, so a client that reconnects at once is not
        refused by a slot it just gave back. The local count drops when the reply is
        read (in the channel's reader), so a refresh counts the slot until Redis has
        applied the release: Redis never sees fewer than are open.
        """
        if not self._redis_usable():
            self._uncount(key)  # Redis keeps an extra count until the next refresh
            return
        in_flight = settled = False

        def sent() -> None:
            nonlocal in_flight
            in_flight = True

        def on_reply(reply: object) -> None:
            nonlocal in_flight, settled
            in_flight = False
            if is_noscript(reply):
                return  # not run: the runner sends it again once the script is loaded
            settled = True
            self._uncount(key)
            if isinstance(reply, int) and reply < 0:
                self._refresh_now.set()  # Redis had no count of ours: it lost data

        try:
            self.runner.run(RELEASE, self.keys(key), (self.worker,), before_send=sent, on_reply=on_reply)
        except _FAILURES as exc:
            self._mark_down(exc)  # Redis may keep an extra count until the next refresh
        finally:
            self._probing = False
            if not in_flight and not settled:
                self._uncount(key)  # never sent, or not run: no reply will settle it

    def _count(self, key: HostKey) -> None:
        self._local[key] = self._local.get(key, 0) + 1

    def _uncount(self, key: HostKey) -> None:
        if count_down(self._local, key):
            self._touched.add(key)  # refresh it once more, at 0, to clear any leftover

    # health ----------------------------------------------------------------------------
    def _redis_usable(self) -> bool:
        """False while Redis is known down: admission answers at once instead of waiting."""
        if self._healthy:
            return True
        if self._probing or time.monotonic() < self._down_until:
            return False
        self._probing = True  # this caller probes; the others use the policy meanwhile
        return True

    def _mark_down(self, exc: BaseException) -> None:
        self._down_until = time.monotonic() + RETRY_INTERVAL
        if self._healthy:
            self._healthy = False
            self.log.error("Redis unavailable (%s): on-redis-error=%s until it is back", exc, self.on_error)

    def _mark_up(self) -> None:
        if not self._healthy:
            self._healthy = True
            self.log.warning("Redis available again: refreshing this worker's counts")
            self._refresh_now.set()

    # lease refresh ---------------------------------------------------------------------
    def start(self) -> None:
        self._hub, self._hub_thread = gevent.get_hub(), threading.get_ident()
        if self._refresher is None:
            self._refresher = gevent.spawn(self._refresh_loop)

    def _refresh_loop(self) -> None:
        while True:
            interval = self.lease_ttl / 3 if self._healthy else min(RETRY_INTERVAL, self.lease_ttl / 3)
            self._refresh_now.wait(interval)
            self._refresh_now.clear()
            self.refresh()

    def refresh(self, goodbye: bool = False) -> bool:
        """Send this worker's exact count and lease for every key it holds or touched.

        The counts are read when nothing is in flight on the ordered channel (see
        RedisChannel.send_drained), so they are exact at the point where Redis runs them.
        ``goodbye`` sends 0 everywhere: this worker's part of every count is removed.
        """
        keys, self._touched = set(self._local) | self._touched, set()

        def args(key: HostKey) -> Callable[[], tuple]:
            return lambda: (self.worker, 0 if goodbye else self._local.get(key, 0), self._lease_ms, self._key_ttl_ms)

        try:
            if keys:
                self.runner.run_drained(REFRESH, [(self.keys(key), args(key)) for key in keys])
            elif not self._healthy:
                self.channel.call("PING")  # a probe, so recovery is noticed while idle
        except _FAILURES as exc:
            self._touched |= keys
            self._mark_down(exc)
            return False
        self._mark_up()
        return True

    def close(self) -> None:
        """Graceful stop: remove this worker's counts for every key it touched."""
        if self._refresher is not None:
            self._refresher.kill()
            self._refresher = None
        if not self.refresh(goodbye=True):
            self.log.warning("could not remove this worker's counts from Redis: they expire with its lease")
        self._touched.clear()
        self.channel.close()
        self._hub = None

    # counts ----------------------------------------------------------------------------
    def fleet_count(self, key: HostKey) -> int:
        """The fleet-wide count (live leases only); callable from any thread."""
        try:
            return int(self._in_hub(lambda runner: runner.run(COUNT, self.keys(key), ())))  # type: ignore[arg-type]
        except _FAILURES as exc:
            raise LimiterUnavailable(f"Redis unavailable: {exc}") from None

    def process_counts(self) -> dict[HostKey, int]:
        return {key: n for key, n in self._local.items() if n}

    def _in_hub(self, call: Callable[[ScriptRunner], object]) -> object:
        """Run ``call`` on this worker's channel, in its hub, whatever thread asks.

        Before start (or after close) there is no hub to ask: a short-lived channel of
        the calling thread answers instead.
        """
        hub = self._hub
        if hub is None:
            channel = RedisChannel(self.address, self.timeout)
            try:
                return call(ScriptRunner(channel))
            finally:
                channel.close()
        if threading.get_ident() == self._hub_thread:
            return call(self.runner)
        done = threading.Event()
        outcome: list[tuple[bool, object]] = []

        def job() -> None:
            try:
                outcome.append((True, call(self.runner)))
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
