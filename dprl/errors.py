"""Exceptions that cross package boundaries (HTTP parsing has its own: ``http.ProtocolError``).

Each error an answer can come from already knows its HTTP status, so the session that
catches it does not have to re-derive it.
"""

from __future__ import annotations

import math
from enum import Enum


class Reason(str, Enum):
    """Why a connection was answered by dprl instead of served: the ``reason`` label of
    dprl_refusals_total. Every refusal names one of these, and only these."""

    LIMIT = "limit"
    RATE = "rate"
    TENANT_SHARE = "tenant_share"
    LIMITER_UNAVAILABLE = "limiter_unavailable"
    ACCESS = "access"
    AUTH = "auth"
    BAD_REQUEST = "bad_request"
    UPSTREAM_ERROR = "upstream_error"
    TIMEOUT = "timeout"
    QUEUE_TIMEOUT = "queue_timeout"
    QUEUE_FULL = "queue_full"
    SHUTDOWN = "shutdown"
    PARENT = "parent"  # a parent proxy refused the destination, or every parent of its pool is down
    INTERNAL = "internal"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def for_status(cls, status: int) -> Reason:
        """The reason of an answer of ours that carries no reason of its own."""
        if status == 403:
            return cls.ACCESS
        if status == 407:
            return cls.AUTH
        if status in (408, 504):
            return cls.TIMEOUT
        if status in (502, 503):
            return cls.UPSTREAM_ERROR
        return cls.BAD_REQUEST if 400 <= status < 500 or status in (501, 505) else cls.INTERNAL


class ProxyError(Exception):
    """A request that cannot be served, and the status that says why."""

    status: int = 502
    reason: Reason | None = None  # None: the status tells (Reason.for_status)
    fields: tuple[tuple[str, str], ...] = ()  # header fields the answer carries (a parent's Proxy-Authenticate)

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class UpstreamError(ProxyError):
    """The upstream could not be reached, did not answer in time, or broke HTTP.

    502 (unreachable, broken), 503 (the proxy is out of descriptors), 504 (timed out).
    """

    status = 502


class ParentsUnavailable(UpstreamError):
    """No parent of the destination's pool could carry the connection: every one is
    ejected, or each one tried failed to connect or to complete its handshake."""

    reason = Reason.PARENT


class AccessDenied(ProxyError):
    """Policy forbids this: a client outside --allow-clients, a port or destination not allowed."""

    status = 403


class ConnectionLost(Exception):
    """A peer closed or reset its connection, or stalled past a deadline.

    ``side`` is ``"client"`` or ``"upstream"``.
    """

    def __init__(self, side: str, reason: str = "closed", timed_out: bool = False) -> None:
        super().__init__(f"{side} connection {reason}")
        self.side = side
        self.timed_out = timed_out


class LimitExceeded(Exception):
    """The host key is at its cap: the connection is refused (HTTP 500 by default)."""

    reason = Reason.LIMIT

    def __init__(self, key: str, limit: int, shared: str = "") -> None:
        super().__init__(
            f"connection limit reached for {key} (limit {limit}{f', shared cap {shared}' if shared else ''})"
        )
        self.key = key
        self.limit = limit
        self.shared = shared  # the shared cap that refused, if it was one

    @property
    def host(self) -> str:
        """The host key (its name in dprl 0.1, kept for code that reads it)."""
        return self.key


class RateExceeded(LimitExceeded):
    """The host's request rate has no token now: refused, with the time to its next token."""

    reason = Reason.RATE

    def __init__(self, key: str, rate: str, wait: float, detail: str = "") -> None:
        Exception.__init__(self, f"request rate reached for {key} (rate {rate})")
        self.key = key
        self.limit = 0
        self.shared = ""
        self.rate = rate
        self.wait = wait  # seconds until the next token
        self.detail = detail

    @property
    def retry_after(self) -> int:
        """Retry-After: the seconds until the next token, rounded up (at least 1)."""
        return max(1, math.ceil(self.wait))


class TenantShareExceeded(LimitExceeded):
    """The host has room, but not for this tenant: it is at its max, or the free slots are
    owed to other tenants below their guarantee (tenants.py)."""

    reason = Reason.TENANT_SHARE

    def __init__(self, key: str, limit: int, tenant: str, detail: str) -> None:
        super().__init__(key, limit)
        self.tenant = tenant
        self.detail = detail


class QueueTimeout(LimitExceeded):
    """Waited --queue-timeout for a slot and none came: the refusal at the cap, given late."""

    reason = Reason.QUEUE_TIMEOUT

    def __init__(self, key: str, limit: int, detail: str, shared: str = "") -> None:
        super().__init__(key, limit, shared)
        self.detail = detail


class QueueFull(QueueTimeout):
    """--max-queue connections already wait for this host in this process: refused at once."""

    reason = Reason.QUEUE_FULL


class ShuttingDown(ProxyError):
    """The proxy stops: a connection still waiting for a slot gets 503 at once."""

    status = 503
    reason = Reason.SHUTDOWN


class LimiterUnavailable(Exception):
    """The shared counter store cannot answer and the failure policy says refuse."""


class RedisUnavailable(Exception):
    """Redis could not be reached, or did not answer in time."""

    kind = "connection"  # the ``kind`` label of dprl_redis_errors_total


class RedisTimeout(RedisUnavailable):
    """Redis did not answer (or accept a connection) within --redis-timeout."""

    kind = "timeout"


class ConfigError(ValueError):
    """A configuration value is invalid; the message is one line meant for a user."""


class ListenError(OSError):
    """The proxy's listening socket could not be opened (address in use, permission...)."""
