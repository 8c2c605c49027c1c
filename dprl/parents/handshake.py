"""Asking a parent proxy for a connection to a destination: HTTP CONNECT, or SOCKS5.

Each handshake runs on the parent's ``Endpoint`` (its bytes counted, anything the parent
sent past its answer kept in the buffer for the pipe) within a deadline. Two kinds of
failure, kept apart because they are handled apart:

- ``HandshakeFailed``: the parent did not do its part (closed, timed out, spoke something
  else). It counts against the parent's health and the connection tries the next parent.
- ``ParentRefused``: the parent answered properly that it will not (an HTTP status other
  than 2xx to CONNECT, a SOCKS5 reply other than success): relayed to the client with an
  explanation, not retried, not counted against the parent.
"""

from __future__ import annotations

import base64
import ipaddress
import struct
from typing import NamedTuple

from ..errors import ConnectionLost, ProxyError, Reason
from ..http.errors import ProtocolError
from ..http.head import head_finder, parse_response_head
from ..net.endpoint import Endpoint
from .spec import ParentSpec

MAX_ANSWER_HEAD = 16384
SOCKS_VERSION = 5
_NO_AUTH, _USER_PASSWORD, _NO_ACCEPTABLE = 0x00, 0x02, 0xFF
_SOCKS_REPLIES = {
    1: "general SOCKS server failure",
    2: "connection not allowed by ruleset",
    3: "network unreachable",
    4: "host unreachable",
    5: "connection refused",
    6: "TTL expired",
    7: "command not supported",
    8: "address type not supported",
}


class HandshakeFailed(Exception):
    """The parent did not complete its handshake: it counts against the parent."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # "handshake" or "tls": the failures_total label


class ParentRefused(ProxyError):
    """The parent refused the destination in proper form; the client gets its status."""

    reason = Reason.PARENT

    def __init__(self, message: str, status: int, fields: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message, status)
        self.fields = fields  # of the parent's answer, that the client needs (Proxy-Authenticate)


class Destination(NamedTuple):
    host: str  # normalised: IPv6 literals in brackets
    port: int

    @property
    def authority(self) -> str:
        return f"{self.host}:{self.port}"


def basic_credentials(username: str, password: str) -> str:
    """A ``Proxy-Authorization`` value for a parent's own user and password."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def http_connect(endpoint: Endpoint, parent: ParentSpec, to: Destination, authorization: str, deadline: float) -> None:
    """``CONNECT host:port`` through an HTTP(S) parent; returns once it answered 2xx."""
    lines = [f"CONNECT {to.authority} HTTP/1.1", f"Host: {to.authority}"]
    if authorization:
        lines.append(f"Proxy-Authorization: {authorization}")
    endpoint.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    find = head_finder(MAX_ANSWER_HEAD, MAX_ANSWER_HEAD)
    try:
        head = parse_response_head(endpoint.read_until(find, deadline))
    except ConnectionLost as exc:
        raise HandshakeFailed("handshake", f"{exc} before answering CONNECT") from None
    except ProtocolError as exc:
        raise HandshakeFailed("handshake", f"answered CONNECT with broken HTTP ({exc})") from None
    if 200 <= head.status < 300:
        return
    extra = tuple(("Proxy-Authenticate", v) for v in head.values("proxy-authenticate"))
    why = f"parent {parent.label} answered CONNECT {to.authority} with {head.status} {head.reason}".rstrip()
    if head.status == 407:
        hint = "its credentials were refused" if authorization else "it asks for credentials (put them in its URL)"
        raise ParentRefused(f"{why}: {hint}", 407, extra)
    raise ParentRefused(why, head.status if 400 <= head.status < 600 else 502)


def socks5_connect(
    endpoint: Endpoint, parent: ParentSpec, to: Destination, address: str | None, deadline: float
) -> None:
    """RFC 1928 CONNECT through a SOCKS5 parent (RFC 1929 user and password when its URL has
    them). ``address``: the destination's IP as dprl resolved it (``socks5://``), or None to
    send the name for the parent to resolve (``socks5h://``, or a name-less literal)."""
    methods = bytes([_NO_AUTH, _USER_PASSWORD]) if parent.username else bytes([_NO_AUTH])
    endpoint.send(bytes([SOCKS_VERSION, len(methods)]) + methods)
    version, method = _read(endpoint, 2, deadline, "its greeting")
    if version != SOCKS_VERSION:
        raise HandshakeFailed("handshake", f"answered with SOCKS version {version}, not 5")
    if method == _USER_PASSWORD and parent.username:
        user, password = parent.username.encode(), parent.password.encode()
        if len(user) > 255 or len(password) > 255:
            raise ParentRefused(f"parent {parent.label}: a SOCKS5 user name and password are at most 255 bytes", 502)
        endpoint.send(bytes([1, len(user)]) + user + bytes([len(password)]) + password)
        _, status = _read(endpoint, 2, deadline, "its authentication answer")
        if status != 0:
            raise ParentRefused(f"parent {parent.label} refused its SOCKS5 user and password", 502)
    elif method != _NO_AUTH:
        wanted = "no method dprl offers" if method == _NO_ACCEPTABLE else f"method {method}"
        raise ParentRefused(f"parent {parent.label} asks for SOCKS5 authentication by {wanted}", 502)
    endpoint.send(bytes([SOCKS_VERSION, 1, 0]) + _socks_address(address or to.host) + struct.pack("!H", to.port))
    version, reply, _, kind = _read(endpoint, 4, deadline, "its CONNECT answer")
    if version != SOCKS_VERSION:
        raise HandshakeFailed("handshake", f"answered CONNECT with SOCKS version {version}, not 5")
    length = {1: 4, 4: 16}.get(kind)
    if length is None:
        if kind != 3:
            raise HandshakeFailed("handshake", f"answered with address type {kind}")
        (length,) = _read(endpoint, 1, deadline, "its bound address")
    _read(endpoint, length + 2, deadline, "its bound address")
    if reply != 0:
        why = _SOCKS_REPLIES.get(reply, f"reply {reply}")
        raise ParentRefused(f"parent {parent.label} could not connect to {to.authority}: {why}", 502)


def _socks_address(host: str) -> bytes:
    text = host[1:-1] if host.startswith("[") else host
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        name = text.encode("idna")
        if len(name) > 255:
            raise ParentRefused(f"{host}: a name longer than SOCKS5 allows", 502) from None
        return bytes([3, len(name)]) + name
    return (bytes([1]) if ip.version == 4 else bytes([4])) + ip.packed


def _read(endpoint: Endpoint, size: int, deadline: float, what: str) -> bytes:
    buf = endpoint.buf
    try:
        while len(buf) < size:
            if not endpoint.fill(deadline):
                raise HandshakeFailed("handshake", f"closed before {what}")
    except ConnectionLost as exc:
        raise HandshakeFailed("handshake", f"{exc} before {what}") from None
    return endpoint.consume(size)
