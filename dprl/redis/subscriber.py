"""What Redis pushes to a worker, on a subscribed connection of its own.

Two channels: the worker's wake-up channel (when a slot frees up for the oldest waiter of
the fleet's queue of a host, the script that freed it PUBLISHes the host key there: one
message, one worker, no thundering herd) and the fleet's limits channel (a stored limit
changed). Each message goes to its channel's handler. A lost connection calls
``on_lost`` (waiters then ask Redis themselves) and is re-made after a second; messages
lost meanwhile are covered by slow safety polls (waiters', and the limits' version check).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import gevent
import gevent.event

from ..background import Background
from ..errors import RedisUnavailable
from .address import RedisAddress
from .channel import auth_command, open_socket, read_reply
from .protocol import ReplyError, new_reader, pack

RETRY_INTERVAL = 1.0


class Subscriber:
    def __init__(
        self,
        locate: Callable[[float], RedisAddress],
        channels: dict[str, Callable[[str], None]],
        timeout: float,
        on_lost: Callable[[], None],
        log: logging.Logger,
    ) -> None:
        self.locate = locate
        self.channels = channels
        self.timeout = timeout
        self.on_lost = on_lost
        self.log = log
        self.subscribed = gevent.event.Event()
        self._background = Background(self._run)
        self._sock = None
        self._failing = False  # logged once per outage of the channel

    def start(self) -> None:
        self._background.start()

    def ensure(self) -> None:
        """Wait for the subscription up to the Redis timeout (a waiter enqueued before it
        holds could miss its wake-up; past the timeout the safety poll covers it)."""
        self.start()
        self.subscribed.wait(self.timeout)

    def close(self) -> None:
        self._background.stop(block=False)
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _run(self) -> None:
        while True:
            try:
                self._listen()
            except (OSError, RedisUnavailable, ReplyError, gevent.Timeout) as exc:
                if not self._failing:
                    self._failing = True
                    self.log.warning("Redis channels unavailable (%s): waiters and limits poll", exc)
                self.subscribed.clear()
                self.on_lost()
            finally:
                if self._sock is not None:
                    self._sock.close()
                    self._sock = None
            gevent.sleep(RETRY_INTERVAL)

    def _listen(self) -> None:
        started = time.monotonic()
        with gevent.Timeout(self.timeout, RedisUnavailable(f"no subscription within {self.timeout:g}s")):
            address = self.locate(self.timeout)
            sock = self._sock = open_socket(address, self.timeout)
            reader = new_reader()
            commands = ([auth_command(address)] if address.password else []) + [("SUBSCRIBE", *self.channels)]
            sock.sendall(b"".join(pack(command) for command in commands))
            replies = [read_reply(sock, reader) for _ in range(len(commands) - 1 + len(self.channels))]
            for reply in replies:
                if isinstance(reply, ReplyError):
                    raise RedisUnavailable(f"refused by {address}: {reply}")
        sock.settimeout(None)
        self.subscribed.set()
        if self._failing:
            self._failing = False
            self.log.warning("Redis channels subscribed again")
        self.log.debug("subscribed to %s in %.3fs", ", ".join(self.channels), time.monotonic() - started)
        while True:
            message = read_reply(sock, reader)
            if isinstance(message, list) and len(message) == 3 and message[0] == b"message":
                handler = self.channels.get(message[1].decode())
                if handler is not None:
                    handler(message[2].decode())
