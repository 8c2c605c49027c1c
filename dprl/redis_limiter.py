"""Redis limiter: per-host caps shared by a fleet of proxy processes.

Keys per host share a hash tag, so each script touches two keys in one cluster slot:
``{prefix}:{host}:counts`` (hash: worker id -> its open connections) and
``{prefix}:{host}:leases`` (sorted set: worker id -> lease expiry in Redis server time).
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
import time
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
import redis
from redis.exceptions import NoScriptError, RedisError

from .errors import LimiterUnavailable, LimitExceeded
from .hosts import HostKey, HostLimits
from .limiter import Limiter, Slot, count_down
from .redis_channel import OnReply, RedisChannel, RedisUnavailable
from .redis_connection import connection_factory
from .redis_scripts import ACQUIRE, COUNT, REFRESH, RELEASE, Script

POLICIES = ("reject", "allow", "local")
RETRY_INTERVAL = 1.0  # while Redis is down, admission uses the policy for this long between probes


def masked_url(url: str) -> str:
    """The URL with its password replaced, for logs."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        auth, _, host = rest.rpartition("@")
        user = auth.split(":", 1)[0]
        return f"{scheme}{sep}{user}:***@{host}"
    return url


class RedisLimiter(Limiter):
    def __init__(
        self,
        limits: HostLimits,
        url: str,
        *,
        prefix: str = "proxy_rate_limiter",
        lease_ttl: float = 15.0,
        on_error: str = "reject",
        timeout: float = 0.5,
        log: logging.Logger | None = None,
        worker_id: str | None = None,
    ) -> None:
        super().__init__(limits)
        if on_error not in POLICIES:
            raise ValueError(f"on_error must be one of {', '.join(POLICIES)}")
        self.url = url
        self.prefix = prefix
        self.lease_ttl = lease_ttl
        self.on_error = on_error
        self.timeout = timeout
        self.log = log or logging.getLogger("dprl")
        self.worker = worker_id or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.channel = RedisChannel(connection_factory(url, timeout), timeout)
        self._lease_ms = int(lease_ttl * 1000)
        self._key_ttl_ms = self._lease_ms * 3
        self._local: dict[HostKey, int] = {}  # slots counted by this worker, held or in flight
        self._touched: set[HostKey] = set()  # hosts to refresh even at count 0 (clears leftovers)
        self._healthy = True
        self._down_until = 0.0
        self._probing = False
        self._refresh_now = gevent.event.Event()
        self._refresher: gevent.Greenlet | None = None
        self._reader_client: redis.Redis | None = None
        # RESP-encoded commands per host: the same bytes every time, so encoded once
        self._acquire_commands: dict[tuple[HostKey, int], bytes] = {}
        self._release_commands: dict[HostKey, bytes] = {}
        self._count_script = None

    @property
    def mode(self) -> str:
        return "redis"

    def describe(self) -> str:
        return (
            f"redis={masked_url(self.url)} prefix={self.prefix} worker={self.worker} "
            f"lease-ttl={self.lease_ttl:g}s on-redis-error={self.on_error}"
        )

    def keys(self, host: HostKey) -> tuple[str, str]:
        return f"{self.prefix}:{{{host}}}:counts", f"{self.prefix}:{{{host}}}:leases"

    # admission -------------------------------------------------------------------------
    def acquire(self, host: HostKey) -> Slot:
        limit = self.limits.limit_for(host)
        self._touched.add(host)
        if not self._redis_usable():
            return self._fallback(host, limit, "Redis is down")
        command = self._acquire_commands.get((host, limit))
        if command is None:
            command = ACQUIRE.command(self.keys(host), (self.worker, limit, self._lease_ms, self._key_ttl_ms))
            if len(self._acquire_commands) > 10000:
                self._acquire_commands.clear()
            self._acquire_commands[(host, limit)] = command
        abandoned = False

        def build() -> bytes:
            self._count(host)  # counted as the acquire leaves, in order with the refreshes
            return command

        def on_reply(reply: object) -> None:
            # Runs in the channel's reader as the reply arrives: no refresh sees it half-done.
            admitted = not isinstance(reply, BaseException) and reply[0] == 1  # type: ignore[index]
            if not admitted:
                self._uncount(host)  # refused, not run (NOSCRIPT), or unknown: a refresh settles it
            elif abandoned:
                gevent.spawn(self._release, host)  # the caller was killed while waiting

        try:
            reply = self._eval(ACQUIRE, build, on_reply)
        except (RedisUnavailable, RedisError) as exc:
            self._mark_down(exc)
            return self._fallback(host, limit, str(exc))
        except BaseException:
            abandoned = True
            raise
        finally:
            self._probing = False
        self._mark_up()
        admitted, _total, own_before = reply
        if not admitted:
            raise LimitExceeded(host, limit)
        if own_before < 0 and self._local.get(host, 0) > 1:
            self._refresh_now.set()  # our other slots are missing from Redis: it lost data
        return Slot(host, self._release)

    def _fallback(self, host: HostKey, limit: int, reason: str) -> Slot:
        if self.on_error == "reject":
            raise LimiterUnavailable(f"Redis unavailable ({reason})")
        if self.on_error == "local" and limit and self._local.get(host, 0) >= limit:
            raise LimitExceeded(host, limit)
        # Counted here, not in Redis: the next refresh adds it there once Redis is back.
        self._count(host)
        return Slot(host, self._uncount)

    def _release(self, host: HostKey) -> None:
        """Send the release and wait for it (bounded by the Redis timeout).

        Waiting keeps the client's view and the fleet's in step: its connection closes
        only once the slot is free in Redis, so a client that reconnects at once is not
        refused by a slot it just gave back. The local count drops when the reply is
        read (in the channel's reader), so a refresh counts the slot until Redis has
        applied the release: Redis never sees fewer than are open.
        """
        if not self._redis_usable():
            self._uncount(host)  # Redis keeps an extra count until the next refresh
            return
        command = self._release_commands.get(host)
        if command is None:
            command = RELEASE.command(self.keys(host), (self.worker,))
            if len(self._release_commands) > 10000:
                self._release_commands.clear()
            self._release_commands[host] = command

        in_flight = settled = False

        def build() -> bytes:
            nonlocal in_flight
            in_flight = True
            return command

        def on_reply(reply: object) -> None:
            nonlocal in_flight, settled
            in_flight = False
            if isinstance(reply, NoScriptError):
                return  # not run: sent again below once the script is loaded
            settled = True
            self._uncount(host)
            if isinstance(reply, int) and reply < 0:
                self._refresh_now.set()  # Redis had no count of ours: it lost data

        try:
            self._eval(RELEASE, build, on_reply)
        except (RedisUnavailable, RedisError) as exc:
            self._mark_down(exc)  # Redis may keep an extra count until the next refresh
        finally:
            self._probing = False
            if not in_flight and not settled:
                self._uncount(host)  # never sent, or not run: no reply will settle it

    def _eval(self, script: Script, build: Callable[[], bytes], on_reply: OnReply) -> Any:
        """Send and wait; on NOSCRIPT (Redis restarted or flushed scripts) load and send again."""
        try:
            return self.channel.wait(self.channel.send(build, on_reply))
        except NoScriptError:
            script.load(self.channel)
            return self.channel.wait(self.channel.send(build, on_reply))

    def _count(self, host: HostKey) -> None:
        self._local[host] = self._local.get(host, 0) + 1

    def _uncount(self, host: HostKey) -> None:
        if count_down(self._local, host):
            self._touched.add(host)  # refresh it once more, at 0, to clear any leftover

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
        if self._refresher is None:
            self._refresher = gevent.spawn(self._refresh_loop)

    def _refresh_loop(self) -> None:
        while True:
            interval = self.lease_ttl / 3 if self._healthy else min(RETRY_INTERVAL, self.lease_ttl / 3)
            self._refresh_now.wait(interval)
            self._refresh_now.clear()
            self.refresh()

    def refresh(self, goodbye: bool = False) -> bool:
        """Send this worker's exact count and lease for every host it holds or touched.

        The counts are read when nothing is in flight on the ordered channel (see
        RedisChannel.send_drained), so they are exact at the point where Redis runs them.
        ``goodbye`` sends 0 everywhere: this worker's part of every count is removed.
        """
        hosts, self._touched = set(self._local) | self._touched, set()

        def build(host: HostKey) -> Callable[[], bytes]:
            def command() -> bytes:
                count = 0 if goodbye else self._local.get(host, 0)
                return REFRESH.command(self.keys(host), (self.worker, count, self._lease_ms, self._key_ttl_ms))

            return command

        try:
            if not hosts:
                if not self._healthy:
                    self.channel.call("PING")  # a probe, so recovery is noticed while idle
            else:
                for attempt in (1, 2):
                    try:
                        for result in self.channel.send_drained([build(host) for host in hosts]):
                            self.channel.wait(result)
                        break
                    except NoScriptError:
                        if attempt == 2:
                            raise
                        REFRESH.load(self.channel)
        except (RedisUnavailable, RedisError) as exc:
            self._touched |= hosts
            self._mark_down(exc)
            return False
        self._mark_up()
        return True

    def close(self) -> None:
        """Graceful stop: remove this worker's counts for every host it touched."""
        if self._refresher is not None:
            self._refresher.kill()
            self._refresher = None
        if not self.refresh(goodbye=True):
            self.log.warning("could not remove this worker's counts from Redis: they expire with its lease")
        self._touched.clear()
        self.channel.close()
        if self._reader_client is not None:
            self._reader_client.close()

    # counts ----------------------------------------------------------------------------
    def active(self, host: HostKey) -> int:
        """The fleet-wide count (live leases only); callable from any thread."""
        if self._reader_client is None:
            client = redis.Redis.from_url(self.url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout)
            self._count_script = client.register_script(COUNT.source)
            self._reader_client = client
        try:
            return int(self._count_script(keys=self.keys(host)))
        except RedisError as exc:
            raise LimiterUnavailable(f"Redis unavailable: {exc}") from None

    def active_hosts(self) -> dict[HostKey, int]:
        return {host: n for host, n in self._local.items() if n}
