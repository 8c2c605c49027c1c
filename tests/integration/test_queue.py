"""Waiting for a slot (--queue-timeout): first come first served, in one process and fleet-wide.

Each test counts at a real upstream that the cap is never exceeded, and checks the order in
which waiters were admitted against the order in which they arrived.
"""

from __future__ import annotations

import itertools
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest

from dprl import DistributedProxyRateLimiter, ProxyRateLimiter

from ..support.network import read_head, wait_for
from ..support.proxy_process import ProxyProcess
from ..support.redis_server import RedisServer, leftover_keys
from ..support.upstream import HoldingServer


class Client(threading.Thread):
    """One CONNECT through ``port``: when it was sent, answered (and how), closed."""

    def __init__(self, port: int, target: str, hold: float = 0.0, index: int = 0) -> None:
        super().__init__(daemon=True)
        self.port, self.target, self.hold, self.index = port, target, hold, index
        self.sent = self.answered = self.closed = 0.0
        self.head = b""
        self.sock: socket.socket | None = None
        self.release = threading.Event()  # with hold < 0: close when this is set

    @property
    def status(self) -> int:
        return int(self.head.split(b" ")[1]) if self.head else 0

    def run(self) -> None:
        sock = self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=60)
        self.sent = time.monotonic()
        sock.sendall(f"CONNECT {self.target} HTTP/1.1\r\nHost: {self.target}\r\n\r\n".encode())
        self.head = read_head(sock)
        self.answered = time.monotonic()
        if self.head and self.status != 200:  # a refusal: its body too, until the close
            while chunk := sock.recv(65536):
                self.head += chunk
        if self.status == 200:
            sock.sendall(f"{self.index}\n".encode())  # the upstream learns who it admitted, in order
            if self.hold >= 0:
                time.sleep(self.hold)
            else:
                self.release.wait(60)
        self.closed = time.monotonic()
        sock.close()


def arrive(port: int, target: str, count: int, gap: float, hold: float) -> list[Client]:
    clients = []
    for i in range(count):
        client = Client(port, target, hold, i)
        client.start()
        clients.append(client)
        time.sleep(gap)
    for client in clients:
        client.join(60)
    return clients


def inversions(upstream: HoldingServer) -> int:
    """Adjacent pairs admitted in the opposite order of their arrival. Admission order is the
    order in which the upstream accepted the connections (each client names itself first)."""
    order = [int(upstream.first_bytes[i]) for i in sorted(upstream.first_bytes)]
    return sum(1 for a, b in itertools.pairwise(order) if b < a)


def hold_one(port: int, target: str) -> Client:
    client = Client(port, target, hold=-1)
    client.start()
    wait_for(lambda: client.status == 200, what="a held slot")
    return client


def waiting(port: int, target: str, proxy_counts: Callable[[], int], expected: int, hold: float = 0.0) -> Client:
    client = Client(port, target, hold)
    client.start()
    wait_for(lambda: proxy_counts() == expected, what=f"{expected} waiting")
    return client


# one process -----------------------------------------------------------------------------
def test_local_waiters_are_served_in_arrival_order(make_proxy, holding: HoldingServer) -> None:
    proxy = make_proxy(2, queue_timeout=10)
    clients = arrive(proxy.port, f"127.0.0.1:{holding.port}", 20, 0.02, 0.3)
    assert [c.status for c in clients] == [200] * 20
    assert holding.max_active == 2
    assert len(holding.first_bytes) == 20 and inversions(holding) == 0
    holding.wait_active(0)


@pytest.fixture(params=["local", "redis"])
def one_slot(request, make_proxy, redis_server, redis_prefix, holding):
    """make(**settings): a proxy with a cap of 1, in memory or on Redis; its target; a held slot."""

    def make(**settings: object) -> tuple[ProxyRateLimiter, str, Client]:
        if request.param == "redis":
            settings.update(redis_url=redis_server.url, redis_prefix=redis_prefix, lease_ttl=3)
        proxy = make_proxy(1, **settings)
        target = f"127.0.0.1:{holding.port}"
        return proxy, target, hold_one(proxy.port, target)

    make.mode = request.param
    return make


