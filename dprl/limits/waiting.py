"""Connections waiting for a slot: per host, first come first served, in this process.

A ``Waiter`` stands for one client connection over the cap that may wait up to
``QueuePolicy.timeout`` seconds. Whoever frees a slot wakes the oldest waiter (one, never
all); a waiter also wakes when its client leaves (``watch``) or the server shuts down.
How a slot reaches a waiter is the limiter's business: the in-memory limiter hands it over
directly, the Redis limiter lets the waiter ask Redis again (the fleet's queue decides).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass

import gevent
import gevent.event

from ..errors import ConnectionLost, QueueFull, QueueTimeout, ShuttingDown
from .hosts import HostKey

# Starts watching the waiting client; the event is set when it leaves.
Watch = Callable[[], AbstractContextManager[gevent.event.Event]]


@dataclass
class QueuePolicy:
    """--queue-timeout and --max-queue; changeable at runtime (``set_queue_timeout``)."""

    timeout: float = 0.0  # seconds a connection over the cap may wait; 0 = refused at once
    max_queue: int = 1000  # waiters per host in this process; more are refused at once


class Waiter:
    __slots__ = ("admitted", "arrived", "cancelled", "event", "group", "key", "line", "tenant", "ticket")

    def __init__(self, key: HostKey, line: str, tenant: str = "") -> None:
        self.key = key
        self.tenant = tenant  # the tenant it waits for (tenants.py), "" without tenants
        self.line = line  # whose slots it waits for: its host's, or its shared cap's (every host of it)
        self.group = ""  # the shared cap it was admitted under (in-memory limiter)
        self.event = gevent.event.Event()  # set: a slot may be free for it (or it must stop)
        self.arrived = time.monotonic()
        self.admitted = False  # handed a slot (in-memory limiter)
        self.cancelled = False  # shutdown
        self.ticket = ""  # its place in the fleet's queue (Redis limiter)

    @property
    def arrived_ns(self) -> int:
        """Its arrival on CLOCK_MONOTONIC in nanoseconds: one clock for every process of a machine."""
        return int(self.arrived * 1e9)


class WaitingRoom:
    """The waiters of one process, per line (a host, or a shared cap's hosts), oldest first."""

    def __init__(self, policy: QueuePolicy) -> None:
        self.policy = policy
        self.hosts: dict[HostKey, deque[Waiter]] = {}
        self.closed = False

    def tenant_counts(self, key: HostKey, line: str) -> dict[str, int]:
        """Waiters for ``key`` (on its ``line``) not handed a slot yet, per tenant."""
        counts: dict[str, int] = {}
        for waiter in self.hosts.get(line, ()):
            if waiter.key == key and not waiter.admitted:
                counts[waiter.tenant] = counts.get(waiter.tenant, 0) + 1
        return counts

    def counts(self) -> dict[HostKey, int]:
        """Waiters per host key."""
        counts: dict[HostKey, int] = {}
        for waiters in list(self.hosts.values()):
            for waiter in list(waiters):
                counts[waiter.key] = counts.get(waiter.key, 0) + 1
        return counts

    def enter(self, key: HostKey, limit: int, line: str | None = None, tenant: str = "") -> Waiter:
        """A new waiter at the back of its line; QueueFull / ShuttingDown at once."""
        if self.closed:
            raise ShuttingDown("the proxy is shutting down")
        line = line or key
        waiters = self.hosts.setdefault(line, deque())
        if len(waiters) >= self.policy.max_queue:
            raise QueueFull(key, limit, f"{len(waiters)} connections already waiting (--max-queue)")
        waiter = Waiter(key, line, tenant)
        waiters.append(waiter)
        return waiter

    def leave(self, waiter: Waiter) -> None:
        waiters = self.hosts.get(waiter.line)
        if waiters is None:
            return
        with suppress(ValueError):
            waiters.remove(waiter)
        if not waiters:
            del self.hosts[waiter.line]

    def oldest(self, key: HostKey) -> Waiter | None:
        waiters = self.hosts.get(key)
        return waiters[0] if waiters else None

    def is_oldest(self, waiter: Waiter) -> bool:
        return self.oldest(waiter.line) is waiter

    def wake_oldest(self, key: HostKey) -> None:
        waiter = self.oldest(key)
        if waiter is not None:
            waiter.event.set()

    def wake_message(self, message: str) -> None:
        """A wake-up from the fleet: ``line``, or ``line|tenant`` (the oldest waiter of that
        tenant on the line; tenants' waiters are served in fair order, not by arrival)."""
        line, _, tenant = message.partition("|")
        if not tenant:
            self.wake_oldest(line)
            return
        for waiter in self.hosts.get(line, ()):
            if waiter.tenant == tenant:
                waiter.event.set()
                return

    def wake_next(self, waiter: Waiter) -> None:
        """Wake the waiter after ``waiter`` (a slot more may be free for it)."""
        waiters = self.hosts.get(waiter.line)
        if waiters:
            for other in waiters:
                if other is not waiter:
                    other.event.set()
                    return

    def wake_all(self) -> None:
        for waiters in list(self.hosts.values()):
            for waiter in waiters:
                waiter.event.set()

    def cancel_all(self) -> None:
        """Shutdown: every waiter stops at once (its client gets a 503)."""
        self.closed = True
        for waiters in list(self.hosts.values()):
            for waiter in waiters:
                waiter.cancelled = True
                waiter.event.set()

    def wait(
        self, waiter: Waiter, limit: int, deadline: float, gone: gevent.event.Event | None, poll: float | None = None
    ) -> None:
        """Block until ``waiter.event`` (then clear it and return), its client leaves
        (ConnectionLost), shutdown (ShuttingDown) or ``deadline`` (QueueTimeout). ``poll``:
        return after that long anyway (the safety poll for lost wake-ups)."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise QueueTimeout(waiter.key, limit, f"no slot within {self.policy.timeout:g}s (--queue-timeout)")
        events = [waiter.event] if gone is None else [waiter.event, gone]
        gevent.wait(events, timeout=min(remaining, poll) if poll else remaining, count=1)
        if waiter.cancelled:
            raise ShuttingDown("the proxy is shutting down")
        if gone is not None and gone.is_set() and not waiter.admitted:
            raise ConnectionLost("client", "left while waiting for a slot")
        waiter.event.clear()
