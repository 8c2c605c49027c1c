"""Request targets a forward proxy accepts (RFC 9112 3.2): absolute-form and authority-form.

Hosts come back normalised (lowercase, no trailing dot, IPv6 literals in brackets,
compressed), so what the limiter counts and what is dialled are the same string.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import NamedTuple

from . import grammar
from .errors import ProtocolError
from .head import RequestHead


def parse_host(host: str) -> str:
    """Validate and normalise a bare host (no port); raise ValueError if it is not one.

    IPv6 literals come back in brackets, compressed; names lowercased without trailing dot.
    Zone ids (``fe80::1%eth0``) are refused: they name an interface of one machine, not a
    destination, and Python would otherwise accept any text after the ``%``.
    """
    if "%" in host:
        raise ValueError(f"invalid host {host!r}")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"unterminated IPv6 literal {host!r}")
        try:
            return f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
        except ValueError:
            raise ValueError(f"invalid IPv6 literal {host!r}") from None
    if ":" in host:
        try:  # a bare IPv6 literal, as people write them in config files
            return f"[{ipaddress.IPv6Address(host).compressed}]"
        except ValueError:
            raise ValueError(f"invalid host {host!r}") from None
    name = host.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > 253 or not grammar.REG_NAME.fullmatch(name):
        raise ValueError(f"invalid host name {host!r}")
    return name


def parse_port(text: str) -> int:
    if not grammar.PORT.fullmatch(text) or not 0 < int(text) < 65536:
        raise ValueError(f"invalid port {text!r}")
    return int(text)


def split_authority(authority: str, default_port: int | None) -> tuple[str, int]:
    """Split ``host[:port]`` into a normalised host and a port.

    ``default_port=None`` means the port is required (CONNECT's authority-form).
    """
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise ValueError(f"unterminated IPv6 literal in {authority!r}")
        host, rest = authority[: end + 1], authority[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"invalid authority {authority!r}")
        port_text = rest[1:] if rest else None
    elif authority.count(":") == 1:
        host, port_text = authority.split(":")
    elif ":" in authority:
        raise ValueError(f"IPv6 literal must be in brackets: {authority!r}")
    else:
        host, port_text = authority, None
    if port_text is None:
        if default_port is None:
            raise ValueError(f"port required in {authority!r}")
        return parse_host(host), default_port
    return parse_host(host), parse_port(port_text)


class Target(NamedTuple):
    """Where a request goes: a normalised host, a port, and (absolute-form) the path."""

    host: str
    port: int
    path: str = ""

    @property
    def authority(self) -> str:
        """The Host field for the next hop: the port only when it is not 80."""
        return self.host if self.port == 80 else f"{self.host}:{self.port}"


def connect_target(request: RequestHead) -> Target:
    """The authority-form target of a CONNECT (``host:port``, port required)."""
    try:
        return _authority_target(request.target)
    except ValueError as exc:
        raise ProtocolError(400, f"bad CONNECT target: {exc}") from None


@functools.lru_cache(maxsize=4096)
def _authority_target(authority: str) -> Target:
    """A CONNECT target, parsed once per distinct authority (clients repeat theirs);
    invalid ones raise each time and are not kept."""
    return Target(*split_authority(authority, None))


def forward_target(request: RequestHead, upgrade: bool) -> Target:
    """The absolute-form target of a request to forward: ``http://``, or ``ws://`` for an upgrade.

    Some WebSocket clients (aiohttp) send ws:// targets to an HTTP proxy: the same request
    as http://, tunnelled after the 101. https:// and wss:// must come as CONNECT.
    """
    target = request.target
    lowered = target[:8].lower()
    if lowered.startswith(("https://", "wss://")):
        scheme = lowered.split(":", 1)[0]
        raise ProtocolError(400, f"{scheme}:// targets must be tunnelled: send CONNECT host:443 to this proxy")
    if lowered.startswith("http://"):
        rest = target[7:]
    elif lowered.startswith("ws://") and upgrade:
        rest = target[5:]
    else:
        raise ProtocolError(400, "this is a forward proxy: the request target must be an absolute http:// URL")
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, path = rest[:cut], rest[cut:]
    if "@" in authority:
        raise ProtocolError(400, "userinfo is not allowed in the request target")
    if "#" in target:
        raise ProtocolError(400, "fragment is not allowed in the request target")
    try:
        host, port = split_authority(authority, 80)
    except ValueError as exc:
        raise ProtocolError(400, f"bad request target: {exc}") from None
    if not path or path.startswith("?"):
        path = ("*" if request.method == "OPTIONS" and not path else "/") + path
    return Target(host, port, path)
