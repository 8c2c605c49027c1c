"""Tenants: guaranteed shares of a host's cap, idle share lent, fair order of waiters.

Measured at an upstream that tags each connection with its tenant: the cap is never
exceeded, a tenant that comes back gets its guarantee within one hold time, weights split
the cap, ``max`` caps a tenant on an idle host, and every slot comes back.
"""

from __future__ import annotations

import base64
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
import requests

from dprl import DistributedProxyRateLimiter, ProxyRateLimiter

from ..support.network import free_port, read_head, wait_for
from ..support.proxy_process import ProxyProcess
from ..support.redis_server import RedisServer
from ..support.tenant_load import TenantClient, TenantUpstream, percentile
from ..support.upstream import ArrivalUpstream, RawOrigin, read_request_head


@pytest.fixture
def tenant_upstream() -> TenantUpstream:
    server = TenantUpstream()
    yield server
    server.close()


def _run(clients: list[TenantClient]) -> None:
    for client in clients:
        client.start()


def _stop(stop: threading.Event, clients: list[TenantClient]) -> None:
    stop.set()
    for client in clients:
        client.join(30)


def test_a_returning_tenant_gets_its_guarantee_within_one_hold_time(
    make_proxy: Callable[..., ProxyRateLimiter], tenant_upstream: TenantUpstream
) -> None:
    proxy = make_proxy(10, queue_timeout=10, tenant_by="header", tenant_shares={"a": "1", "b": "1"})
    target = tenant_upstream.authority
    stop_a, stop_b = threading.Event(), threading.Event()
    batch = [TenantClient(proxy.port, target, "a", 0.2, stop_a) for _ in range(100)]
    _run(batch)
    wait_for(lambda: tenant_upstream.open("a") == 10, 10, "tenant a holding the whole idle cap")
    interactive = [TenantClient(proxy.port, target, "b", 0.2, stop_b) for _ in range(3)]
    started = time.monotonic()
    _run(interactive)
    time.sleep(3)
    ended = time.monotonic()
    _stop(stop_b, interactive)
    b_left = time.monotonic()
    wait_for(lambda: tenant_upstream.open("a") == 10, 5, "tenant a back at 10 once b stopped")
    a_back = time.monotonic() - b_left
    _stop(stop_a, batch)

    waits = [w for client in interactive for w in client.waits]
    assert tenant_upstream.max_total <= 10
    assert not [r for client in interactive for r in client.refused]
    p50, p99 = percentile(waits, 0.5), percentile(waits, 0.99)
    print(f"b's wait p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms over {len(waits)} connections")
    assert p99 <= 0.25, f"b's wait p99 {p99:.3f}s > one hold time"
    steady = started + 0.5
    # a's 7 as the upstream sees them: each hand-over shows there as a short gap (a tunnel
    # closes, the next one connects and sends its first line): 90-92 % of the time at 7 or
    # more in five runs here, 6.7-6.8 open on average
    a_at_7 = tenant_upstream.share_of_time_at_least("a", 7, steady, ended)
    a_mean = tenant_upstream.average("a", steady, ended)
    print(f"a at 7 or more {a_at_7:.1%} of the time, {a_mean:.2f} open on average")
    assert a_at_7 >= 0.8 and a_mean >= 6.5, (a_at_7, a_mean)
    assert tenant_upstream.average("b", steady, ended) >= 2.5
    assert a_back <= 0.5, f"a reached 10 only {a_back:.2f}s after b left"
    wait_for(lambda: not proxy.limiter.process_counts(), 5, "every slot back")
    assert not proxy.limiter.tenant_counts(target)


