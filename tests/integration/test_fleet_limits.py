"""Limits stored in Redis for the whole fleet: `dprl limits`, the library, the admin API.

Every change is measured where it matters: at the counting upstream, through another
worker than the one (or the CLI) that made it.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest
import requests

from dprl import DistributedProxyRateLimiter

from ..support.network import free_port, proxy_connect, wait_for
from ..support.proxy_process import ProxyProcess
from ..support.redis_server import RedisServer, leftover_keys


@pytest.fixture
def own_redis() -> RedisServer:
    server = RedisServer()
    yield server
    server.stop()


def limits_cli(redis: RedisServer, prefix: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dprl", "limits", *args, "--redis-url", redis.url, "--redis-prefix", prefix],
        capture_output=True,
        text=True,
        timeout=30,
    )


def try_connect(port: int, target: str) -> bool:
    """One CONNECT through ``port``: True if admitted (then closed at once)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        return sock.recv(100).startswith(b"HTTP/1.1 200")


def test_a_cli_change_is_enforced_by_another_worker_within_a_second(own_redis, holding) -> None:
    prefix = "dprl_fl_cli"
    args = ("--redis-url", own_redis.url, "--redis-prefix", prefix, "--max-connections", "5", "--lease-ttl", "3")
    workers = [ProxyProcess(*args) for _ in range(2)]
    target = f"127.0.0.1:{holding.port}"
    try:
        held = []
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", workers[1].port))
            sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            assert sock.recv(100).startswith(b"HTTP/1.1 200")
            held.append(sock)
        holding.wait_active(3)
        done = limits_cli(own_redis, prefix, "set", target, "2")
        changed = time.monotonic()
        assert done.returncode == 0 and done.stdout.startswith(f"{target} = 2"), done.stderr
        while try_connect(workers[1].port, target):  # admitted only until the change arrives
            assert time.monotonic() - changed < 1.0, "the other worker still admits after 1 s"
            holding.wait_active(3)
        assert holding.max_active <= 4  # 3 held, and at most one probe before the change landed
        workers[0].wait_line(rf"fleet limit changed by \S+: {target}=2 \(version 1\)")
        for sock in held:
            sock.close()
        holding.wait_active(0)  # the upstream sees the closes before the releases reach Redis
        counts = own_redis.client()
        wait_for(lambda: not counts.hgetall(f"{prefix}:{{{target}}}:counts"), what="the releases in Redis")
        assert [try_connect(workers[0].port, target) for _ in range(1)] == [True]
        listed = limits_cli(own_redis, prefix, "list")
        assert listed.stdout.splitlines()[:2] == [f"{target} = 2", "default = none (each process its own)"]
        assert limits_cli(own_redis, prefix, "get", target).stdout.strip() == f"{target} = 2"
        assert limits_cli(own_redis, prefix, "rm", target).returncode == 0
        assert limits_cli(own_redis, prefix, "default", "7").returncode == 0
        assert limits_cli(own_redis, prefix, "get", "other.test").stdout.strip() == "other.test = 7"
        bad = limits_cli(own_redis, prefix, "set", target, "many")
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    finally:
        for worker in workers:
            assert worker.stop() == 0


def test_lowering_under_load_never_exceeds_the_old_count_and_converges(own_redis, holding) -> None:
    prefix = "dprl_fl_load"
    args = ("--redis-url", own_redis.url, "--redis-prefix", prefix, "--max-connections", "6", "--lease-ttl", "3")
    workers = [ProxyProcess(*args) for _ in range(2)]
    target = f"127.0.0.1:{holding.port}"
    stop = threading.Event()

    def load(port: int) -> None:
        while not stop.is_set():
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
                if sock.recv(100).startswith(b"HTTP/1.1 200"):
                    time.sleep(0.05)
                else:
                    time.sleep(0.01)

    threads = [threading.Thread(target=load, args=(workers[i % 2].port,)) for i in range(12)]
    try:
        for thread in threads:
            thread.start()
        wait_for(lambda: holding.max_active == 6, what="the load at the old cap")
        assert limits_cli(own_redis, prefix, "set", target, "2").returncode == 0
        time.sleep(1.5)  # the change everywhere (< 1 s), and every connection from before it closed (50 ms)
        settled = time.monotonic()
        time.sleep(1.0)
        stop.set()
        for thread in threads:
            thread.join(10)
        assert holding.max_active == 6  # never above max(old open count, new cap)
        after = [active for moment, active in holding.events if moment >= settled]
        assert after and max(after) <= 2, max(after)
    finally:
        stop.set()
        for worker in workers:
            assert worker.stop() == 0
    # the stored limits stay (they are configuration); no count, lease or queue does
    assert [key for key in leftover_keys(own_redis.client(), prefix) if b":{limits}:" not in key] == []


