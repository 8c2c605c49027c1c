"""Wake-ups pushed by Redis: this worker's channel, on a subscribed connection of its own.

When a slot frees up for the oldest waiter of the fleet's queue of a host, the script
that freed it PUBLISHes the host key on the channel of that waiter's worker (one message,
one worker: no thundering herd). The listener hands the host key to ``on_wake``. A lost
connection calls ``on_lost`` (waiters then ask Redis themselves) and is re-made after a
second; messages lost meanwhile are covered by the waiters' slow safety poll.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import gevent
import gevent.event

from ..errors import RedisUnavailable
from .address import RedisAddress
from .channel import auth_command, open_socket, read_reply
from .protocol import ReplyError, new_reader, pack

RETRY_INTERVAL = 1.0


class WakeListener:
    def __init__(
        self,
        locate: Callable[[float], RedisAddress],
        channel: str,
        timeout: float,
        on_wake: Callable[[str], None],
        on_lost: Callable[[], None],
        log: logging.Logger,
    ) -> None:
        self.locate = locate
        self.channel = channel
        self.timeout = timeout
        self.on_wake = on_wake
        self.on_lost = on_lost
        self.log = log
        self.subscribed = gevent.event.Event()
        self._greenlet: gevent.Greenlet | None = None
        self._sock = None
        self._failing = False  # logged once per outage of the channel

    def ensure(self) -> None:
        """Listen (from the first waiter on); wait for the subscription up to the Redis timeout.

        A waiter enqueued before the subscription holds could miss its wake-up: it waits for
        it, bounded, and falls back on the safety poll if Redis cannot be reached."""
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._run)
        self.subscribed.wait(self.timeout)

    def close(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None
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
                    self.log.warning("Redis wake-up channel %s unavailable (%s): waiters poll", self.channel, exc)
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
            commands = ([auth_command(address)] if address.password else []) + [("SUBSCRIBE", self.channel)]
            sock.sendall(b"".join(pack(command) for command in commands))
            for command in commands:
                reply = read_reply(sock, reader)
                if isinstance(reply, ReplyError):
                    raise RedisUnavailable(f"{command[0]} refused by {address}: {reply}")
        sock.settimeout(None)
        self.subscribed.set()
        if self._failing:
            self._failing = False
            self.log.warning("Redis wake-up channel %s subscribed again", self.channel)
        self.log.debug("subscribed to %s in %.3fs", self.channel, time.monotonic() - started)
        while True:
            message = read_reply(sock, reader)
            if isinstance(message, list) and len(message) == 3 and message[0] == b"message":
                self.on_wake(message[2].decode())
