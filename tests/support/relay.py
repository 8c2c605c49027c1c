"""A TCP relay between workers and Redis that can blackhole traffic, as a partition does.

``blackhole()`` stops moving bytes in both directions on every connection, and new
connections are accepted but never relayed: nothing is refused or reset, replies simply
never come (a silent fault, unlike a killed Redis). ``heal()`` resumes; with
``old_first=False`` the connections opened during the outage resume first and the older
ones only ``delay`` seconds later, so bytes written on a connection a worker has given up
on reach Redis after what its new connection sent (a TCP retransmission's worst case).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class _Pair:
    def __init__(self, client: socket.socket, server: socket.socket, opened: float) -> None:
        self.client, self.server = client, server
        self.opened = opened
        self.moving = threading.Event()
        self.moving.set()
        self.closed = False


class BlackholeRelay:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url_host = f"127.0.0.1:{self.port}"
        self._pairs: list[_Pair] = []
        self._lock = threading.Lock()
        self.blackholed_at: float | None = None
        self.accepted = 0  # connections made through the relay (a worker's connect attempts)
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            pair = _Pair(client, server, time.monotonic())
            with self._lock:
                self.accepted += 1
                if self.blackholed_at is not None:
                    pair.moving.clear()
                self._pairs.append(pair)
            threading.Thread(target=self._pump, args=(pair, client, server), daemon=True).start()
            threading.Thread(target=self._pump, args=(pair, server, client), daemon=True).start()

    def _pump(self, pair: _Pair, src: socket.socket, dst: socket.socket) -> None:
        while True:
            pair.moving.wait()
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            pair.moving.wait()  # read before the blackhole: held until it heals
            try:
                dst.sendall(data)
            except OSError:
                break
        pair.closed = True
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def blackhole(self) -> None:
        with self._lock:
            self.blackholed_at = time.monotonic()
            for pair in self._pairs:
                pair.moving.clear()

    def heal(self, old_first: bool = True, delay: float = 0.0) -> None:
        with self._lock:
            since, self.blackholed_at = self.blackholed_at, None
            pairs = list(self._pairs)
        newer = [p for p in pairs if since is not None and p.opened >= since]
        older = [p for p in pairs if p not in newer]
        first, second = (older, newer) if old_first else (newer, older)
        for pair in first:
            pair.moving.set()
        if delay:
            time.sleep(delay)
        for pair in second:
            pair.moving.set()

    def close(self) -> None:
        self.listener.close()
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            pair.moving.set()
            for sock in (pair.client, pair.server):
                with contextlib.suppress(OSError):
                    sock.close()