def test_weights_split_the_cap_and_max_caps_a_tenant_on_an_idle_host(
    make_proxy: Callable[..., ProxyRateLimiter], tenant_upstream: TenantUpstream
) -> None:
    proxy = make_proxy(10, queue_timeout=10, tenant_by="header", tenant_shares={"a": "3", "b": "1"})
    target = tenant_upstream.authority
    stop = threading.Event()
    clients = [TenantClient(proxy.port, target, t, 0.1, stop) for t in ("a", "b") for _ in range(30)]
    _run(clients)
    wait_for(lambda: tenant_upstream.open("a") + tenant_upstream.open("b") == 10, 10, "the cap in use")
    start = time.monotonic() + 0.5
    time.sleep(3)
    end = time.monotonic()
    _stop(stop, clients)
    a, b = tenant_upstream.average("a", start, end), tenant_upstream.average("b", start, end)
    print(f"a {a:.2f}, b {b:.2f} open on average")
    assert tenant_upstream.max_total <= 10
    # the split of the cap (the upstream also sees each hand-over's gap: a close, then the next connect)
    assert a + b >= 9.0, (a, b)
    assert 6.8 <= 10 * a / (a + b) <= 8.2, (a, b)

    proxy.set_tenant_share("a", "1:max=50%")
    idle = TenantUpstream()
    try:
        stop = threading.Event()
        clients = [TenantClient(proxy.port, idle.authority, "a", 0.1, stop) for _ in range(20)]
        _run(clients)
        wait_for(lambda: idle.open("a") == 5, 10, "a at its max")
        time.sleep(1)
        _stop(stop, clients)
        assert idle.max_total == 5  # the host is idle otherwise, and a stays at half its cap
    finally:
        idle.close()


def test_no_queue_refuses_a_tenant_over_its_share_with_the_reason(
    make_proxy: Callable[..., ProxyRateLimiter], tenant_upstream: TenantUpstream
) -> None:
    proxy = make_proxy(4, tenant_by="header", tenant_shares={"a": "1:max=50%", "b": "1"}, admin_port=free_port())
    target = tenant_upstream.authority
    held = []
    for _ in range(2):
        sock = socket.create_connection(("127.0.0.1", proxy.port))
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nX-Dprl-Tenant: a\r\n\r\n".encode())
        assert read_head(sock).startswith(b"HTTP/1.1 200")
        sock.sendall(b"a\n")
        held.append(sock)
    sock = socket.create_connection(("127.0.0.1", proxy.port))
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nX-Dprl-Tenant: a\r\n\r\n".encode())
    answer = read_head(sock) + sock.recv(4096)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 500") and b"tenant a holds 2, its max" in answer
    row = requests.get(f"{proxy.admin_url}/hosts/{target}", timeout=10).json()
    assert row["tenants"]["a"] == {"open": 2, "guarantee": 4, "max": 2, "waiting": 0}
    metrics = requests.get(f"{proxy.admin_url}/metrics", timeout=10).text
    assert 'dprl_tenant_connections{tenant="a"} 2.0' in metrics
    assert 'dprl_tenant_refusals_total{reason="tenant_share",tenant="a"} 1.0' in metrics
    for sock in held:
        sock.close()


def _connect_as(port: int, target: str, extra: str = "", source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), source_address=(source, 0))
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{extra}\r\n".encode())
    assert read_head(sock).startswith(b"HTTP/1.1 200")
    return sock


@pytest.mark.parametrize("by", ["user", "client"])
def test_tenant_by_user_and_by_client_group(
    by: str, make_proxy: Callable[..., ProxyRateLimiter], tenant_upstream: TenantUpstream, tmp_path: Path
) -> None:
    settings: dict[str, object] = {"tenant_shares": {"alice": "1:max=50%", "bob": "1"}}
    if by == "user":  # the default with proxy auth
        (tmp_path / "users").write_text("alice:pw1\nbob:pw2\n")
        settings["proxy_auth_file"] = str(tmp_path / "users")
    else:
        settings.update(tenant_by="client", tenant_groups={"alice": ("127.0.0.2/32",), "bob": ("127.0.0.3/32",)})
    proxy = make_proxy(4, **settings)
    target = tenant_upstream.authority

    def who(name: str) -> tuple[str, str]:
        if by == "user":
            token = base64.b64encode(f"{name}:pw{1 if name == 'alice' else 2}".encode()).decode()
            return f"Proxy-Authorization: Basic {token}\r\n", "127.0.0.1"
        return "", "127.0.0.2" if name == "alice" else "127.0.0.3"

    socks = [_connect_as(proxy.port, target, *who("alice")) for _ in range(2)]
    assert proxy.tenant_connections_for_host(target) == {"alice": 2}
    extra, source = who("alice")
    sock = socket.create_connection(("127.0.0.1", proxy.port), source_address=(source, 0))
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{extra}\r\n".encode())
    assert read_head(sock).startswith(b"HTTP/1.1 500")  # alice at her max: half the cap
    sock.close()
    socks += [_connect_as(proxy.port, target, *who("bob")) for _ in range(2)]
    assert proxy.tenant_connections_for_host(target) == {"alice": 2, "bob": 2}
    for sock in socks:
        sock.close()


