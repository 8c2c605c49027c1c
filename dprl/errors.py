"""Exceptions that cross module boundaries.

Each error already knows the HTTP status to answer with, so the session that catches it
does not have to re-derive it (h11 does the same with ``RemoteProtocolError``).
"""

from __future__ import annotations


class ProxyError(Exception):
    """Base class: a request that cannot be served, and the status that says why."""

    status: int = 502

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class ClientProtocolError(ProxyError):
    """The client broke HTTP (bad framing, oversize head, bad target): a 4xx."""

    status = 400


class UpstreamError(ProxyError):
    """The upstream could not be reached or broke HTTP: 502, or 504 for a connect timeout.

    Parsing code is shared by both sides and names client statuses (400, 431...); for the
    upstream side any of those becomes 502, which is what the client must see.
    """

    status = 502

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message, status if status is not None and status >= 500 else None)


class AccessDenied(ProxyError):
    """Policy forbids this: a client outside --allow-clients, a port or destination not allowed."""

    status = 403


class ConnectionLost(Exception):
    """A peer closed or reset its connection; ``side`` is ``"client"`` or ``"upstream"``."""

    def __init__(self, side: str, reason: str = "closed", timed_out: bool = False) -> None:
        super().__init__(f"{side} connection {reason}")
        self.side = side
        self.timed_out = timed_out


class LimitExceeded(Exception):
    """The host is at its cap: the connection is refused with HTTP 500."""

    def __init__(self, host: str, limit: int) -> None:
        super().__init__(f"connection limit reached for {host} (limit {limit})")
        self.host = host
        self.limit = limit


class LimiterUnavailable(Exception):
    """The shared counter store cannot answer and the failure policy says refuse."""


class ConfigError(ValueError):
    """A configuration value is invalid; the message is one line meant for a user."""
