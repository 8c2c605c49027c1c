"""The Lua scripts (package data under dprl/lua/), loaded once and run by SHA.

Each .lua file starts with its contract: what KEYS and ARGV are and what it returns.
Scripts are sent as EVALSHA; on NOSCRIPT the caller loads the script and sends again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources

from .redis_channel import RedisChannel, pack


class Script:
    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str) -> None:
        self.name = name
        self.source = resources.files("dprl").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    def command(self, keys: tuple[str, ...], args: Sequence[object]) -> bytes:
        """The EVALSHA command, RESP-encoded: callers cache it, it rarely changes per host."""
        return pack(("EVALSHA", self.sha, len(keys), *keys, *args))

    def load(self, channel: RedisChannel) -> None:
        """After NOSCRIPT (Redis restarted or flushed its scripts)."""
        channel.call("SCRIPT", "LOAD", self.source)


ACQUIRE = Script("acquire")
RELEASE = Script("release")
REFRESH = Script("refresh")
COUNT = Script("count")