def test_the_tenant_header_never_reaches_the_upstream(make_proxy: Callable[..., ProxyRateLimiter]) -> None:
    seen: list[bytes] = []

    def answer(conn: socket.socket, index: int) -> None:
        seen.append(read_request_head(conn))
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    origin = RawOrigin(answer)
    proxy = make_proxy(2, tenant_by="header", tenant_shares={"a": "1"})
    try:
        sock = socket.create_connection(("127.0.0.1", proxy.port))
        sock.sendall(
            f"GET http://{origin.authority}/x HTTP/1.1\r\nHost: {origin.authority}\r\n"
            "X-Dprl-Tenant: a\r\nx-dprl-tenant: b\r\nConnection: close\r\n\r\n".encode()
        )
        assert read_head(sock).startswith(b"HTTP/1.1 200")
        sock.close()
    finally:
        origin.close()
    assert seen and b"x-dprl-tenant" not in seen[0].lower()


def _redis_workers(
    count: int, redis_server: RedisServer, prefix: str, cap: int, **settings: object
) -> list[DistributedProxyRateLimiter]:
    """``count`` proxies in this process sharing one Redis, tenants named by header."""
    settings = dict(redis_url=redis_server.url, redis_prefix=prefix, tenant_by="header", **settings) | dict(
        lease_ttl=2.0, connect_timeout=2.0, shutdown_timeout=2.0
    )
    return [DistributedProxyRateLimiter(port=0, max_connections_per_host=cap, **settings).start() for _ in range(count)]


def test_a_tenants_max_holds_fleet_wide(
    redis_server: RedisServer, redis_prefix: str, tenant_upstream: TenantUpstream
) -> None:
    workers = _redis_workers(3, redis_server, redis_prefix, 6, tenant_shares={"a": "1:max=50%", "b": "1"})
    target = tenant_upstream.authority
    try:
        # tenant a spread over two workers: 3 fleet-wide is its max, wherever it asks
        socks = [_connect_as(workers[i % 2].port, target, "X-Dprl-Tenant: a\r\n") for i in range(3)]
        for sock in socks:
            sock.sendall(b"a\n")
        sock = socket.create_connection(("127.0.0.1", workers[2].port))
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nX-Dprl-Tenant: a\r\n\r\n".encode())
        assert read_head(sock).startswith(b"HTTP/1.1 500")
        sock.close()
        b_socks = [_connect_as(workers[2].port, target, "X-Dprl-Tenant: b\r\n") for _ in range(3)]
        assert tenant_upstream.max_total <= 6
        assert workers[2].tenant_connections_for_host(target) == {"a": 3, "b": 3}
        for sock in socks + b_socks:
            sock.close()
        wait_for(lambda: all(not w.limiter.process_counts() for w in workers), 5, "every slot back")
    finally:
        for worker in workers:
            worker.stop(timeout=2)


