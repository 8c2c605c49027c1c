"""Refusals logged in aggregate: one warning per host per interval, with the count.

Under load a refusal happens thousands of times a second; one line each (as the reference
does) drowns the log and costs more than the refusal itself.
"""

from __future__ import annotations

import logging

import gevent


class RefusalLog:
    def __init__(self, log: logging.Logger, interval: float = 10.0) -> None:
        self.log = log
        self.interval = interval
        self._counts: dict[str, list[int]] = {}  # host -> [refused, limit]
        self._unavailable = 0
        self._greenlet: gevent.Greenlet | None = None

    def record(self, host: str, limit: int) -> None:
        entry = self._counts.get(host)
        if entry is None:
            self._counts[host] = [1, limit]
        else:
            entry[0] += 1
            entry[1] = limit

    def record_unavailable(self) -> None:
        self._unavailable += 1

    def flush(self) -> None:
        counts, self._counts = self._counts, {}
        for host, (refused, limit) in sorted(counts.items()):
            self.log.warning(
                "refused %d connection%s to %s: limit %d reached (last %gs)",
                refused,
                "" if refused == 1 else "s",
                host,
                limit,
                self.interval,
            )
        if self._unavailable:
            self.log.warning(
                "refused %d connection%s: limiter unavailable (last %gs)",
                self._unavailable,
                "" if self._unavailable == 1 else "s",
                self.interval,
            )
            self._unavailable = 0

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill()
            self._greenlet = None
        self.flush()

    def _run(self) -> None:
        while True:
            gevent.sleep(self.interval)
            self.flush()
