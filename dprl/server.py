"""The listening server: accept, one greenlet per client, graceful stop.

The server knows the Limiter interface only; it cannot tell the in-memory limiter from
the Redis one.
"""

from __future__ import annotations

import logging
import socket

from gevent.pool import Pool
from gevent.server import StreamServer

from .config import Config
from .limiter import Limiter
from .refusals import RefusalLog
from .session import ClientSession
from .upstream import Resolver


class ProxyServer(StreamServer):
    def __init__(
        self, settings: Config, limiter: Limiter, log: logging.Logger, resolve: Resolver | None = None
    ) -> None:
        super().__init__((settings.bind, settings.port), backlog=1024, spawn=Pool(settings.max_clients))
        self.settings = settings
        self.limiter = limiter
        self.resolve = resolve
        self.log = log
        self.refusals = RefusalLog(log, settings.refusal_log_interval)
        self.sessions: set[ClientSession] = set()
        self.stopping = False

    def start(self) -> None:
        super().start()
        self.limiter.start()
        self.refusals.start()

    def handle(self, sock: socket.socket, address: tuple) -> None:
        if self.stopping:
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        session = ClientSession(self, sock, address)
        self.sessions.add(session)
        try:
            session.run()
        finally:
            self.sessions.discard(session)

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting; let busy connections finish up to ``timeout``, then close them.

        Idle keep-alive connections are closed at once: they hold no request in flight.
        """
        if timeout is None:
            timeout = self.settings.shutdown_timeout
        self.stopping = True
        self.close()
        for session in list(self.sessions):
            if session.idle:
                session.greenlet.kill(block=False)
        try:
            if self.pool is not None:
                self.pool.join(timeout=timeout)
                self.pool.kill(block=True, timeout=1)
        finally:
            self.refusals.stop()
            self.limiter.close()