def test_queue_timeout_and_queue_full(one_slot, redis_server, redis_prefix) -> None:
    proxy, target, held = one_slot(queue_timeout=0.5, max_queue=2, reject_status=429)
    first = waiting(proxy.port, target, lambda: proxy.queued_for_host(target), 1)
    second = waiting(proxy.port, target, lambda: proxy.queued_for_host(target), 2)
    full = Client(proxy.port, target)
    full.run()
    assert full.status == 429 and full.answered - full.sent < 0.3  # refused at once, not after the 0.5 s timeout
    assert b"Retry-After: 1" in full.head
    for client in (first, second):
        client.join(5)
        assert client.status == 429
        # never before the timeout; after it by what a loaded 2-core machine may add
        assert 0.5 - 0.02 <= client.answered - client.sent < 0.5 + 0.4, client.answered - client.sent
    stats = proxy.limiter.stats
    counters = stats.counters(target)
    assert counters.refusals == {"queue_full": 1, "queue_timeout": 2}
    assert stats.queue_seconds.collect()[0].samples  # waits observed
    assert proxy.queued_for_host(target) == 0
    held.release.set()
    held.join(5)
    if one_slot.mode == "redis":
        client = redis_server.client()
        wait_for(lambda: not client.exists(f"{redis_prefix}:{{{target}}}:queue"), what="the queue emptied")


def test_a_client_that_leaves_frees_its_place(one_slot, redis_server, redis_prefix, holding) -> None:
    proxy, target, held = one_slot(queue_timeout=30)
    leaving = waiting(proxy.port, target, lambda: proxy.queued_for_host(target), 1)
    staying = waiting(proxy.port, target, lambda: proxy.queued_for_host(target), 2)
    assert leaving.sock is not None
    leaving.sock.shutdown(socket.SHUT_RDWR)
    wait_for(lambda: proxy.queued_for_host(target) == 1, timeout=2, what="the leaver gone from the queue")
    if one_slot.mode == "redis":
        client = redis_server.client()
        assert client.zcard(f"{redis_prefix}:{{{target}}}:queue") == 1
    held.release.set()
    staying.join(5)  # served when the slot freed, not after the 30 s timeout
    assert staying.status == 200 and staying.answered - held.closed < 1.0
    assert holding.max_active == 1
    held.join(5)
    leaving.join(5)


def test_shutdown_answers_waiters_with_503_at_once(holding: HoldingServer) -> None:
    proxy = ProxyRateLimiter(0, 1, queue_timeout=30, shutdown_timeout=10).start()
    target = f"127.0.0.1:{holding.port}"
    held = hold_one(proxy.port, target)
    waiter = waiting(proxy.port, target, lambda: proxy.queued_for_host(target), 1)
    stopper = threading.Thread(target=proxy.stop)
    stopping = time.monotonic()
    stopper.start()
    waiter.join(5)
    assert waiter.status == 503 and b"dprl: the proxy is shutting down" in waiter.head
    assert waiter.answered - stopping < 1.5  # at once: the shutdown timeout is 10 s, the queue timeout 30 s
    assert stopper.is_alive()  # the held tunnel is still being served
    held.release.set()
    stopper.join(15)
    assert not proxy.limiter.process_counts()


def test_library_queue_controls(make_proxy, holding: HoldingServer) -> None:
    proxy = make_proxy(1)
    target = f"127.0.0.1:{holding.port}"
    held = hold_one(proxy.port, target)
    refused = Client(proxy.port, target)
    refused.run()
    assert refused.status == 500  # queueing off by default: the reference contract
    proxy.set_queue_timeout(10)
    waiter = waiting(proxy.port, target, lambda: proxy.queued_for_host("127.0.0.1:" + str(holding.port)), 1)
    held.release.set()
    waiter.join(5)
    assert waiter.status == 200
    with pytest.raises(ValueError):
        proxy.set_queue_timeout(-1)


def test_bad_queue_options_are_one_line_errors() -> None:
    for args in (["--queue-timeout", "-1"], ["--max-queue", "0"]):
        run = subprocess.run([sys.executable, "-m", "dprl", *args], capture_output=True, text=True, timeout=30)
        assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr


# a fleet ---------------------------------------------------------------------------------
@pytest.fixture
def fleet_redis() -> RedisServer:
    server = RedisServer()
    yield server
    server.stop()


def fleet(redis: RedisServer, prefix: str, count: int, *extra: str) -> list[ProxyProcess]:
    args = ("--redis-url", redis.url, "--redis-prefix", prefix, "--max-connections", "2", "--queue-timeout", "30")
    return [ProxyProcess(*args, "--lease-ttl", "3", "--shutdown-timeout", "1", *extra) for _ in range(count)]


def test_fleet_waiters_are_served_in_arrival_order(fleet_redis: RedisServer, holding: HoldingServer) -> None:
    workers = fleet(fleet_redis, "dprl_q_order", 3)
    try:
        target = f"127.0.0.1:{holding.port}"
        clients = []
        for i in range(30):
            client = Client(workers[i % 3].port, target, hold=0.1, index=i)
            client.start()
            clients.append(client)
            time.sleep(0.02)
        for client in clients:
            client.join(60)
        assert [c.status for c in clients] == [200] * 30
        assert holding.max_active == 2
        assert len(holding.first_bytes) == 30 and inversions(holding) <= 1  # 5 % of 29 adjacent pairs
    finally:
        for worker in workers:
            assert worker.stop() == 0
    assert not leftover_keys(fleet_redis.client(), "dprl_q_order")