def _rate_split(proxy_urls: dict[str, list[str]], seconds: float) -> tuple[ArrivalUpstream, int, int]:
    """Plain GETs from tenants a and b in a loop (two sessions each, over ``proxy_urls[t]``)
    for ``seconds``: the upstream's arrivals, and a's and b's requests past the first second."""
    origin = ArrivalUpstream()
    stop = threading.Event()

    def load(tenant: str, proxy_url: str) -> None:
        with requests.Session() as session:  # kept alive: the later requests are paced, not admitted
            session.proxies = {"http": proxy_url}
            while not stop.is_set():
                session.get(f"http://{origin.authority}/{tenant}", headers={"X-Dprl-Tenant": tenant}, timeout=10)

    threads = [
        threading.Thread(target=load, args=(t, url), daemon=True) for t, urls in proxy_urls.items() for url in urls
    ]
    try:
        for thread in threads:
            thread.start()
        time.sleep(seconds)
        stop.set()
        for thread in threads:
            thread.join(15)
    finally:
        origin.close()
    arrivals = list(zip(origin.arrivals, origin.paths, strict=True))
    start, end = arrivals[0][0] + 1.0, arrivals[-1][0]
    steady = [path for moment, path in arrivals if start <= moment <= end]
    a, b = steady.count("/a"), steady.count("/b")
    print(f"over {end - start:.1f}s: a {a}, b {b} requests")
    return origin, a, b


def test_a_hosts_rate_is_split_by_weight_between_active_tenants(make_proxy: Callable[..., ProxyRateLimiter]) -> None:
    proxy = make_proxy(10, queue_timeout=5, max_rate="20/s", tenant_by="header", tenant_shares={"a": "3", "b": "1"})
    origin, a, b = _rate_split({"a": [proxy.proxy_url] * 2, "b": [proxy.proxy_url] * 2}, 4)
    assert origin.most_in_any_window(1.0) <= 1 + 20  # the host's rate holds for both together
    assert 0.65 <= a / (a + b) <= 0.85, (a, b)  # 3 : 1 of the rate while both are active


def test_a_hosts_rate_is_split_by_weight_fleet_wide(redis_server: RedisServer, redis_prefix: str) -> None:
    """Each tenant's part of the rate is kept in Redis: a and b each spread over both workers."""
    shares = {"a": "3", "b": "1"}
    workers = _redis_workers(2, redis_server, redis_prefix, 10, tenant_shares=shares, queue_timeout=5, max_rate="20/s")
    try:
        urls = [worker.proxy_url for worker in workers]
        origin, a, b = _rate_split({"a": urls, "b": urls}, 4)
    finally:
        for worker in workers:
            worker.stop(timeout=2)
    assert origin.most_in_any_window(1.0) <= 1 + 20
    assert 0.65 <= a / (a + b) <= 0.85, (a, b)


@pytest.fixture
def tenant_fleet(redis_server: RedisServer, redis_prefix: str) -> Iterator[list[ProxyProcess]]:
    """Three ``python -m dprl`` workers on one Redis: cap 6 per host, tenants by header of
    equal weight, a queue of 10 s, leases of 1.5 s."""
    workers = [
        ProxyProcess(
            *("--redis-url", redis_server.url, "--redis-prefix", redis_prefix, "--max-connections", "6"),
            *("--tenant-by", "header", "--tenant-share", "a=1", "--tenant-share", "b=1"),
            *("--queue-timeout", "10", "--lease-ttl", str(LEASE)),
        )
        for _ in range(3)
    ]
    yield workers
    for worker in workers:
        worker.stop(timeout=30)


LEASE = 1.5


class Contention(NamedTuple):
    """What tenant b (3 clients) saw against tenant a's many, as the upstream counted it."""

    waits: list[float]  # b's waits for a slot
    share_a: float  # a's open connections on average while b was active
    refused: int  # connections of either refused


