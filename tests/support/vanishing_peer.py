"""A tunnel whose peers vanish without a FIN or RST; run inside a private network namespace.

``python -m tests.support.vanishing_peer`` (under ``ip netns exec``) opens a CONNECT tunnel through
two proxies, one with --tcp-keepalive 1 and one with keepalive off, then takes the
namespace's loopback down: from then on no packet moves, nothing is reset, and only TCP
keepalive can tell that the other end is gone. Prints JSON: how long each proxy held its
slot afterwards (None: still held when the scenario ended).
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import time

from dprl import ProxyRateLimiter

from .network import proxy_connect
from .upstream import EchoServer

WATCH_SECONDS = 12.0
CONTROL_SECONDS = 3.0


def main() -> None:
    upstream = EchoServer()
    proxies = {
        "keepalive": ProxyRateLimiter(0, 5, logging.getLogger("dprl.test"), tcp_keepalive=1).start(),
        "no_keepalive": ProxyRateLimiter(0, 5, logging.getLogger("dprl.test"), tcp_keepalive=0).start(),
    }
    clients: list[socket.socket] = []
    for proxy in proxies.values():
        sock, head = proxy_connect(proxy, f"127.0.0.1:{upstream.port}")
        assert head.startswith(b"HTTP/1.1 200"), head
        clients.append(sock)
    assert all(proxy.limiter.process_counts() for proxy in proxies.values())
    subprocess.run(["ip", "link", "set", "lo", "down"], check=True)
    down = time.monotonic()
    held_for: dict[str, float | None] = dict.fromkeys(proxies)
    while (elapsed := time.monotonic() - down) < WATCH_SECONDS:
        for name, proxy in proxies.items():
            if held_for[name] is None and not proxy.limiter.process_counts():
                held_for[name] = round(elapsed, 2)
        released = held_for["keepalive"]
        if released is not None and elapsed > released + CONTROL_SECONDS:
            break  # the other one still holds its slot this long after: keepalive made the difference
        time.sleep(0.05)
    print(json.dumps({"held_for": held_for, "watched": round(elapsed, 2)}), flush=True)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    for sock in clients:
        sock.close()
    for proxy in proxies.values():
        proxy.stop(timeout=0.5)


if __name__ == "__main__":
    main()
