"""Who a request's tenant is: its proxy-auth user, its client address (or CIDR group), or a header.

What a request names is untrusted: it only ever picks among the configured tenants, and
anything else falls into ``default`` (tenants.py), so no client can grow a label or a key.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from ..http.head import RequestHead
from .access import IPNetwork, basic_credentials, client_ip

BY_USER, BY_CLIENT, BY_HEADER = "user", "client", "header"
TENANT_BY = (BY_USER, BY_CLIENT, BY_HEADER)


def basic_user(values: list[str]) -> str:
    """The user name of a Basic Proxy-Authorization value ("" if there is none)."""
    given = basic_credentials(values)
    return "" if given is None else given.partition(b":")[0].decode("utf-8", "replace")


class TenantOf:
    """The tenant name of a request, by one rule (``--tenant-by``)."""

    def __init__(self, by: str, header: str = "x-dprl-tenant", groups: Sequence[tuple[str, IPNetwork]] = ()) -> None:
        self.by = by
        self.header = header.lower()  # with --tenant-by header: read, and never forwarded
        self.groups = tuple(groups)
        self._client = functools.lru_cache(maxsize=4096)(self._of_client)

    def __call__(self, request: RequestHead, peer: str) -> str:
        if self.by == BY_USER:
            return basic_user(request.raw_values("proxy-authorization"))
        if self.by == BY_HEADER:
            values = request.raw_values(self.header)
            return values[0].strip() if len(values) == 1 else ""
        return self._client(peer)

    def _of_client(self, peer: str) -> str:
        """The first group whose network holds the client, else the address itself."""
        try:
            ip = client_ip(peer)
        except ValueError:
            return ""
        for name, network in self.groups:
            if ip.version == network.version and ip in network:
                return name
        return str(ip)
