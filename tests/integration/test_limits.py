"""Host patterns, shared caps and SIGHUP reloads, measured at a counting upstream.

Names like ``a.api.test`` resolve to the upstream through the library's ``resolver``
hook (the tests never ask DNS), so each name is a host key of its own.
"""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import pytest

from dprl import DistributedProxyRateLimiter
from dprl.limits.hosts import HostLimits, normalize_limit_spec

from ..support.network import proxy_connect, wait_for
from ..support.proxy_process import ProxyProcess
from ..support.upstream import HoldingServer


def to_loopback(name: str, port: int):
    return [(socket.AF_INET, ("127.0.0.1", port))]


def status(head: bytes) -> int:
    return int(head.split(b" ")[1])


def test_pattern_rules() -> None:
    limits = HostLimits(
        3,
        {
            normalize_limit_spec("*.Example.com."): 5,
            normalize_limit_spec("a.example.com"): 7,
            normalize_limit_spec("*.b.example.com:8443"): 2,
            normalize_limit_spec("*.example.com:443"): 5,
        },
    )
    assert limits.limit_for("a.example.com") == 7  # an exact host beats a pattern
    assert limits.limit_for("x.example.com") == 5
    assert limits.limit_for("y.b.example.com:8443") == 2  # the longest pattern wins
    assert limits.limit_for("y.b.example.com") == 5
    assert limits.limit_for("example.com") == 3  # *.example.com is not example.com itself
    assert limits.limit_for("x.example.com:8080") == 3  # ports follow the host-key rule
    with pytest.raises(ValueError):
        normalize_limit_spec("a.*.example.com")


def test_each_host_a_pattern_matches_has_its_own_cap(make_proxy, holding: HoldingServer) -> None:
    port = holding.port
    proxy = make_proxy(10, resolver=to_loopback, host_limits={f"*.api.test:{port}": 2})
    held = []
    for name in ("a.api.test", "b.api.test"):
        for _ in range(2):
            sock, head = proxy_connect(proxy, f"{name}:{port}")
            assert status(head) == 200
            held.append(sock)
        sock, head = proxy_connect(proxy, f"{name}:{port}")
        assert status(head) == 500 and b"(2 concurrent" in sock.recv(200) + head
        sock.close()
    holding.wait_active(4)
    proxy.set_host_limit(f"*.api.test:{port}", 0)  # a pattern removed through the library
    again, head = proxy_connect(proxy, f"a.api.test:{port}")
    assert status(head) == 200  # the default (10) applies again
    for sock in (*held, again):
        sock.close()


def test_a_shared_cap_holds_across_its_hosts(make_proxy, holding: HoldingServer) -> None:
    port = holding.port
    proxy = make_proxy(
        10,
        resolver=to_loopback,
        host_limits={f"a.cdn.test:{port}": 2},
        shared_limits={"cdn": (3, (f"*.cdn.test:{port}", f"static.test:{port}"))},
    )
    held = []
    for name in ("a.cdn.test", "a.cdn.test", "static.test"):
        sock, head = proxy_connect(proxy, f"{name}:{port}")
        assert status(head) == 200
        held.append(sock)
    for name in ("b.cdn.test", "static.test", "c.cdn.test"):  # the shared cap refuses them all
        sock, head = proxy_connect(proxy, f"{name}:{port}")
        body = sock.recv(300)
        assert status(head) == 500 and b"shared by the hosts of cdn" in head + body, head + body
        sock.close()
    other, head = proxy_connect(proxy, f"other.test:{port}")  # not in the group
    assert status(head) == 200
    holding.wait_active(4)
    assert holding.max_active == 4
    held.pop().close()  # a slot of the group comes back: any host of it may use it
    holding.wait_active(3)  # the upstream sees the close before the proxy gives the slot back
    wait_for(lambda: proxy.limiter.shared_counts().get("cdn") == 2, what="the shared slot back")
    sock, head = proxy_connect(proxy, f"b.cdn.test:{port}")
    assert status(head) == 200
    held.append(sock)
    for sock in (*held, other):
        sock.close()
    wait_for(lambda: not proxy.limiter.shared_counts(), what="the shared count back to 0")


def test_a_shared_cap_queue_serves_any_of_its_hosts(make_proxy, holding: HoldingServer) -> None:
    port = holding.port
    proxy = make_proxy(10, resolver=to_loopback, queue_timeout=10, shared_limits={"cdn": (1, (f"*.cdn.test:{port}",))})
    held, _ = proxy_connect(proxy, f"a.cdn.test:{port}")
    waiter = socket.create_connection(("127.0.0.1", proxy.port))
    waiter.sendall(f"CONNECT b.cdn.test:{port} HTTP/1.1\r\nHost: b\r\n\r\n".encode())
    wait_for(lambda: proxy.queued_for_host(f"b.cdn.test:{port}") == 1, what="b waiting")
    held.close()
    assert waiter.recv(100).startswith(b"HTTP/1.1 200")
    assert holding.max_active == 1
    waiter.close()