def _contend(
    ports: list[int], upstream: TenantUpstream, cap: int, a_clients: int, midway: Callable[[], None] = lambda: None
) -> Contention:
    """a's clients (spread over ``ports``) fill the idle cap, then b's 3 join for 4 s (``midway``
    runs after 2 s); each holds its tunnel 200 ms in a loop."""
    target = upstream.authority
    stop = threading.Event()
    a = [TenantClient(ports[i % len(ports)], target, "a", 0.2, stop) for i in range(a_clients)]
    b = [TenantClient(ports[i % len(ports)], target, "b", 0.2, stop) for i in range(3)]
    _run(a)
    wait_for(lambda: upstream.open("a") == cap, 10, "tenant a holding the whole idle cap")
    _run(b)
    started = time.monotonic()
    time.sleep(2)
    midway()
    time.sleep(2)
    ended = time.monotonic()
    _stop(stop, a + b)
    waits = [w for client in b for w in client.waits]
    share_a = upstream.average("a", started + 0.5, ended)
    print(
        f"b: {len(waits)} connections, wait p50 {percentile(waits, 0.5) * 1000:.0f} ms, "
        f"p99 {percentile(waits, 0.99) * 1000:.0f} ms; a: {share_a:.2f} open on average"
    )
    return Contention(waits, share_a, sum(len(client.refused) for client in a + b))


def test_three_redis_workers_under_load_keep_the_cap_and_the_fair_order(
    tenant_fleet: list[ProxyProcess], tenant_upstream: TenantUpstream
) -> None:
    """Tenants spread over three worker processes: a runs 30 clients, b 3, each holding
    200 ms. The upstream never sees more than the cap, and b, owed 3 of 6, gets a slot
    within about one hold time while a keeps the rest busy."""
    seen = _contend([worker.port for worker in tenant_fleet], tenant_upstream, 6, 30)
    assert tenant_upstream.max_total <= 6
    assert percentile(seen.waits, 0.99) <= 0.5, "b waited past its guarantee"
    assert seen.share_a >= 2.5, "a kept the slots b did not need"
    assert not seen.refused, "no refusal within a 10 s queue timeout"


def test_a_killed_workers_tenant_slots_come_back_within_the_lease(
    tenant_fleet: list[ProxyProcess], tenant_upstream: TenantUpstream
) -> None:
    """A worker holding the whole cap (3 slots of a, 3 of b) is SIGKILLed: a waiter of b at
    another worker is admitted once the dead worker's lease has expired, not before, and
    not much after; the tenants' counts in Redis come back with the host's."""
    dying, survivor, _ = tenant_fleet
    target = tenant_upstream.authority
    held = [_connect_as(dying.port, target, f"X-Dprl-Tenant: {t}\r\n") for t in "aaabbb"]
    for sock, tenant in zip(held, "aaabbb", strict=True):
        sock.sendall(f"{tenant}\n".encode())
    wait_for(lambda: tenant_upstream.open("a") == tenant_upstream.open("b") == 3, 5, "the cap held by one worker")
    dying.proc.send_signal(signal.SIGKILL)
    dying.proc.wait()
    killed = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", survivor.port))
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nX-Dprl-Tenant: b\r\n\r\n".encode())
    assert read_head(sock).startswith(b"HTTP/1.1 200")
    elapsed = time.monotonic() - killed
    print(f"b's slot back {elapsed:.2f}s after the kill (lease {LEASE}s)")
    # the lease was renewed at most lease/3 before the kill: it cannot expire sooner
    assert LEASE * 2 / 3 - 0.1 <= elapsed <= LEASE + 1.0
    sock.close()
    for held_sock in held:
        held_sock.close()
    # redis_prefix's check after the test: no count of the host or of a tenant is left


