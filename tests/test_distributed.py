"""Distributed mode: fleet-wide caps through a real redis-server, under crashes and faults."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from dprl import DistributedProxyRateLimiter

from .conftest import proxy_connect, read_head, wait_for
from .proxy_process import ProxyProcess


class _Port:
    def __init__(self, port: int) -> None:
        self.port = port


@pytest.fixture
def fleet(redis_server, redis_prefix) -> Iterator[Callable[..., list[ProxyProcess]]]:
    """Start ``python -m dprl`` workers sharing the test's Redis and key prefix."""
    started: list[ProxyProcess] = []

    def start(count: int, *args: str) -> list[ProxyProcess]:
        procs = [
            ProxyProcess("--redis-url", redis_server.url, "--redis-prefix", redis_prefix, *args) for _ in range(count)
        ]
        started.extend(procs)
        return procs

    yield start
    for proc in started:
        proc.stop(timeout=30)


def _connect_status(port: int, target: str) -> tuple[socket.socket, int]:
    sock, head = proxy_connect(_Port(port), target)
    return sock, int(head.split(b" ")[1])


def _counts(redis_server, prefix: str, host: str) -> dict[bytes, bytes]:
    client = redis_server.client()
    try:
        return client.hgetall(f"{prefix}:{{{host}}}:counts")
    finally:
        client.close()