@pytest.mark.faults
def test_a_killed_workers_waiters_do_not_block_the_fleet(fleet_redis: RedisServer, holding: HoldingServer) -> None:
    doomed, survivor = fleet(fleet_redis, "dprl_q_kill", 2)
    target = f"127.0.0.1:{holding.port}"
    queue = f"dprl_q_kill:{{{target}}}:queue"
    client = fleet_redis.client()
    try:
        held = [hold_one(doomed.port, target) for _ in range(2)]
        ghosts = [Client(doomed.port, target) for _ in range(2)]
        for ghost in ghosts:
            ghost.start()
        wait_for(lambda: client.zcard(queue) == 2, what="the doomed worker's waiters queued")
        late = Client(survivor.port, target)
        late.start()
        wait_for(lambda: client.zcard(queue) == 3, what="the survivor's waiter queued behind them")
        killed = time.monotonic()
        doomed.proc.send_signal(signal.SIGKILL)
        doomed.proc.wait(10)
        late.join(15)
        assert late.status == 200
        # the dead worker's slots come back with its lease (3 s); its waiters go with it
        assert late.answered - killed < 3.0 + 1.5, late.answered - killed
        assert holding.max_active <= 2
        for c in held:
            c.release.set()
        late.sock.close()
    finally:
        survivor.stop()
    wait_for(lambda: not leftover_keys(client, "dprl_q_kill"), timeout=15, what="no keys left")


@pytest.mark.faults
def test_redis_killed_while_clients_wait(fleet_redis: RedisServer, holding: HoldingServer) -> None:
    (worker,) = fleet(fleet_redis, "dprl_q_down", 1, "--redis-timeout", "0.3")
    target = f"127.0.0.1:{holding.port}"
    client = fleet_redis.client()
    try:
        held = [hold_one(worker.port, target) for _ in range(2)]
        waiters = [Client(worker.port, target) for _ in range(3)]
        for waiter in waiters:
            waiter.start()
        wait_for(lambda: client.zcard(f"dprl_q_down:{{{target}}}:queue") == 3, what="3 waiters queued")
        killed = time.monotonic()
        fleet_redis.kill()
        for waiter in waiters:
            waiter.join(10)
            # answered by policy as the connection fails (timeout 0.3 s), not at their queue timeout
            assert waiter.status == 500 and waiter.answered - killed < 2.0, waiter.answered - killed
        fleet_redis.restart()
        for c in held:
            c.release.set()
        holding.wait_active(0)

        def admitted() -> bool:
            probe = Client(worker.port, target)
            probe.run()
            return probe.status == 200

        wait_for(admitted, timeout=10, what="admissions again after Redis came back")
        assert holding.max_active <= 2
    finally:
        assert worker.stop() == 0


def test_distributed_library_waits_fleet_wide(redis_server, redis_prefix, holding: HoldingServer) -> None:
    settings = {"redis_prefix": redis_prefix, "lease_ttl": 3, "queue_timeout": 10}
    with (
        DistributedProxyRateLimiter(0, 1, redis_server.url, **settings) as one,
        DistributedProxyRateLimiter(0, 1, redis_server.url, **settings) as two,
    ):
        target = f"127.0.0.1:{holding.port}"
        held = hold_one(one.port, target)
        waiter = waiting(two.port, target, lambda: two.queued_for_host(target), 1)
        held.release.set()
        waiter.join(5)
        # woken by the release's message, before the oldest waiter's 1 s safety poll
        assert waiter.status == 200 and waiter.answered - held.closed < 0.9
        assert holding.max_active == 1


def test_a_lowered_limit_holds_while_connections_wait(make_proxy, holding: HoldingServer) -> None:
    proxy = make_proxy(2, queue_timeout=10)
    target = f"127.0.0.1:{holding.port}"
    held = [hold_one(proxy.port, target) for _ in range(2)]
    waiters = [waiting(proxy.port, target, lambda: proxy.queued_for_host(target), n, hold=-1) for n in (1, 2)]
    proxy.set_host_limit(target, 1)
    held[0].release.set()
    held[0].join(5)
    holding.wait_active(1)
    assert proxy.queued_for_host(target) == 2  # 1 open, limit 1: nobody goes
    held[1].release.set()
    wait_for(lambda: waiters[0].status == 200, what="the first waiter admitted")
    assert proxy.queued_for_host(target) == 1
    assert holding.max_active == 2
    proxy.set_host_limit(target, 2)
    waiters[0].release.set()
    wait_for(lambda: waiters[1].status == 200, what="the second waiter admitted at the next arrival or release")
    for waiter in waiters:
        waiter.release.set()
        waiter.join(5)
