"""Distributed mode: fleet-wide caps through a real redis-server, under crashes and faults."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from dprl import DistributedProxyRateLimiter

from ..support.faults import hosts_on_nodes
from ..support.network import free_port, proxy_connect, read_head, wait_for
from ..support.proxy_process import ProxyProcess
from ..support.redis_server import ClusterSetup, RedisServer, leftover_keys
from ..support.upstream import EchoServer


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


def test_redis_killed_mid_run_each_policy_answers_fast_then_recovers(fleet, redis_server, redis_prefix):
    reject, allow, local = (
        fleet(1, "--max-connections", "2", "--on-redis-error", policy, "--lease-ttl", "1")[0]
        for policy in ("reject", "allow", "local")
    )
    # one destination per worker, so that each worker's per-process cap is its own
    echoes = [EchoServer() for _ in range(3)]
    targets = {proc: f"127.0.0.1:{echo.port}" for proc, echo in zip((reject, allow, local), echoes, strict=True)}
    held = [_connect_status(proc.port, targets[proc]) for proc in (reject, allow, local)]
    assert [status for _, status in held] == [200, 200, 200]
    redis_server.kill()  # mid-run: each worker holds a tunnel
    answers: dict[str, list[int]] = {}
    for name, proc in (("reject", reject), ("allow", allow), ("local", local)):
        target = targets[proc]
        opened = []
        for _ in range(3):
            started = time.monotonic()
            opened.append(_connect_status(proc.port, target))
            assert time.monotonic() - started < 2, f"{name}: admission hung while Redis is down"
        answers[name] = [status for _, status in opened]
        for sock, _ in opened:
            sock.close()
    assert answers["reject"] == [500, 500, 500]
    assert answers["allow"] == [200, 200, 200]
    assert answers["local"] == [200, 500, 500]  # the held tunnel plus one: the per-process cap of 2
    for sock, _ in held:
        sock.close()  # released while Redis is down: healed by the refresh once it is back
    assert len(reject.matching("Redis unavailable")) == 1, "health change logged more than once"
    redis_server.start()
    wait_for(
        lambda: _connect_status(reject.port, targets[reject])[1] == 200, timeout=5, what="reject worker recovering"
    )
    for proc in (reject, allow, local):
        proc.wait_line("Redis available again")
    for echo in echoes:
        echo.stop()
    # the leak check of redis_prefix then waits for every count to be settled back to nothing


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
        assert first.limiter.process_counts() == {target: 1}
        for sock in socks:
            sock.close()
        wait_for(lambda: first.active_connections_for_host(target) == 0, what="fleet count back to 0")


def test_unix_socket_and_tls_urls(ca, tmp_path, upstream):
    server_cert = ca.issue_cert("localhost", "127.0.0.1")
    cert, key, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    server_cert.cert_chain_pems[0].write_to_path(str(cert))
    server_cert.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    tls_port = free_port()
    server = RedisServer(
        "--unixsocket",
        "{dir}/redis.sock",
        "--tls-port",
        str(tls_port),
        "--tls-cert-file",
        str(cert),
        "--tls-key-file",
        str(key),
        "--tls-ca-cert-file",
        str(ca_file),
        "--tls-auth-clients",
        "no",
    )
    try:
        urls = [f"unix://{server.dir}/redis.sock", f"rediss://localhost:{tls_port}/0?ssl_ca_certs={ca_file}"]
        target = f"127.0.0.1:{upstream.port}"
        for url in urls:
            with DistributedProxyRateLimiter(0, 1, url, lease_ttl=2, shutdown_timeout=1) as proxy:
                first, head = proxy_connect(proxy, target)
                assert b" 200 " in head, (url, head)
                second, head = proxy_connect(proxy, target)
                assert b" 500 " in head and b"limit reached" in second.recv(200) + head, (url, head)
                assert proxy.active_connections_for_host(target) == 1
                first.close()
                second.close()
        client = server.client()
        assert leftover_keys(client, "proxy_rate_limiter") == [], "keys left after both proxies stopped"
        client.close()
    finally:
        server.stop()


def _readme_acl() -> list[str]:
    readme = (Path(__file__).resolve().parents[2] / "docs" / "distributed.md").read_text()
    line = next(line for line in readme.splitlines() if line.startswith("ACL SETUSER dprl "))
    return line.split()[2:]


@pytest.mark.parametrize("can_kill", [True, False])
def test_the_readmes_least_privilege_acl_user_is_enough(can_kill, upstream):
    """Everything works as docs/distributed.md's ACL user; without CLIENT KILL, reconnections say
    that a dead connection's late commands can land."""
    server = RedisServer()
    admin = server.client()
    try:
        rules = [r.replace("proxy_rate_limiter:", "dprl_acl:") for r in _readme_acl()]
        if not can_kill:
            rules.remove("+client|kill")
        admin.execute_command("ACL", "SETUSER", *rules)
        url = f"redis://dprl:secret@127.0.0.1:{server.port}/0"
        worker = ProxyProcess(
            "--redis-url", url, "--redis-prefix", "dprl_acl", "--max-connections", "2", "--queue-timeout", "10"
        )
        try:
            target = f"127.0.0.1:{upstream.port}"
            sock, status = _connect_status(worker.port, target)
            assert status == 200
            sock.close()
            admin.execute_command("CLIENT", "KILL", "USER", "dprl")  # the worker reconnects

            def admitted() -> bool:
                sock, status = _connect_status(worker.port, target)
                sock.close()
                return status == 200

            wait_for(admitted, timeout=10, what="admitted again")
            # waiting in the fleet's queue: the wake-up channel (SUBSCRIBE, PUBLISH) is allowed too
            held = [_connect_status(worker.port, target)[0] for _ in range(2)]
            waiting = socket.create_connection(("127.0.0.1", worker.port), timeout=10)
            waiting.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            wait_for(lambda: admin.zcard(f"dprl_acl:{{{target}}}:queue") == 1, what="a waiter in the queue")
            held[0].close()
            assert waiting.recv(100).startswith(b"HTTP/1.1 200")
            for sock in (held[1], waiting):
                sock.close()
            refused = worker.matching("refused CLIENT KILL")
            assert bool(refused) is not can_kill, worker.lines
            assert not worker.matching("NOPERM|Traceback"), worker.lines
        finally:
            assert worker.stop() == 0
        assert not leftover_keys(admin, "dprl_acl")
    finally:
        admin.close()
        server.stop()


def test_library_counts_hosts_on_different_cluster_nodes():
    cluster = ClusterSetup()
    hosts = hosts_on_nodes(cluster, 2)
    settings = {"redis_prefix": "dprl_lib", "lease_ttl": 3, "shutdown_timeout": 1}
    try:
        with DistributedProxyRateLimiter(0, 2, cluster.url(cluster.nodes[0]), **settings) as proxy:
            socks = [proxy_connect(proxy, upstream.authority)[0] for upstream, _ in hosts for _ in range(2)]
            for upstream, node in hosts:
                assert proxy.active_connections_for_host(upstream.authority) == 2
                client = node.client()  # counted on the node that owns the host's slot
                assert sum(map(int, client.hvals(f"dprl_lib:{{{upstream.authority}}}:counts"))) == 2
                client.close()
            sock, head = proxy_connect(proxy, hosts[0][0].authority)
            assert head.startswith(b"HTTP/1.1 500"), head
            sock.close()
            for sock in socks:
                sock.close()
            for upstream, _ in hosts:
                wait_for(lambda u=upstream: proxy.active_connections_for_host(u.authority) == 0, what="released")
    finally:
        for upstream, _ in hosts:
            upstream.close()
        cluster.stop()
