"""The Lua scripts (package data under dprl/redis/lua/), and the one runner that calls them.

Each .lua file starts with its contract: what KEYS and ARGV are and what it returns.
Scripts are sent as EVALSHA; when Redis answers NOSCRIPT (it restarted, or flushed its
scripts) the runner loads the script and sends the command once more. Encoded commands
are cached: per host they are the same bytes every time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from importlib import resources
from typing import NamedTuple

from .channel import OnReply, RedisChannel
from .protocol import Reply, ReplyError, pack

MAX_CACHED_COMMANDS = 10000


def _read(name: str) -> str:
    return resources.files(__package__).joinpath("lua").joinpath(f"{name}.lua").read_text(encoding="utf-8")


_COMMON = _read("common")  # helpers every script starts with (lua/common.lua)


class Script:
    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str) -> None:
        self.name = name
        self.source = _COMMON + _read(name)
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    def __repr__(self) -> str:
        return f"<Script {self.name} {self.sha[:8]}>"


ACQUIRE = Script("acquire")
RELEASE = Script("release")
REFRESH = Script("refresh")
COUNT = Script("count")
LEAVE = Script("leave")
LIMITS = Script("limits")
LIMITS_READ = Script("limits_read")
FORGET = Script("forget")
PACE = Script("pace")
ALL = (ACQUIRE, RELEASE, REFRESH, COUNT, LEAVE, LIMITS_READ, PACE)


def is_noscript(reply: object) -> bool:
    return isinstance(reply, ReplyError) and reply.code == "NOSCRIPT"


class ScriptRunner:
    """Runs scripts on one ordered channel: encoding, the command cache, NOSCRIPT reloads."""

    def __init__(self, channel: RedisChannel) -> None:
        self.channel = channel
        self._commands: dict[tuple[str, tuple[str, ...], tuple[object, ...]], bytes] = {}

    def command(self, script: Script, keys: tuple[str, ...], args: tuple[object, ...]) -> bytes:
        """The EVALSHA command, RESP-encoded once for each (script, keys, args)."""
        cache_key = (script.name, keys, args)
        command = self._commands.get(cache_key)
        if command is None:
            if len(self._commands) >= MAX_CACHED_COMMANDS:
                self._commands.clear()
            command = self._commands[cache_key] = pack(("EVALSHA", script.sha, len(keys), *keys, *args))
        return command

    def run(
        self,
        script: Script,
        keys: tuple[str, ...],
        args: tuple[object, ...] | Callable[[], tuple],
        before_send: Callable[[], None] | None = None,
        on_reply: OnReply | None = None,
        deadline: float | None = None,
        asking: bool = False,
    ) -> Reply:
        """Send the script's command and wait for its reply (ReplyError and RedisUnavailable raise).

        ``args`` is a tuple (the command is encoded once and cached) or a function read as
        the command leaves (see ``builder``). ``before_send`` runs under the channel's send
        lock as the command leaves, and again if it is sent a second time after NOSCRIPT;
        ``on_reply`` gets every reply, the NOSCRIPT one included (``is_noscript`` tells it apart).
        """
        encode = self.builder(script, keys, args) if callable(args) else None
        command = b"" if callable(args) else self.command(script, keys, args)
        deadline = deadline or self.channel.deadline()

        def build() -> bytes:
            if before_send is not None:
                before_send()
            return command if encode is None else encode()

        try:
            return self.channel.wait(self.channel.send(build, on_reply, deadline, asking), deadline)
        except ReplyError as exc:
            if not is_noscript(exc):
                raise
            self.load(script, deadline)
            return self.channel.wait(self.channel.send(build, on_reply, deadline, asking), deadline)

    def run_drained(
        self,
        script: Script,
        calls: Sequence[tuple[tuple[str, ...], Callable[[], tuple]]],
        deadline: float | None = None,
    ) -> list:
        """Send ``script`` once per (keys, args builder) when nothing else is in flight.

        The arguments are built as the commands leave (see ``RedisChannel.send_drained``),
        so a count read there is exact at the point where Redis runs it. Replies come back
        in order, errors as ReplyError values (a redirected key must not fail the others).
        """
        deadline = deadline or self.channel.deadline()
        for attempt in (1, 2):
            results = self.channel.send_drained([self.builder(script, keys, args) for keys, args in calls], deadline)
            replies = []
            for result in results:
                try:
                    replies.append(self.channel.wait(result, deadline))
                except ReplyError as exc:
                    replies.append(exc)
            if attempt == 1 and any(is_noscript(reply) for reply in replies):
                self.load(script, deadline)
                continue
            return replies
        raise AssertionError("unreachable")

    @staticmethod
    def builder(script: Script, keys: tuple[str, ...], args: Callable[[], tuple]) -> Callable[[], bytes]:
        """A command whose arguments are read only as it leaves (not cached)."""
        return lambda: pack(("EVALSHA", script.sha, len(keys), *keys, *args()))

    def load(self, script: Script, deadline: float | None = None) -> None:
        """After NOSCRIPT (Redis restarted or flushed its scripts)."""
        self.channel.call("SCRIPT", "LOAD", script.source, deadline=deadline)


# replies, named as each script's contract names them ----------------------------------------
class AcquireReply(NamedTuple):
    """acquire.lua's reply. ``admitted``: 1, 0 (at the limit), -1 (Redis lost data)."""

    admitted: int
    total: int  # the fleet's count after this call
    own_before: int  # this worker's count before it (-1: absent, so this admission made its lease)
    epoch: bytes
    ahead: int  # live waiters ahead of the ticket
    wake_self: int  # 1 if another waiter of this worker may go now
    by_shared: int  # 1 if refused by the shared cap rather than the host's own
    rate_wait_us: int  # µs until the caller's token when the rate (not a cap) refused it, else 0
    next_token_us: int  # µs until the host's next token after this call (0: one is there, or no rate)
    by_tenant: int  # refused by the tenants' rules: 0 no, 1 at its max, 2 owed to others (at or over
    # its guarantee), 3 owed to others (below its guarantee)
    tenants_held: list  # [tenant, fleet count, ...] at the host (tenants configured), else empty

    @classmethod
    def parse(cls, reply: object) -> AcquireReply:
        return cls(*reply)  # type: ignore[misc]  # the script returns exactly these eleven


class RefreshReply(NamedTuple):
    """refresh.lua's reply."""

    total: int  # the fleet's count after this worker's was set
    epoch: bytes
    changed: int  # 1 if the epoch marker was missing or not the one this worker knew

    @classmethod
    def parse(cls, reply: object) -> RefreshReply:
        return cls(*reply)  # type: ignore[misc]  # the script returns exactly these three
