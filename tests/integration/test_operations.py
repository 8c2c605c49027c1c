"""Operations: the admin listener (/metrics, /healthz, /readyz, /hosts), `dprl status`,
structured and access logs, and refusals that tell clients when to come back.

Every counter is checked against what the clients of a scripted load saw; the exposition
is parsed with prometheus_client's own parser.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from dprl import DistributedProxyRateLimiter, ProxyRateLimiter

from ..support.network import free_port, proxy_connect, raw_request, wait_for
from ..support.proxy_process import ProxyProcess, run_dprl
from ..support.redis_server import RedisServer, leftover_keys
from ..support.upstream import HoldingServer


def scrape(proxy: ProxyRateLimiter) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics as {(name, sorted labels): value}."""
    response = requests.get(f"{proxy.admin_url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def sample(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def series(samples: dict, name: str) -> dict[tuple, float]:
    return {labels: value for (n, labels), value in samples.items() if n == name}


@pytest.fixture
def admin_proxy(make_proxy: Callable[..., ProxyRateLimiter]) -> Callable[..., ProxyRateLimiter]:
    def make(limit: int = 0, **settings: object) -> ProxyRateLimiter:
        return make_proxy(limit, admin_port=free_port(), **settings)

    return make


def closed_port() -> int:
    """A loopback port nothing listens on (a dial there is refused at once)."""
    return free_port()


# /metrics --------------------------------------------------------------------------------
def test_counters_match_what_clients_saw(admin_proxy, holding: HoldingServer) -> None:
    proxy = admin_proxy(2, connect_ports="1-65535", proxy_auth="", deny_destinations="169.254.0.0/16")
    target = f"127.0.0.1:{holding.port}"
    held = [proxy_connect(proxy, target) for _ in range(2)]
    assert all(head.startswith(b"HTTP/1.1 200") for _, head in held)
    refused = [proxy_connect(proxy, target) for _ in range(3)]
    assert all(head.startswith(b"HTTP/1.1 500") for _, head in refused)
    for sock, _ in refused:
        sock.close()
    bad = raw_request(proxy.port, b"GET /not-absolute HTTP/1.1\r\nHost: a\r\n\r\n")
    assert bad.startswith(b"HTTP/1.1 400")
    dead = closed_port()
    unreachable = raw_request(proxy.port, f"GET http://127.0.0.1:{dead}/ HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert unreachable.startswith(b"HTTP/1.1 502")
    denied = raw_request(proxy.port, b"CONNECT 169.254.1.1:443 HTTP/1.1\r\nHost: 169.254.1.1:443\r\n\r\n")
    assert denied.startswith(b"HTTP/1.1 403")
    holding.wait_active(2)

    samples = scrape(proxy)
    assert sample(samples, "dprl_upstream_connections", host=target) == 2
    assert sample(samples, "dprl_upstream_connections_limit", host=target) == 2
    assert sample(samples, "dprl_upstream_connections_opened_total", host=target) == 2
    assert sample(samples, "dprl_refusals_total", host=target, reason="limit") == 3
    assert sample(samples, "dprl_refusals_total", host="_none", reason="bad_request") == 1
    assert sample(samples, "dprl_refusals_total", host=f"127.0.0.1:{dead}", reason="upstream_error") == 1
    assert sample(samples, "dprl_refusals_total", host="169.254.1.1", reason="access") == 1
    assert sample(samples, "dprl_client_connections") == 2
    assert sample(samples, "dprl_build_info", mode="local", version=__import__("dprl").__version__) == 1
    assert sample(samples, "dprl_upstream_connect_seconds_count") == 2
    assert sample(samples, "process_resident_memory_bytes") > 0
    assert sample(samples, "dprl_redis_up") is None  # local mode: no Redis series

    for sock, _ in held:
        sock.sendall(b"x" * 1000)
    holding.wait_active(2)
    for sock, _ in held:
        sock.close()
    holding.wait_active(0)
    wait_for(lambda: not proxy.limiter.process_counts(), what="slots back")
    samples = scrape(proxy)
    assert sample(samples, "dprl_upstream_connections", host=target) == 0
    assert sample(samples, "dprl_tunnel_bytes_total", direction="to_upstream") == 2000
    assert sample(samples, "dprl_client_connections") == 0


def test_auth_and_timeout_refusals_are_labelled(admin_proxy) -> None:
    proxy = admin_proxy(header_timeout=0.3, proxy_auth="user:secret")
    answer = raw_request(proxy.port, b"GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 407")
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.sendall(b"GET http://127.0.0.1:1/ HTTP/1.1\r\n")  # never finished
        assert sock.recv(100).startswith(b"HTTP/1.1 408")
    samples = scrape(proxy)
    assert sample(samples, "dprl_refusals_total", host="_none", reason="auth") == 1
    assert sample(samples, "dprl_refusals_total", host="_none", reason="timeout") == 1


def test_host_series_are_bounded_and_counters_folded(admin_proxy, holding: HoldingServer) -> None:
    proxy = admin_proxy(metrics_max_hosts=5, host_limits={"pinned.example": 7})
    # 20 distinct hosts, each refused at the dial (127.0.0.0/8 is all loopback; nothing on port 9)
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        for i in range(20):
            sock.sendall(f"GET http://127.0.1.{i + 1}:9/ HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert sock.recv(4096).startswith(b"HTTP/1.1 502")
    held, head = proxy_connect(proxy, f"127.0.0.1:{holding.port}")
    assert head.startswith(b"HTTP/1.1 200")
    samples = scrape(proxy)
    held.close()
    refusals = series(samples, "dprl_refusals_total")
    hosts = {dict(labels)["host"] for labels in refusals}
    assert len(hosts - {"_other"}) <= 5 and "_other" in hosts
    assert sum(refusals.values()) == 20  # nothing lost in the folding
    folded = sample(samples, "dprl_metrics_hosts_folded_total")
    assert folded == 20 + 1 - 5  # 21 hosts seen (20 and the tunnel's), 5 keep their own series
    # the configured host always has its gauges; the busy one too
    assert sample(samples, "dprl_upstream_connections_limit", host="pinned.example") == 7
    assert sample(samples, "dprl_upstream_connections", host=f"127.0.0.1:{holding.port}") == 1


def test_memory_does_not_grow_with_distinct_hosts(admin_proxy) -> None:
    """50,000 distinct destination hosts: the proxy keeps counters for --metrics-max-hosts of them."""
    proxy = admin_proxy(metrics_max_hosts=100)
    total = 50_000
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        reader = sock.makefile("rb")

        def send() -> None:
            for i in range(total):
                a, b = divmod(i, 250)
                sock.sendall(f"GET http://127.1.{a}.{b + 1}:9/ HTTP/1.1\r\nHost: x\r\n\r\n".encode())

        sender = threading.Thread(target=send)
        sender.start()
        for _ in range(total):
            line = reader.readline()
            assert line.startswith(b"HTTP/1.1 502"), line
            length = 0
            while (line := reader.readline()) != b"\r\n":
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            reader.read(length)
        sender.join()
    stats = proxy.limiter.stats
    assert len(stats.hosts) + len(stats.pinned_hosts) <= 100
    assert stats.folded == total - 100
    samples = scrape(proxy)
    assert sum(series(samples, "dprl_refusals_total").values()) == total
    assert not proxy.limiter.process_counts()
    document = requests.get(f"{proxy.admin_url}/hosts", timeout=10).json()
    assert document["hosts"] == []  # none with a limit or an open connection


# probes, /hosts, status ---------------------------------------------------------------------
def test_health_hosts_and_not_through_the_proxy_port(admin_proxy, holding: HoldingServer) -> None:
    proxy = admin_proxy(3, host_limits={"api.example.com": 9})
    assert requests.get(f"{proxy.admin_url}/healthz", timeout=5).status_code == 200
    ready = requests.get(f"{proxy.admin_url}/readyz", timeout=5)
    assert (ready.status_code, ready.text) == (200, "ready\n")
    held, _ = proxy_connect(proxy, f"127.0.0.1:{holding.port}")
    key = f"127.0.0.1:{holding.port}"
    document = requests.get(f"{proxy.admin_url}/hosts", timeout=5).json()
    assert document["mode"] == "local" and document["default_limit"] == 3
    assert document["hosts"] == [
        {"host": key, "limit": 3, "open": 1, "waiting": 0, "refused_last_minute": 0, "limit_from": "default"},
        {
            "host": "api.example.com",
            "limit": 9,
            "open": 0,
            "waiting": 0,
            "refused_last_minute": 0,
            "limit_from": "api.example.com",
        },
    ]
    one = requests.get(f"{proxy.admin_url}/hosts/API.example.com:443", timeout=5).json()
    assert one == document["hosts"][1]
    assert requests.get(f"{proxy.admin_url}/hosts/a%20b", timeout=5).status_code == 400
    assert requests.get(f"{proxy.admin_url}/nothing", timeout=5).status_code == 404
    assert requests.post(f"{proxy.admin_url}/metrics", timeout=5).status_code == 405

    # the admin paths are not served by the proxy port
    for path in (b"/metrics", b"/healthz"):
        answer = raw_request(proxy.port, b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400"), answer[:80]

    status = run_dprl("status", "--admin", proxy.admin_url)
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0].split() == ["HOST", "OPEN", "LIMIT", "USE", "REFUSED/MIN"]
    assert lines[1].split() == [key, "1", "3", "33%", "0"]
    assert lines[2].split() == ["api.example.com", "0", "9", "0%", "0"]
    held.close()


def test_readyz_is_503_while_draining(admin_proxy, holding: HoldingServer) -> None:
    proxy = admin_proxy(shutdown_timeout=10)
    held, _ = proxy_connect(proxy, f"127.0.0.1:{holding.port}")
    holding.wait_active(1)
    admin = proxy.admin_url
    stopper = threading.Thread(target=proxy.stop, kwargs={"timeout": 10})
    stopper.start()
    wait_for(lambda: requests.get(f"{admin}/readyz", timeout=5).status_code == 503, what="readyz 503")
    answer = requests.get(f"{admin}/readyz", timeout=5)
    assert answer.text == "not ready: shutting down\n"
    assert stopper.is_alive()  # the tunnel is still being served
    held.close()
    stopper.join(15)
    assert not stopper.is_alive()


def test_cli_admin_port_in_use_is_one_line_and_exit_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        for args in (["--admin-port", str(port)], ["--port", str(port)]):
            run = subprocess.run(
                [sys.executable, "-m", "dprl", "--bind", "127.0.0.1", *args],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert run.returncode == 2
            assert run.stderr.splitlines()[-1].startswith("dprl: error: cannot listen on"), run.stderr
            assert "Traceback" not in run.stderr


# Redis ------------------------------------------------------------------------------------
@pytest.fixture
def own_redis() -> RedisServer:
    server = RedisServer()
    yield server
    server.stop()


def test_redis_metrics_readiness_and_status(own_redis: RedisServer, holding: HoldingServer) -> None:
    prefix = "dprl_ops_test"
    proxy = DistributedProxyRateLimiter(
        0,
        2,
        own_redis.url,
        lease_ttl=1.5,
        logger=logging.getLogger("dprl.test"),
        redis_prefix=prefix,
        redis_timeout=0.3,
        admin_port=free_port(),
    ).start()
    try:
        key = f"127.0.0.1:{holding.port}"
        held = [proxy_connect(proxy, key) for _ in range(2)]
        over, head = proxy_connect(proxy, key)
        assert head.startswith(b"HTTP/1.1 500")
        over.close()
        wait_for(lambda: proxy.limiter.stats.lease_refreshes > 0, what="a lease refresh")
        samples = scrape(proxy)
        assert sample(samples, "dprl_redis_up") == 1
        assert sample(samples, "dprl_fleet_upstream_connections", host=key) == 2
        assert sample(samples, "dprl_refusals_total", host=key, reason="limit") == 1
        assert sample(samples, "dprl_redis_request_seconds_count") >= 3  # 3 acquires
        assert sample(samples, "dprl_lease_refreshes_total") >= 1
        assert requests.get(f"{proxy.admin_url}/readyz", timeout=5).status_code == 200
        row = requests.get(f"{proxy.admin_url}/hosts/{key}", timeout=5).json()
        assert row == {
            **{"host": key, "limit": 2, "open": 2, "waiting": 0, "fleet_open": 2, "refused_last_minute": 1},
            **{"limit_from": "default", "refusals": {"limit": 1}},
        }

        status = subprocess.run(
            [sys.executable, "-m", "dprl", "status", "--redis-url", own_redis.url, "--redis-prefix", prefix],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert status.returncode == 0, status.stderr
        assert status.stdout.splitlines()[1].split() == [key, "2"]

        own_redis.kill()
        ready = requests.get(f"{proxy.admin_url}/readyz", timeout=5)
        assert ready.status_code == 503 and ready.text.startswith("not ready: Redis unavailable")
        samples = scrape(proxy)
        assert sample(samples, "dprl_redis_up") == 0
        errors = series(samples, "dprl_redis_errors_total")
        assert sum(errors.values()) >= 1
        own_redis.restart()
        wait_for(
            lambda: requests.get(f"{proxy.admin_url}/readyz", timeout=5).status_code == 200,
            timeout=10,
            what="ready again",
        )
        for sock, _ in held:
            sock.close()
    finally:
        proxy.stop(timeout=2)
    assert not leftover_keys(own_redis.client(), prefix)


def test_readyz_stays_ready_under_a_fail_open_policy(own_redis: RedisServer) -> None:
    proxy = DistributedProxyRateLimiter(
        0, 2, own_redis.url, logger=logging.getLogger("dprl.test"), on_redis_error="allow", admin_port=free_port()
    ).start()
    try:
        own_redis.kill()
        assert requests.get(f"{proxy.admin_url}/readyz", timeout=5).status_code == 200
        assert sample(scrape(proxy), "dprl_redis_up") == 0
    finally:
        proxy.stop(timeout=2)


# refusals -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("settings", "status", "retry_after"),
    [
        ({}, 500, "1"),
        ({"reject_status": 429, "retry_after": 7}, 429, "7"),
        ({"reject_status": 503, "retry_after": 0}, 503, None),
    ],
)
def test_reject_status_and_retry_after(make_proxy, holding: HoldingServer, settings, status, retry_after) -> None:
    proxy = make_proxy(1, **settings)
    target = f"127.0.0.1:{holding.port}"
    held, _ = proxy_connect(proxy, target)
    for request in (
        f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n",
        f"GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n",
    ):
        answer = raw_request(proxy.port, request.encode())
        head, _, body = answer.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        assert lines[0].startswith(f"HTTP/1.1 {status} ")
        fields = dict(line.split(": ", 1) for line in lines[1:])
        assert fields.get("Retry-After") == retry_after
        assert f"connection limit reached for {target} (1 concurrent connections)".encode() in body
    held.close()


def test_bad_reject_status_is_a_one_line_error() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "dprl", "--reject-status", "200"], capture_output=True, text=True, timeout=30
    )
    assert run.returncode == 2 and run.stderr.count("\n") == 1
    assert "reject-status must be an HTTP error status" in run.stderr


# logs ---------------------------------------------------------------------------------------
def test_json_logs_and_access_log(holding: HoldingServer) -> None:
    proc = ProxyProcess("--log-format", "json", "--access-log", "true", "--max-connections", "1")
    try:
        target = f"127.0.0.1:{holding.port}"
        with socket.create_connection(("127.0.0.1", proc.port)) as sock:
            sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            assert sock.recv(100).startswith(b"HTTP/1.1 200")
            sock.sendall(b"hello")
            holding.wait_active(1)
        line = proc.wait_line(r'"msg": "upstream close')
        record = json.loads(line.string)
        assert record["level"] == "info" and record["host"] == target and record["status"] == 200
        assert record["bytes_out"] == 5 and record["bytes_in"] == 0 and record["duration_ms"] >= 0
        assert record["client"].startswith("127.0.0.1:") and record["worker"].endswith(f":{proc.proc.pid}")
        assert time.strptime(record["ts"][:19], "%Y-%m-%dT%H:%M:%S")
    finally:
        assert proc.stop() == 0
    for text in proc.lines[:-1]:  # every line is one JSON object
        assert set(json.loads(text)) >= {"ts", "level", "msg", "worker"}


def test_access_log_is_off_by_default(holding: HoldingServer) -> None:
    proc = ProxyProcess()
    try:
        target = f"127.0.0.1:{holding.port}"
        with socket.create_connection(("127.0.0.1", proc.port)) as sock:
            sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            assert sock.recv(100).startswith(b"HTTP/1.1 200")
        holding.wait_active(0)
    finally:
        assert proc.stop() == 0
    assert not proc.matching("upstream close")
