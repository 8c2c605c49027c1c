"""Following a Sentinel-managed master: ask the sentinels where it is, at every connection.

The channel calls the locator each time it connects; after a failover the sentinels name
the promoted replica, and the channel's ROLE check refuses a server that is no longer the
master (a stale answer, or the old master back as a replica).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..errors import RedisUnavailable
from .address import RedisAddress, RedisDeployment
from .channel import query


def sentinel_locator(deployment: RedisDeployment) -> Callable[[float], RedisAddress]:
    """``locate(timeout)``: the master's address as the first sentinel that answers knows it."""
    sentinels = list(deployment.servers)

    def locate(timeout: float) -> RedisAddress:
        deadline = time.monotonic() + timeout
        errors = []
        for sentinel in list(sentinels):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                (reply,) = query(sentinel, remaining, ("SENTINEL", "get-master-addr-by-name", deployment.service))
            except RedisUnavailable as exc:
                errors.append(str(exc))
                continue
            if isinstance(reply, list) and len(reply) == 2:
                sentinels.remove(sentinel)
                sentinels.insert(0, sentinel)  # ask the one that answered first next time
                host, port = reply[0].decode(), int(reply[1])
                return deployment.template.at(host, port)
            errors.append(f"{sentinel} does not know {deployment.service!r}")
        raise RedisUnavailable(f"no sentinel named the master of {deployment.service!r}: {'; '.join(errors)}")

    return locate
