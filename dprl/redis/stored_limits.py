"""The fleet's limits stored in Redis: one place to say "api.example.com may have 20".

Stored under ``PREFIX:{limits}:`` (one hash tag: one Cluster slot, changed atomically by
``limits.lua``): ``hosts`` (host key or ``*.pattern`` -> limit), ``default`` and
``version``. A change PUBLISHes on ``PREFIX:limits``; each worker reloads on the message,
and also checks the version every second, so a lost message delays a change by at most
a second. Workers only read (``limits_read.lua``); ``dprl limits`` and the admin
listener write.
"""

from __future__ import annotations

import getpass
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gevent
import gevent.event

from ..background import Background
from ..errors import RedisUnavailable
from ..limits.hosts import HostKey, HostLimits, normalize_limit_spec
from ..limits.rates import Rate, parse_rate
from .protocol import ReplyError
from .scripts import LIMITS, LIMITS_READ, ScriptRunner

LIMITS_TAG = "limits"  # the hash tag of every key of the stored limits: one Cluster slot


def limit_keys(prefix: str) -> tuple[str, str, str, str, str]:
    base = f"{prefix}:{{{LIMITS_TAG}}}"
    return f"{base}:hosts", f"{base}:default", f"{base}:version", f"{base}:rates", f"{base}:default_rate"


def limits_channel(prefix: str) -> str:
    return f"{prefix}:limits"


def who() -> str:
    """Who makes a change from this process, for the workers' log."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "?"
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class StoredLimits:
    version: str = ""
    default: int | None = None
    limits: dict[HostKey, int] = field(default_factory=dict)  # host keys and patterns
    default_rate: Rate | None = None
    rates: dict[HostKey, Rate] = field(default_factory=dict)  # host keys and patterns


def read(runner: ScriptRunner, prefix: str, known: str = "") -> StoredLimits | None:
    """The stored limits and rates; None if their version is ``known`` (nothing changed)."""
    reply: Any = runner.run(LIMITS_READ, limit_keys(prefix), (known,))  # limits_read.lua's five
    raw_version, default, flat, default_rate, flat_rates = reply
    version = raw_version.decode() if isinstance(raw_version, bytes) else str(raw_version)
    if flat is None or flat is False:
        return None if version == known else StoredLimits(version)
    limits = {flat[i].decode(): int(flat[i + 1]) for i in range(0, len(flat), 2)}
    rates = {}
    for i in range(0, len(flat_rates or ()), 2):
        rate = _stored_rate(flat_rates[i + 1])
        if rate is not None:
            rates[flat_rates[i].decode()] = rate
    return StoredLimits(
        version,
        int(default) if default not in (None, False) else None,
        limits,
        _stored_rate(default_rate) if default_rate not in (None, False) else None,
        rates,
    )


def _stored_rate(value: bytes) -> Rate | None:
    """A stored rate, as ``dprl limits`` wrote it (checked then; a bad one is ignored here)."""
    try:
        return parse_rate(value.decode())
    except ValueError:
        return None


def change(
    runner: ScriptRunner, prefix: str, op: str, host: str = "", limit: int = 0, by: str = "", rate: str = ""
) -> int:
    """``op``: set (HOST N), rm (HOST), default (N), rmdefault; setrate (HOST RATE), rmrate
    (HOST), defaultrate (RATE), rmdefaultrate. Returns the new version."""
    key = normalize_limit_spec(host) if host else ""
    if op in ("set", "default") and limit < 0:
        raise ValueError(f"limit must be 0 (unlimited) or more, got {limit}")
    value: object = int(limit)
    if op in ("setrate", "defaultrate"):
        parsed = parse_rate(rate)  # ValueError (one line) for a bad one
        if parsed is None:
            raise ValueError("a stored rate must be more than 0: remove it instead (rm --rate)")
        value = str(parsed)
    args = (op, key, value, limits_channel(prefix), by or who())
    return int(runner.run(LIMITS, limit_keys(prefix), args))


class LimitSync:
    """Keeps one worker's limits in step with the stored ones: read at start, again on each
    change message and at least every ``poll`` seconds (a lost message costs that much)."""

    def __init__(
        self,
        limits: HostLimits,
        runner_for: Callable[[], ScriptRunner],
        prefix: str,
        log: logging.Logger,
        poll: float = 1.0,
    ) -> None:
        self.limits = limits
        self.runner_for = runner_for
        self.prefix = prefix
        self.log = log
        self.poll = poll
        self.version = ""
        self._now = gevent.event.Event()
        self._background = Background(self._loop)

    def start(self) -> None:
        self._background.start()

    def stop(self) -> None:
        self._background.stop()

    def on_message(self, text: str) -> None:
        """A change published by limits.lua: "version op key value who"; logged once here."""
        version, op, key, value, by = (text.split(" ", 4) + [""] * 5)[:5]
        what = {
            "set": f"{key}={value}",
            "rm": f"{key} removed",
            "default": f"default={value}",
            "setrate": f"{key} rate={value}",
            "rmrate": f"{key} rate removed",
            "defaultrate": f"default rate={value}",
            "rmdefaultrate": "default rate removed",
        }.get(op, op)
        self.log.info("fleet limit changed by %s: %s (version %s)", by, what, version)
        self._now.set()

    def sync(self) -> bool:
        """Read the stored limits if their version moved; True if they were applied."""
        stored = read(self.runner_for(), self.prefix, self.version)
        if stored is None:
            return False
        self.limits.set_stored(stored.limits, stored.default)
        self.limits.set_stored_rates(stored.rates, stored.default_rate)
        first, self.version = not self.version, stored.version
        if first and (stored.limits or stored.default is not None):
            self.log.info(
                "fleet limits from Redis: %d hosts and patterns, default %s (version %s)",
                len(stored.limits),
                "this process's" if stored.default is None else stored.default,
                stored.version,
            )
        return True

    def _loop(self) -> None:
        while True:
            try:
                self.sync()
            except (RedisUnavailable, ReplyError) as exc:
                self.log.debug("fleet limits not read: %s", exc)
            self._now.wait(self.poll)
            self._now.clear()
