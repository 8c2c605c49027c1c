"""The limiter of a ``--workers`` worker in local mode: one cap for the whole machine.

The rules are the in-memory limiter's; only the counts live in the machine's slot table
(``slot_table.py``), shared with the other workers, and this worker publishes there when
its oldest waiter on each line arrived. A worker that frees a slot, or whose oldest waiter
leaves, tells the workers with waiters on that line with one datagram to their wake socket
(``w<index>.wake`` beside the table); they hand the slot to their oldest waiter if the
table says it is theirs. A lost datagram costs at most one safety poll (``POLL``).
"""

from __future__ import annotations

import contextlib
import os
import socket

import gevent
import gevent.socket

from ..errors import LimiterUnavailable
from ..stats import ProxyStats
from .hosts import SHARED, HostKey, HostLimits, SharedCap
from .limiter import Slot
from .memory import MemoryLimiter
from .slot_table import SlotTable, TableFull
from .waiting import Watch

TABLE = "slots"
POLL = 0.1  # seconds between re-checks of the lines this worker waits on


def wake_path(directory: str, index: int) -> str:
    return os.path.join(directory, f"w{index}.wake")


def wake_all(directory: str, workers: int) -> None:
    """Every worker re-checks every line it waits on (a worker's slots were given back)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.setblocking(False)
        for index in range(workers):
            with contextlib.suppress(OSError):
                sender.sendto(b"*", wake_path(directory, index))


class MachineLimiter(MemoryLimiter):
    """``directory`` holds the table and the wake sockets; ``index`` is this worker's column."""

    def __init__(self, limits: HostLimits, directory: str, index: int, stats: ProxyStats | None = None) -> None:
        super().__init__(limits, stats)
        self.directory = directory
        self.table = SlotTable(os.path.join(directory, TABLE), index)
        self.table.forget(index)  # a column left by a predecessor the supervisor could not clear
        self._heads: dict[str, int] = {}  # line -> arrival (ns) of our oldest waiter, as published
        self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sender.setblocking(False)
        self._inbox: gevent.socket.socket | None = None
        self._listener: gevent.Greenlet | None = None

    # the counts ------------------------------------------------------------------------
    def acquire(self, key: HostKey, watch: Watch | None = None) -> Slot:
        try:
            return super().acquire(key, watch)
        except TableFull as exc:
            raise LimiterUnavailable(str(exc)) from None

    def _try_take(self, key: HostKey, limit: int, cap: SharedCap | None, since: int) -> int:
        if cap is None:
            return self.table.take(key, limit, since=since)
        return self.table.take(key, limit, SHARED + cap.name, cap.limit, since)

    def _uncount(self, key: HostKey, group: str) -> None:
        line = SHARED + group if group else key
        self._wake(self.table.give_back(key, SHARED + group if group else ""), line)

    def _line_changed(self, line: str) -> None:
        waiters = self.waiting.hosts.get(line, ())
        oldest = next((w for w in waiters if not w.admitted), None)
        since = int(oldest.arrived * 1e9) if oldest is not None else 0
        published = self._heads.get(line, 0)
        if since == published:
            return
        if since:
            self._heads[line] = since
        else:
            self._heads.pop(line, None)
        others = self.table.set_head(line, since)
        if not since or since > published:  # ours went or is younger: theirs may come first now
            self._wake(others, line)

    def _hand_over(self, line: str) -> None:
        with contextlib.suppress(TableFull):  # no room to note a new line: the waiters time out
            super()._hand_over(line)

    def _wake(self, workers: list[int], line: str) -> None:
        for index in workers:
            with contextlib.suppress(OSError):  # restarting, or its inbox full: its poll will see
                self._sender.sendto(line.encode(), wake_path(self.directory, index))

    def _recheck(self, lines: list[str]) -> None:
        for line in lines:
            if line in self.waiting.hosts:
                self._hand_over(line)
                self._line_changed(line)

    # reading ---------------------------------------------------------------------------
    def fleet_count(self, key: HostKey) -> int:
        return self.table.total(key)

    def shared_count(self, name: str) -> int:
        return self.table.total(SHARED + name)

    def process_counts(self) -> dict[HostKey, int]:
        return {k: n for k, n in self.table.totals(self.table.index).items() if not k.startswith(SHARED)}

    def shared_counts(self) -> dict[str, int]:
        mine = self.table.totals(self.table.index)
        return {k[len(SHARED) :]: n for k, n in mine.items() if k.startswith(SHARED)}

    # lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        path = wake_path(self.directory, self.table.index)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        inbox = gevent.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        inbox.bind(path)
        inbox.settimeout(POLL)
        self._inbox = inbox
        self._listener = gevent.spawn(self._listen, inbox)

    def _listen(self, inbox: gevent.socket.socket) -> None:
        while True:
            try:
                line = inbox.recv(1024).decode()
            except TimeoutError:
                line = "*"
            if line == "*":
                self._recheck(list(self.waiting.hosts))
            else:
                self._recheck([line])

    def close(self) -> None:
        if self._listener is not None:
            self._listener.kill()
        if self._inbox is not None:
            self._inbox.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(wake_path(self.directory, self.table.index))
        self._sender.close()
        self.table.forget(self.table.index)  # normally nothing left: every path released
        self.table.close()

    def describe(self) -> str:
        return f"workers={self.table.workers} slot-table={self.table.path}"
