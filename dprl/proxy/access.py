"""Who may use the proxy, and where it may go.

Secure by default: only loopback and private client addresses are served, so the default
``0.0.0.0`` bind is not an open relay on a public address; the cloud metadata range
(169.254.0.0/16) is never a destination, also when a name resolves into it.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import ipaddress
from collections.abc import Iterable

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
REALM = "dprl"


def client_ip(address: str) -> IPAddress:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # a v4 client on a dual-stack listener
    return ip


def basic_credentials(header_values: list[str]) -> bytes | None:
    """``user:password`` of a single Basic Proxy-Authorization value (None: none, or not Basic)."""
    if len(header_values) != 1:
        return None
    scheme, _, token = header_values[0].strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        return base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


class AccessPolicy:
    """Checks made before a slot is taken; each failing check is a 403 or a 407.

    Built from values the configuration parsed once (networks, credentials, ports).
    """

    def __init__(
        self,
        allow_clients: Iterable[IPNetwork],
        credentials: Iterable[bytes] = (),
        connect_ports: frozenset[int] | None = None,
        deny_destinations: Iterable[IPNetwork] = (),
    ) -> None:
        self.allow_clients = tuple(allow_clients)
        self.credentials = tuple(credentials)
        self.connect_ports = connect_ports
        self.deny_destinations = tuple(deny_destinations)
        # Asked for every connection, answered from a handful of addresses: cache them.
        self.client_allowed = functools.lru_cache(maxsize=4096)(self._client_allowed)
        self.destination_allowed = functools.lru_cache(maxsize=4096)(self._destination_allowed)

    def _client_allowed(self, address: str) -> bool:
        try:
            ip = client_ip(address)
        except ValueError:
            return False
        return any(ip in network for network in self.allow_clients)

    @property
    def auth_required(self) -> bool:
        return bool(self.credentials)

    def authorized(self, header_values: list[str]) -> bool:
        """True if a Proxy-Authorization value carries valid Basic credentials.

        Compared in constant time against every configured pair (no early exit), so
        timing tells nothing about which user or how much of a password matched.
        """
        if not self.credentials:
            return True
        given = basic_credentials(header_values)
        if given is None:
            return False
        matched = False
        for expected in self.credentials:
            matched |= hmac.compare_digest(given, expected)
        return matched

    def port_allowed(self, port: int) -> bool:
        return self.connect_ports is None or port in self.connect_ports

    def _destination_allowed(self, ip: IPAddress) -> bool:
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return not any(ip in network for network in self.deny_destinations)
