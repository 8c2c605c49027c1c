"""The limiter interface the server depends on, and the Slot that makes release exactly-once.

A slot stands for one open upstream TCP connection. It is taken before the dial and given
back when that socket is closed; ``Slot.release`` is idempotent, so every path (normal
end, abort, timeout, killed greenlet) can call it from a ``finally`` without counting twice.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

from .errors import LimiterUnavailable, LimitExceeded
from .hosts import HostKey, HostLimits

__all__ = ["LimitExceeded", "Limiter", "LimiterUnavailable", "Slot"]


class Slot:
    """One admitted upstream connection to ``host``; release it once, or use ``with``."""

    __slots__ = ("_release", "host")

    def __init__(self, host: HostKey, release: Callable[[HostKey], None]) -> None:
        self.host = host
        self._release: Callable[[HostKey], None] | None = release

    @property
    def released(self) -> bool:
        return self._release is None

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release(self.host)

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self.released else "held"
        return f"<Slot {self.host} {state}>"


def count_down(counts: dict[HostKey, int], host: HostKey) -> bool:
    """Decrement ``counts[host]``, dropping the entry at zero; True if it reached zero."""
    remaining = counts[host] - 1
    if remaining:
        counts[host] = remaining
        return False
    del counts[host]
    return True


class Limiter(ABC):
    """Counts open upstream connections per host against ``limits``.

    Implementations: ``MemoryLimiter`` (one process) and the Redis limiter (a fleet).
    """

    def __init__(self, limits: HostLimits) -> None:
        self.limits = limits

    @abstractmethod
    def acquire(self, host: HostKey) -> Slot:
        """Take a slot for ``host`` or raise LimitExceeded / LimiterUnavailable."""

    @abstractmethod
    def active(self, host: HostKey) -> int:
        """Open connections to ``host`` as this limiter counts them."""

    @abstractmethod
    def active_hosts(self) -> dict[HostKey, int]:
        """Hosts with at least one slot held by this process, and their counts."""

    def start(self) -> None:  # noqa: B027 (an optional hook)
        """Start background work (lease refresh); called in the serving hub."""

    def close(self) -> None:  # noqa: B027 (an optional hook)
        """Give back everything this process holds; called once at shutdown."""

    @property
    def mode(self) -> str:
        return type(self).__name__

    def describe(self) -> str:
        """Extra words for the start-up line (where the counts live)."""
        return ""
