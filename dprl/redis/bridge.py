"""Calls into a worker's Redis connections from any thread.

The connections belong to the hub that runs the proxy (in a program that is not
monkey-patched, a hub in a background thread of its own). A call from another thread
(the library's ``fleet_count`` from a plain thread, the admin API) is handed to that hub
and waited for; before the proxy starts, or after it stops, short-lived connections of
the calling thread answer instead.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import gevent
import gevent.hub

from ..errors import LimiterUnavailable, RedisUnavailable
from .address import RedisDeployment
from .routing import FAILURES
from .topology import Topology, make_topology

T = TypeVar("T")


class HubBridge:
    def __init__(self, topology: Topology, deployment: RedisDeployment, prefix: str, timeout: float) -> None:
        self.topology = topology
        self.deployment = deployment
        self.prefix = prefix
        self.timeout = timeout
        self._hub: gevent.hub.Hub | None = None
        self._hub_thread = 0

    def attach(self) -> None:
        """The calling hub (and its thread) runs the connections from now on."""
        self._hub, self._hub_thread = gevent.get_hub(), threading.get_ident()

    def detach(self) -> None:
        self._hub = None

    def call(self, call: Callable[[Topology], T]) -> T:
        """``call(topology)`` on the worker's connections, in its hub, whatever thread asks;
        a Redis failure is LimiterUnavailable, the one error library callers see."""
        try:
            return self._in_hub(call)
        except FAILURES as exc:
            raise LimiterUnavailable(f"Redis unavailable: {exc}") from None

    def _in_hub(self, call: Callable[[Topology], T]) -> T:
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
            raise value  # type: ignore[misc]  # the exception the call raised, re-raised here
        return value  # type: ignore[return-value]  # what call returned
