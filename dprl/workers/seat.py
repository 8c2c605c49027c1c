"""A worker's seat: what the supervisor tells each worker it starts, through one env var.

Encoded by ``Seat.encode`` in the supervisor and decoded by ``Seat.from_env`` in the
worker: one format, in one place. A worker also follows its supervisor (SIGTERM when it
dies) and tells it once when it listens.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from dataclasses import dataclass

WORKER_ENV = "DPRL_WORKER"
_PR_SET_PDEATHSIG = 1  # prctl(2)


@dataclass(frozen=True, slots=True)
class Seat:
    """A worker's column, its Redis id, where to say it listens, its supervisor, and in local
    mode the machine's slot table and wake socket names."""

    index: int
    worker_id: str
    ready_fd: int
    supervisor: int
    table_fd: int = -1
    wake_prefix: str = ""

    @property
    def shares_table(self) -> bool:
        """Local mode: counts live in the machine's slot table."""
        return self.table_fd >= 0

    def encode(self) -> str:
        """``INDEX ID READY_FD SUPERVISOR_PID [TABLE_FD WAKE_PREFIX]`` (no field holds a space)."""
        text = f"{self.index} {self.worker_id} {self.ready_fd} {self.supervisor}"
        return f"{text} {self.table_fd} {self.wake_prefix}" if self.shares_table else text

    @classmethod
    def decode(cls, text: str) -> Seat:
        index, worker_id, ready, supervisor, *local = text.split(" ")
        table_fd, wake_prefix = (int(local[0]), local[1]) if local else (-1, "")
        return cls(int(index), worker_id, int(ready), int(supervisor), table_fd, wake_prefix)

    @classmethod
    def from_env(cls) -> Seat | None:
        """This process's seat when it is a supervised worker."""
        value = os.environ.get(WORKER_ENV)
        return cls.decode(value) if value else None


def follow_supervisor(seat: Seat) -> None:
    """Get SIGTERM (a graceful stop) when the supervisor dies, even by SIGKILL: a worker
    left behind would serve on the port with counts nobody else sees."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != seat.supervisor:  # it died before the line above
        os.kill(os.getpid(), signal.SIGTERM)


def tell_ready(fd: int) -> None:
    """A worker listens: tell the supervisor (once)."""
    with contextlib.suppress(OSError):
        os.write(fd, b"1")
        os.close(fd)