def test_workers_share_the_tenants_counts_in_the_machines_table(tenant_upstream: TenantUpstream) -> None:
    """--workers 2 in local mode: each tenant's count and first waiters are in the shared
    table, so the fair order holds for the machine whichever worker a client reaches."""
    admin = free_port()
    proc = ProxyProcess(
        *("--workers", "2", "--max-connections", "10", "--queue-timeout", "10", "--shutdown-timeout", "2"),
        *("--tenant-by", "header", "--tenant-share", "a=1", "--tenant-share", "b=1", "--admin-port", str(admin)),
    )
    pages: dict[str, object] = {}

    def read_the_pages() -> None:  # the machine's counts once (each worker reads them from the table)
        target = tenant_upstream.authority
        pages["hosts"] = requests.get(f"http://127.0.0.1:{admin}/hosts/{target}", timeout=5).json()["tenants"]
        pages["metrics"] = requests.get(f"http://127.0.0.1:{admin}/metrics", timeout=5).text

    try:
        seen = _contend([proc.port], tenant_upstream, 10, 40, read_the_pages)
    finally:
        assert proc.stop(timeout=30) == 0
    assert tenant_upstream.max_total <= 10
    assert percentile(seen.waits, 0.99) <= 0.5, "b waited past its guarantee"
    assert seen.share_a >= 6, "a kept the slots b did not need"
    assert not seen.refused
    shown, metrics = pages["hosts"], str(pages["metrics"])
    assert isinstance(shown, dict) and shown["a"]["guarantee"] == shown["b"]["guarantee"] == 5
    assert shown["a"]["max"] == 10
    assert 5 <= shown["a"]["open"] <= 10 and shown["a"]["open"] + shown["b"]["open"] <= 10, shown
    gauges = {t: float(v) for t, v in re.findall(r'^dprl_tenant_connections\{tenant="(\w+)"\} (\S+)$', metrics, re.M)}
    assert 5 <= gauges["a"] <= 10 and gauges.get("b", 0) <= 10, gauges  # each worker's reading is shown once


@pytest.mark.parametrize("mode", ["local", "redis"])
def test_a_tenant_over_its_guarantee_is_refused_at_once_when_its_turn_would_come_too_late(
    mode: str,
    request: pytest.FixtureRequest,
    make_proxy: Callable[..., ProxyRateLimiter],
    tenant_upstream: TenantUpstream,
) -> None:
    """Cap 4, --queue-timeout 0.8, a and b of equal weight; a's connections have lasted 1.5 s.
    With a holding 3 and b 1, and 2 of b's waiting (b is below its guarantee of 2), a's next
    arrival would get its turn only after 3 of the 4 open connections close (about 1.1 s):
    refused at once with the reason, not queued to time out. b's waiters are queued, and
    admitted as a's connections close."""
    settings: dict[str, object] = dict(queue_timeout=0.8, tenant_shares={"a": "1", "b": "1"}, admin_port=free_port())
    if mode == "redis":
        redis_server = request.getfixturevalue("redis_server")
        (proxy,) = _redis_workers(1, redis_server, request.getfixturevalue("redis_prefix"), 4, **settings)
        request.addfinalizer(lambda: proxy.stop(timeout=2))
    else:
        proxy = make_proxy(4, tenant_by="header", **settings)
    target = tenant_upstream.authority
    for _ in range(2):  # the host's recent lifetimes: 8 connections of 1.5 s
        held = [_connect_as(proxy.port, target, "X-Dprl-Tenant: a\r\n") for _ in range(4)]
        time.sleep(1.5)  # the lifetime under test
        for sock in held:
            sock.close()
        wait_for(lambda: not proxy.limiter.process_counts(), 5, "a's slots back")
    held = [_connect_as(proxy.port, target, f"X-Dprl-Tenant: {t}\r\n") for t in "aaab"]
    waiting = []
    for _ in range(2):
        sock = socket.create_connection(("127.0.0.1", proxy.port))
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nX-Dprl-Tenant: b\r\n\r\n".encode())
        waiting.append(sock)
    wait_for(lambda: proxy.limiter.waiting_counts().get(target) == 2, 5, "b's two waiting")
    sock = socket.create_connection(("127.0.0.1", proxy.port))
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nX-Dprl-Tenant: a\r\n\r\n".encode())
    answer = read_head(sock) + sock.recv(4096)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 500"), answer
    assert b"2 waiting connection(s) of tenants below theirs go first" in answer, answer
    assert b"after --queue-timeout 0.8s" in answer, answer
    metrics = requests.get(f"{proxy.admin_url}/metrics", timeout=10).text
    assert 'dprl_tenant_refusals_total{reason="tenant_share",tenant="a"} 1.0' in metrics
    for sock in held:
        sock.close()
    for sock in waiting:
        assert read_head(sock).startswith(b"HTTP/1.1 200")
        sock.close()