def _write(path: Path, limit: int, extra: str = "") -> None:
    path.write_text(f"[dprl]\nmax-connections = {limit}\n{extra}[host-limits]\n*.api.test = 1\n")


def test_sighup_reloads_limits_and_keeps_them_on_a_bad_file(tmp_path: Path, holding: HoldingServer) -> None:
    ini = tmp_path / "dprl.ini"
    _write(ini, 1)
    proc = ProxyProcess("--config", str(ini))
    target = f"127.0.0.1:{holding.port}"

    def admitted() -> int:
        socks = []
        while True:
            sock = socket.create_connection(("127.0.0.1", proc.port), timeout=10)
            sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            if not sock.recv(100).startswith(b"HTTP/1.1 200"):
                sock.close()
                break
            socks.append(sock)
        for sock in socks:
            sock.close()
        holding.wait_active(0)
        wait_for(no_slots, what="the proxy's slots given back")  # the upstream sees the close first
        return len(socks)

    def no_slots() -> bool:
        mark = len(proc.lines)
        proc.proc.send_signal(signal.SIGUSR1)
        return "slots-held=none" in proc.wait_line(r"status: clients=", start=mark).string

    try:
        assert admitted() == 1
        _write(ini, 3)
        mark = len(proc.lines)
        proc.proc.send_signal(signal.SIGHUP)
        proc.wait_line(r"SIGHUP: configuration reloaded: max-connections=3", start=mark)
        assert admitted() == 3
        ini.write_text("[dprl]\nmax-connections = many\n")
        mark = len(proc.lines)
        proc.proc.send_signal(signal.SIGHUP)
        line = proc.wait_line(r"SIGHUP: configuration not reloaded", start=mark)
        assert "max-connections" in line.string
        assert admitted() == 3  # the running configuration stays
        ini.write_text("[nonsense]\n")
        mark = len(proc.lines)
        proc.proc.send_signal(signal.SIGHUP)
        proc.wait_line(r"SIGHUP: configuration not reloaded.*unknown section", start=mark)
        assert admitted() == 3
    finally:
        assert proc.stop() == 0
    assert not proc.matching("Traceback")


def test_a_shared_cap_holds_across_the_fleet(redis_server, redis_prefix, holding: HoldingServer) -> None:
    port = holding.port
    settings = {
        "redis_prefix": redis_prefix,
        "lease_ttl": 3,
        "resolver": to_loopback,
        "shared_limits": {"cdn": (3, (f"*.cdn.test:{port}",))},
    }
    with (
        DistributedProxyRateLimiter(0, 2, redis_server.url, **settings) as one,
        DistributedProxyRateLimiter(0, 2, redis_server.url, **settings) as two,
    ):
        held = [proxy_connect(one, f"a.cdn.test:{port}")[0] for _ in range(2)]
        held.append(proxy_connect(two, f"b.cdn.test:{port}")[0])
        holding.wait_active(3)
        for proxy, name in ((one, "c.cdn.test"), (two, "b.cdn.test")):
            sock, head = proxy_connect(proxy, f"{name}:{port}")
            body = sock.recv(300)
            assert status(head) == 500 and b"(3 concurrent connections shared by the hosts of cdn)" in body, body
            sock.close()
        refused, head = proxy_connect(two, f"a.cdn.test:{port}")  # a's own cap (2) says no first
        assert status(head) == 500 and b"shared" not in refused.recv(300)
        refused.close()
        client = redis_server.client()
        counts = client.hgetall(f"{redis_prefix}:{{shared:cdn}}:counts")
        assert sorted(int(n) for n in counts.values()) == [1, 2]  # one slot per key: one Cluster slot
        assert client.exists(f"{redis_prefix}:{{shared:cdn}}:a.cdn.test:{port}:counts")
        held.pop(0).close()
        holding.wait_active(2)
        shared = f"{redis_prefix}:{{shared:cdn}}:counts"
        wait_for(lambda: sum(int(n) for n in client.hgetall(shared).values()) == 2, what="the release in Redis")
        sock, head = proxy_connect(two, f"c.cdn.test:{port}")
        assert status(head) == 200
        assert holding.max_active == 3
        with pytest.raises(ValueError):
            one.set_shared_limit("other", 1, ["x.test"])
        for s in (*held, sock):
            s.close()