def test_fleet_cap_holds_for_connect_across_three_processes(fleet, upstream):
    workers = fleet(3, "--max-connections", "3")
    target = f"127.0.0.1:{upstream.port}"
    with ThreadPoolExecutor(30) as pool:
        opened = list(pool.map(lambda i: _connect_status(workers[i % 3].port, target), range(30)))
    statuses = sorted(status for _, status in opened)
    assert statuses == [200] * 3 + [500] * 27, statuses
    tunnels = [sock for sock, status in opened if status == 200]
    for sock in tunnels:
        sock.sendall(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
    upstream.wait_active(3)
    upstream.release()
    for sock in tunnels:
        assert read_head(sock).startswith(b"HTTP/1.1 200")
    for sock, _ in opened:
        sock.close()
    assert upstream.max_active == 3, f"upstream saw {upstream.max_active} concurrent connections, fleet cap is 3"


def test_fleet_cap_holds_for_plain_http(fleet, upstream):
    workers = fleet(3, "--max-connections", "3")
    url = f"http://127.0.0.1:{upstream.port}/hold"

    def get(i: int) -> int:
        proxy = workers[i % 3].url
        return requests.get(url, proxies={"http": proxy}, headers={"Connection": "close"}, timeout=30).status_code

    with ThreadPoolExecutor(30) as pool:
        futures = [pool.submit(get, i) for i in range(30)]
        upstream.wait_active(3)
        wait_for(lambda: sum(f.done() for f in futures) == 27, what="27 refusals")
        upstream.release()
        statuses = sorted(f.result() for f in futures)
    assert statuses == [200] * 3 + [500] * 27, statuses
    assert upstream.max_active == 3


def test_killed_worker_slots_come_back_within_lease_ttl(fleet, upstream):
    lease = 1.5
    dying, survivor = fleet(2, "--max-connections", "2", "--lease-ttl", str(lease))
    target = f"127.0.0.1:{upstream.port}"
    held = [_connect_status(dying.port, target) for _ in range(2)]
    assert [status for _, status in held] == [200, 200]
    dying.proc.send_signal(signal.SIGKILL)
    dying.proc.wait()
    killed = time.monotonic()
    sock, status = _connect_status(survivor.port, target)
    sock.close()
    assert status == 500, "the dead worker's slots were free before its lease expired"
    while True:
        sock, status = _connect_status(survivor.port, target)
        sock.close()
        elapsed = time.monotonic() - killed
        if status == 200:
            break
        assert elapsed < lease + 1, f"slots still taken {elapsed:.2f}s after the kill (lease {lease}s)"
        time.sleep(0.05)
    # the lease was renewed at most lease/3 before the kill, so it cannot expire sooner
    assert elapsed >= lease * 2 / 3 - 0.1, f"slots came back after {elapsed:.2f}s, before the lease could expire"
    for sock, _ in held:
        sock.close()


def test_tunnel_older_than_three_lease_ttls_keeps_its_slot(fleet, echo_server):
    lease = 0.6
    holder, other = fleet(2, "--max-connections", "1", "--lease-ttl", str(lease))
    target = f"127.0.0.1:{echo_server.port}"
    tunnel, status = _connect_status(holder.port, target)
    assert status == 200
    deadline = time.monotonic() + 3 * lease + 0.3
    while time.monotonic() < deadline:  # the passage of time is what is under test here
        sock, status = _connect_status(other.port, target)
        sock.close()
        assert status == 500, "a live tunnel lost its slot"
        time.sleep(0.1)
    tunnel.sendall(b"still here")
    tunnel.shutdown(socket.SHUT_WR)
    assert tunnel.recv(100) == b"echo:still here"
    tunnel.close()


def test_redis_down_each_policy_answers_fast_then_recovers(fleet, redis_server, redis_prefix, upstream):
    reject, allow, local = (
        fleet(1, "--max-connections", "1", "--on-redis-error", policy, "--lease-ttl", "1")[0]
        for policy in ("reject", "allow", "local")
    )
    target = f"127.0.0.1:{upstream.port}"
    redis_server.kill()
    answers: dict[str, list[int]] = {}
    for name, proc in (("reject", reject), ("allow", allow), ("local", local)):
        statuses = []
        for _ in range(3):
            started = time.monotonic()
            sock, status = _connect_status(proc.port, target)
            assert time.monotonic() - started < 2, f"{name}: admission hung while Redis is down"
            statuses.append((sock, status))
        answers[name] = [status for _, status in statuses]
        for sock, _ in statuses:
            sock.close()
    assert answers["reject"] == [500, 500, 500]
    assert answers["allow"] == [200, 200, 200]
    assert answers["local"] == [200, 500, 500]
    assert len(reject.matching("Redis unavailable")) == 1, "health change logged more than once"
    redis_server.start()
    wait_for(lambda: _connect_status(reject.port, target)[1] == 200, timeout=5, what="reject worker recovering")
    reject.wait_line("Redis available again")


def test_redis_restarted_empty_recounts_open_tunnels_within_one_refresh(fleet, redis_server, redis_prefix, upstream):
    lease = 1.5
    holder, other = fleet(2, "--max-connections", "2", "--lease-ttl", str(lease))
    target = f"127.0.0.1:{upstream.port}"
    tunnels = [_connect_status(holder.port, target) for _ in range(2)]
    assert [status for _, status in tunnels] == [200, 200]
    redis_server.restart()
    restarted = time.monotonic()
    wait_for(
        lambda: sum(int(v) for v in _counts(redis_server, redis_prefix, target).values()) == 2,
        timeout=lease / 3 + 1.5,
        what="the open tunnels counted again after the restart",
    )
    assert time.monotonic() - restarted <= lease / 3 + 1.5
    sock, status = _connect_status(other.port, target)
    sock.close()
    assert status == 500, "cap not enforced after Redis came back empty"
    for sock, _ in tunnels:
        sock.close()


def test_graceful_stop_removes_this_workers_counts(fleet, redis_server, redis_prefix, upstream):
    (worker,) = fleet(1, "--max-connections", "5", "--shutdown-timeout", "0.3")
    target = f"127.0.0.1:{upstream.port}"
    sock, status = _connect_status(worker.port, target)
    assert status == 200
    assert _counts(redis_server, redis_prefix, target)
    assert worker.stop() == 0
    assert _counts(redis_server, redis_prefix, target) == {}
    sock.close()


def test_library_active_connections_is_fleet_wide(redis_server, redis_prefix, upstream):
    settings = {"redis_prefix": redis_prefix, "lease_ttl": 3, "shutdown_timeout": 1}
    with (
        DistributedProxyRateLimiter(0, 10, redis_server.url, **settings) as first,
        DistributedProxyRateLimiter(0, 10, redis_server.url, **settings) as second,
    ):
        target = f"127.0.0.1:{upstream.port}"
        socks = [proxy_connect(first, target)[0], proxy_connect(second, target)[0], proxy_connect(second, target)[0]]
        assert first.active_connections_for_host(target) == 3
        assert second.active_connections_for_host(target) == 3
        assert first.limiter.active_hosts() == {target: 1}
        for sock in socks:
            sock.close()
        wait_for(lambda: first.active_connections_for_host(target) == 0, what="fleet count back to 0")
