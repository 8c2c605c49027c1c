"""A piece of background work: one greenlet at most, started and stopped by its owner.

The refresh loop, the stored-limits poll, the keepalive tuner, the refusal log and the
Redis subscriber each run one; starting twice is a no-op, stopping kills it.
"""

from __future__ import annotations

from collections.abc import Callable

import gevent


class Background:
    __slots__ = ("_greenlet", "_run")

    def __init__(self, run: Callable[[], object]) -> None:
        self._run = run
        self._greenlet: gevent.Greenlet | None = None

    @property
    def running(self) -> bool:
        return self._greenlet is not None

    def start(self) -> None:
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._run)

    def stop(self, block: bool = True) -> None:
        greenlet, self._greenlet = self._greenlet, None
        if greenlet is not None:
            greenlet.kill(block=block)
