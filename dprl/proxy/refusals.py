"""Refusals logged in aggregate: one warning per reason per interval, with the count.

Under load a refusal happens thousands of times a second; one line each (as the reference
does) drowns the log and costs more than the refusal itself.
"""

from __future__ import annotations

import logging

import gevent

from ..background import Background


class RefusalLog:
    def __init__(self, log: logging.Logger, interval: float = 10.0) -> None:
        self.log = log
        self.interval = interval
        self._counts: dict[str, int] = {}
        self._background = Background(self._run)

    def record(self, reason: str) -> None:
        """Count one refusal; ``reason`` reads after "refused N connections", e.g. "to HOST: ..."."""
        self._counts[reason] = self._counts.get(reason, 0) + 1

    def flush(self) -> None:
        counts, self._counts = self._counts, {}
        for reason, refused in sorted(counts.items()):
            plural = "" if refused == 1 else "s"
            self.log.warning("refused %d connection%s %s (last %gs)", refused, plural, reason, self.interval)

    def start(self) -> None:
        self._background.start()

    def stop(self) -> None:
        self._background.stop()
        self.flush()

    def _run(self) -> None:
        while True:
            gevent.sleep(self.interval)
            self.flush()