def test_patterns_stored_in_redis_apply_fleet_wide(own_redis, holding) -> None:
    port = holding.port
    settings = {
        "redis_prefix": "dprl_fl_pat",
        "lease_ttl": 3,
        "resolver": lambda name, p: [(socket.AF_INET, ("127.0.0.1", p))],
    }
    with (
        DistributedProxyRateLimiter(0, 10, own_redis.url, **settings) as one,
        DistributedProxyRateLimiter(0, 10, own_redis.url, **settings) as two,
    ):
        one.set_fleet_limit(f"*.api.test:{port}", 1)
        wait_for(lambda: two.limits.limit_for(f"a.api.test:{port}") == 1, timeout=1, what="the pattern on two")
        first, head = proxy_connect(two, f"a.api.test:{port}")
        assert head.startswith(b"HTTP/1.1 200")
        second, head = proxy_connect(one, f"a.api.test:{port}")
        assert head.startswith(b"HTTP/1.1 500")  # fleet-wide: one's refusal counts two's connection
        third, head = proxy_connect(one, f"b.api.test:{port}")
        assert head.startswith(b"HTTP/1.1 200")  # each host its own cap
        assert two.fleet_limits() == {f"*.api.test:{port}": 1}
        one.set_fleet_default_limit(1)
        wait_for(lambda: two.limits.limit_for("c.test") == 1, timeout=1, what="the default on two")
        one.set_fleet_default_limit(None)
        one.remove_fleet_limit(f"*.api.test:{port}")
        wait_for(lambda: two.limits.limit_for(f"a.api.test:{port}") == 10, timeout=1, what="removed on two")
        for sock in (first, second, third):
            sock.close()


def test_admin_writes_need_the_token_when_one_is_set(own_redis, make_proxy) -> None:
    admin_port = free_port()
    proxy = make_proxy(
        4, redis_url=own_redis.url, redis_prefix="dprl_fl_admin", admin_port=admin_port, admin_token="s3cret"
    )
    other = DistributedProxyRateLimiter(0, 4, own_redis.url, redis_prefix="dprl_fl_admin").start()
    try:
        url = f"{proxy.admin_url}/limits/api.example.com"
        assert requests.put(url, data="3", timeout=5).status_code == 403
        assert requests.put(url, data="3", headers={"Authorization": "Bearer nope"}, timeout=5).status_code == 403
        good = {"Authorization": "Bearer s3cret"}
        answer = requests.put(url, data="3", headers=good, timeout=5)
        assert answer.status_code == 200 and answer.json() == {"host": "api.example.com", "limit": 3}
        wait_for(lambda: other.limits.limit_for("api.example.com") == 3, timeout=1, what="the other worker")
        assert requests.put(url, data="x", headers=good, timeout=5).status_code == 400
        listing = requests.get(f"{proxy.admin_url}/limits", timeout=5).json()
        assert listing["fleet"] == {
            "default": None,
            "limits": {"api.example.com": 3},
            "default_rate": None,
            "rates": {},
        }
        assert listing["process"] == {"default": 4, "limits": {}, "default_rate": None, "rates": {}}
        assert listing["default"] == 4
        assert requests.delete(url, headers=good, timeout=5).status_code == 200
        wait_for(lambda: other.limits.limit_for("api.example.com") == 4, timeout=1, what="removed")
    finally:
        other.stop()


def test_admin_writes_without_a_token_in_local_mode(make_proxy) -> None:
    proxy = make_proxy(4, admin_port=free_port())
    answer = requests.put(f"{proxy.admin_url}/limits/*.example.com", data="2", timeout=5)
    assert answer.status_code == 200 and answer.json() == {"host": "*.example.com", "limit": 2}
    assert proxy.limits.limit_for("a.example.com") == 2
    assert requests.get(f"{proxy.admin_url}/limits", timeout=5).json()["process"]["limits"] == {"*.example.com": 2}
    assert requests.delete(f"{proxy.admin_url}/limits/*.example.com", timeout=5).status_code == 200
    assert proxy.limits.limit_for("a.example.com") == 4
    assert requests.post(f"{proxy.admin_url}/limits/a.test", timeout=5).status_code == 405
