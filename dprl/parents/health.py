"""A parent's health: consecutive failures eject it; a probe with back-off brings it back.

A failed connect or handshake to a parent counts against it; ``threshold`` in a row
(--parent-failures) eject it. An ejected parent is offered to no connection. A probe (a
TCP connect, within the dial timeout) tries it again after a back-off that starts at 1 s
and doubles up to 60 s, each wait jittered by ±20 % so that a fleet does not probe in
step; the first probe that connects puts it back. A success resets its count.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable

import gevent

from ..net.dial import dial
from .pool import Parents, ParentState

FIRST_BACKOFF = 1.0
MAX_BACKOFF = 60.0
JITTER = 0.2
FAILURE_REASONS = ("connect", "handshake", "tls")  # dprl_parent_failures_total's reason label


def jittered(seconds: float, rng: Callable[[], float] = random.random) -> float:
    return seconds * (1 - JITTER + 2 * JITTER * rng())


class Health:
    """Ejection and probing of every parent of ``parents`` (one per server)."""

    def __init__(self, parents: Parents, threshold: int, timeout: float, log: logging.Logger) -> None:
        self.parents = parents
        self.threshold = threshold
        self.timeout = timeout  # of a probe's connect
        self.log = log
        self._probes: set[gevent.Greenlet] = set()

    def failed(self, parent: ParentState, reason: str, error: str) -> None:
        parent.failures += 1
        parent.failures_by_reason[reason] = parent.failures_by_reason.get(reason, 0) + 1
        if parent.up and parent.failures >= self.threshold:
            parent.backoff = FIRST_BACKOFF
            parent.ejected_until = time.monotonic() + jittered(parent.backoff)
            self.log.warning(
                "parent %s ejected after %d failures in a row (last: %s); probing again in %.1fs",
                parent.spec.label,
                parent.failures,
                error,
                parent.ejected_until - time.monotonic(),
            )
            self._probe_later(parent)

    def succeeded(self, parent: ParentState) -> None:
        parent.failures = 0

    def _probe_later(self, parent: ParentState) -> None:
        if parent.probing:
            return
        parent.probing = True
        probe = gevent.spawn(self._probe, parent)
        self._probes.add(probe)
        probe.link(self._probes.discard)

    def _probe(self, parent: ParentState) -> None:
        try:
            while parent.ejected_until:
                gevent.sleep(max(0.0, parent.ejected_until - time.monotonic()))
                try:
                    dial(parent.spec.host, parent.spec.port, self.timeout).close()
                except Exception as exc:  # refused, timed out, unresolvable: still down
                    parent.backoff = min(parent.backoff * 2, MAX_BACKOFF)
                    parent.ejected_until = time.monotonic() + jittered(parent.backoff)
                    self.log.debug("parent %s still down (%s)", parent.spec.label, exc)
                    continue
                parent.ejected_until, parent.failures, parent.backoff = 0.0, 0, 0.0
                self.log.warning("parent %s is back (a probe connected)", parent.spec.label)
        finally:
            parent.probing = False

    def stop(self) -> None:
        for probe in list(self._probes):
            with contextlib.suppress(Exception):
                probe.kill(block=False)
