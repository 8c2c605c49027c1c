"""Running a host's script on the node that serves it: Cluster redirections followed.

MOVED and ASK are followed at once a few times, then every 10 ms until the call's
deadline (two nodes agreeing on a migrated slot's owner can send a call back and forth
for a moment); TRYAGAIN (a slot's keys split by a migration in progress) is retried
until the deadline. A failure marks the shard down (``on_failure``) and is raised.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import gevent

from ..errors import RedisUnavailable
from ..limits.hosts import HostKey
from ..stats import ProxyStats
from .channel import OnReply
from .keys import KeySpace
from .protocol import ReplyError
from .scripts import Script
from .topology import Shard, Topology

MAX_REDIRECTS = 4  # MOVED / ASK followed at once per call; more are followed every 10 ms
FAILURES = (RedisUnavailable, ReplyError)
_REDIRECTS = ("MOVED", "ASK", "TRYAGAIN")


class KeyUnavailable(RedisUnavailable):
    """One host's keys cannot be reached now, though their node answers: split between two
    Cluster nodes by a resharding in progress (TRYAGAIN past the Redis timeout), or
    redirected where this worker cannot follow. That host alone answers by policy."""

    kind = "cluster"


def failure_kind(exc: BaseException) -> str:
    """The ``kind`` label of dprl_redis_errors_total for a failure."""
    return getattr(exc, "kind", "reply")


def is_redirect(reply: object) -> bool:
    return isinstance(reply, ReplyError) and reply.code in _REDIRECTS


class Routed(NamedTuple):
    shard: Shard  # where the script ran (another node, if it was redirected)
    reply: Any


class Router:
    def __init__(
        self,
        topology: Topology,
        keyspace: KeySpace,
        stats: ProxyStats,
        timeout: float,
        on_failure: Callable[[Shard, BaseException], None],
    ) -> None:
        self.topology = topology
        self.keyspace = keyspace
        self.stats = stats
        self.timeout = timeout
        self.on_failure = on_failure
        self.queue_skipped = False  # the last call left the queue's keys out (see run)

    def run(
        self,
        shard: Shard,
        key: HostKey,
        script: Script,
        args: tuple[object, ...] | Callable[[], tuple],
        before_send: Callable[[], None] | None = None,
        on_reply: OnReply | None = None,
        redirect: ReplyError | None = None,
    ) -> Routed:
        """Run a script for ``key``, following a Cluster's MOVED and ASK (``redirect``: one
        already received), and retrying TRYAGAIN until the Redis timeout."""
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
                keys = self.keyspace.script_keys(script, key, bare)
                reply = shard.runner.run(script, keys, args, before_send, on_reply, deadline, asking)
                self.stats.redis_request(time.monotonic() - started)
                self.queue_skipped = bare  # read by the caller before it yields
                return Routed(shard, reply)
            except FAILURES as exc:
                if is_redirect(exc):
                    redirect = exc  # type: ignore[assignment]  # is_redirect: a ReplyError
                    continue
                self.stats.redis_error(failure_kind(exc))
                self.on_failure(shard, exc)
                raise
