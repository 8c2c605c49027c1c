"""Tenants' load through a proxy, and an upstream that counts each tenant's connections.

Clients name their tenant in a CONNECT header and, once the tunnel is up, as the first
line of bytes, so the upstream (which never sees the CONNECT) tags each connection with it.
"""

from __future__ import annotations

import socket
import threading
import time

from .network import read_head
from .upstream import RawOrigin


class TenantUpstream(RawOrigin):
    """Holds each connection until the client closes it; per tenant, what is open when."""

    def __init__(self) -> None:
        self.active: dict[str, int] = {}
        self.max_total = 0
        self.events: list[tuple[float, str, int]] = []  # (monotonic time, tenant, its open after)
        self._lock = threading.Lock()
        super().__init__()

    def serve(self, conn: socket.socket, index: int) -> None:
        data = read_head(conn, b"\n")  # the client's first line names its tenant
        if not data.endswith(b"\n"):
            return
        tenant = data[:-1].decode()
        self._change(tenant, +1)
        try:
            while conn.recv(65536):
                pass
        finally:
            self._change(tenant, -1)

    def _change(self, tenant: str, delta: int) -> None:
        with self._lock:
            self.active[tenant] = self.active.get(tenant, 0) + delta
            self.max_total = max(self.max_total, sum(self.active.values()))
            self.events.append((time.monotonic(), tenant, self.active[tenant]))

    def open(self, tenant: str) -> int:
        with self._lock:
            return self.active.get(tenant, 0)

    def average(self, tenant: str, start: float, end: float) -> float:
        """Time-weighted mean of ``tenant``'s open connections over [start, end]."""
        return self._weighted(tenant, start, end, lambda n: n)

    def share_of_time_at_least(self, tenant: str, count: int, start: float, end: float) -> float:
        """The part of [start, end] during which ``tenant`` had ``count`` or more open."""
        return self._weighted(tenant, start, end, lambda n: 1.0 if n >= count else 0.0)

    def _weighted(self, tenant: str, start: float, end: float, value) -> float:
        with self._lock:
            events = [(t, n) for t, who, n in self.events if who == tenant]
        level, at, total = 0, start, 0.0
        for moment, n in events:
            if moment <= start:
                level = n
                continue
            if moment >= end:
                break
            total += value(level) * (moment - at)
            level, at = n, moment
        total += value(level) * (end - at)
        return total / (end - start)


class TenantClient(threading.Thread):
    """Loops until ``stop`` is set: CONNECT as ``tenant``, hold ``hold`` seconds, close.
    ``waits``: seconds from each CONNECT sent to its answer (admitted ones)."""

    def __init__(self, proxy_port: int, target: str, tenant: str, hold: float, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.proxy_port, self.target, self.tenant, self.hold, self.stop = proxy_port, target, tenant, hold, stop
        self.waits: list[float] = []
        self.refused: list[bytes] = []

    def run(self) -> None:
        while not self.stop.is_set():
            with socket.create_connection(("127.0.0.1", self.proxy_port), timeout=30) as sock:
                sent = time.monotonic()
                sock.sendall(
                    f"CONNECT {self.target} HTTP/1.1\r\nHost: {self.target}\r\n"
                    f"X-Dprl-Tenant: {self.tenant}\r\n\r\n".encode()
                )
                head = read_head(sock)
                if not head.startswith(b"HTTP/1.1 200"):
                    self.refused.append(head)
                    time.sleep(0.01)
                    continue
                self.waits.append(time.monotonic() - sent)
                sock.sendall(f"{self.tenant}\n".encode())
                time.sleep(self.hold)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
