"""Redis fault scenarios against a fleet of real ``python -m dprl`` workers.

Each scenario starts its own redis-server(s), workers (each behind a ``BlackholeRelay``
when the scenario cuts it off), and a ``HoldingServer`` upstream that counts open
connections; it breaks something real, keeps clients trying throughout, and returns
``Figures`` measured at the upstream. ``tests/test_redis_faults.py`` asserts on them;
``scripts/fault-drill`` prints them for this tree and for an older revision (whose code
is taken from ``pythonpath``), so before/after figures come from the same scenario code.
"""

from __future__ import annotations

import dataclasses
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import redis

from dprl.redis.cluster import key_slot

from .network import wait_for
from .proxy_process import ProxyProcess
from .redis_server import ClusterSetup, RedisServer, SentinelSetup, leftover_keys
from .relay import BlackholeRelay
from .upstream import HoldingServer

CAP = 3
LEASE = 3.0


@dataclasses.dataclass
class Answer:
    target: str
    sent: float  # monotonic time the CONNECT was sent
    latency: float  # until the proxy's answer (status line) arrived
    status: int  # 0: no answer (connection failed or timed out)
    reason: str = ""  # the refusal's body

    @property
    def refused_by_redis(self) -> bool:
        """Refused for want of Redis (the policy), not at the cap."""
        return self.status != 200 and "limit reached" not in self.reason


@dataclasses.dataclass
class Figures:
    max_active: int = 0  # most connections the upstream saw open at once
    above_cap: float = 0.0  # seconds the upstream saw more than the cap
    answers: list[Answer] = dataclasses.field(default_factory=list)
    extra: dict[str, object] = dataclasses.field(default_factory=dict)

    def statuses(self, since: float = 0.0) -> Counter:
        return Counter(a.status for a in self.answers if a.sent >= since)

    def reasons(self, since: float = 0.0) -> Counter:
        return Counter(a.reason.split(" (")[0] for a in self.answers if a.sent >= since and a.status != 200)

    def refused_by_redis(self, since: float = 0.0) -> int:
        return sum(a.refused_by_redis for a in self.answers if a.sent >= since)

    def max_latency(self, since: float = 0.0) -> float:
        return max((a.latency for a in self.answers if a.sent >= since), default=0.0)

    def summary(self) -> str:
        parts = [f"upstream max {self.max_active} (cap {CAP})", f"above cap {self.above_cap:.2f}s"]
        if self.answers:
            parts.append(f"slowest answer {self.max_latency() * 1000:.0f}ms")
        parts += [f"{key} {value}" for key, value in self.extra.items()]
        return ", ".join(parts)


def open_tunnel(port: int, target: str, timeout: float = 10.0) -> tuple[socket.socket | None, Answer]:
    """CONNECT through the worker on ``port``; the socket stays open on 200."""
    sent = time.monotonic()
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed before answering")
            data += chunk
    except OSError:
        return None, Answer(target, sent, time.monotonic() - sent, 0, "no answer")
    latency = time.monotonic() - sent
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    if status == 200:
        return sock, Answer(target, sent, latency, status)
    try:
        while chunk := sock.recv(4096):
            body += chunk
    except OSError:
        pass
    sock.close()
    return None, Answer(target, sent, latency, status, body.decode(errors="replace").strip())


def hold_tunnels(port: int, target: str, count: int) -> list[socket.socket]:
    tunnels = []
    for _ in range(count):
        sock, answer = open_tunnel(port, target)
        assert sock is not None, f"tunnel refused: {answer}"
        tunnels.append(sock)
    return tunnels


def closed_by_proxy(sock: socket.socket) -> bool:
    """True if the proxy ended this tunnel (EOF), without waiting."""
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


class TunnelLoad:
    """Clients that keep opening tunnels through ``ports`` to ``target``, holding each for
    ``hold`` seconds; a refused client tries again after ``pause``. Bounded: stops on ``stop()``."""

    def __init__(self, ports: Sequence[int], target: str, clients: int = 6, hold: float = 1.0, pause: float = 0.05):
        self.ports, self.target, self.hold, self.pause = list(ports), target, hold, pause
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]
        for thread in self._threads:
            thread.start()

    def _client(self, index: int) -> None:
        turn = index
        while not self._stop.is_set():
            sock, answer = open_tunnel(self.ports[turn % len(self.ports)], self.target)
            turn += 1
            self.answers.append(answer)
            if sock is not None:
                self._stop.wait(self.hold)
                sock.close()
            else:
                self._stop.wait(self.pause)

    def stop(self) -> list[Answer]:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)
        return self.answers


class Fleet:
    """Workers sharing one Redis deployment, each optionally behind its own relay."""

    def __init__(self, pythonpath: str | None = None) -> None:
        self.env = {"PYTHONPATH": pythonpath} if pythonpath else None
        self.cwd = pythonpath
        self.prefix = f"dprl_fault_{uuid.uuid4().hex[:8]}"
        self.workers: list[ProxyProcess] = []
        self.relays: list[BlackholeRelay | None] = []

    def start(self, url: str, *args: str, relay_to: int | None = None, blackholed: bool = False) -> ProxyProcess:
        relay = BlackholeRelay(relay_to) if relay_to else None
        if relay and blackholed:
            relay.blackhole()  # the worker starts with Redis out of reach
        worker_url = relay.url() if relay else url
        worker = ProxyProcess(
            "--redis-url", worker_url, "--redis-prefix", self.prefix, *args, env=self.env, cwd=self.cwd
        )
        self.workers.append(worker)
        self.relays.append(relay)
        return worker

    def relay(self, worker: ProxyProcess) -> BlackholeRelay:
        relay = self.relays[self.workers.index(worker)]
        assert relay is not None
        return relay

    def stop(self) -> None:
        for worker in self.workers:
            if worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGCONT)
        for worker in self.workers:
            worker.stop(timeout=30)
        for relay in self.relays:
            if relay is not None:
                relay.close()


def worker_args(on_lease_loss: str | None = None, *extra: str) -> list[str]:
    args = ["--max-connections", str(CAP), "--lease-ttl", str(LEASE), "--on-redis-error", "reject"]
    args += ["--redis-timeout", "0.5", "--shutdown-timeout", "0.5", *extra]
    if on_lease_loss:  # absent from revisions before it existed
        args += ["--on-lease-loss", on_lease_loss]
    return args


@contextmanager
def measured(upstream: HoldingServer, figures: Figures) -> Iterator[None]:
    try:
        yield
    finally:
        figures.max_active = upstream.max_active
        figures.above_cap = upstream.time_above(CAP)


@contextmanager
def stage(redis_side: Callable[[], RedisServer | SentinelSetup], pythonpath: str | None) -> Iterator[tuple]:
    """(Redis, a counting upstream, a fleet, figures to fill), all stopped afterwards."""
    server, upstream, fleet = redis_side(), HoldingServer(), Fleet(pythonpath)
    try:
        yield server, upstream, fleet, Figures()
    finally:
        fleet.stop()
        upstream.close()
        server.stop()


# scenarios -----------------------------------------------------------------------------


def blackhole_answers(pythonpath: str | None = None, callers: int = 10) -> Figures:
    """1. Redis blackholed: how long do callers wait for an answer, and how many connect
    attempts does the worker make meanwhile? Two workers: one that never reached Redis
    (blackholed before its first call), one connected when the blackhole starts. Each gets
    ``callers`` simultaneous CONNECTs, then three every 0.1 s for 3 s while refreshes and
    probes come and go (the connected worker holds a tunnel, so it has counts to refresh)."""
    with stage(RedisServer, pythonpath) as (server, upstream, fleet, figures):
        connected = fleet.start("", *worker_args(), relay_to=server.port)
        (held,) = hold_tunnels(connected.port, upstream.authority, 1)
        fresh = fleet.start("", *worker_args(), relay_to=server.port, blackholed=True)
        per_worker = []
        for worker in (fresh, connected):
            relay = fleet.relay(worker)
            if worker is connected:
                relay.blackhole()
            # counted from the blackhole on: the fresh worker's attempts since it started
            before = 0 if worker is fresh else relay.accepted
            figures.answers += _simultaneous(worker.port, upstream.authority, callers)
            for _ in range(30):
                figures.answers += _simultaneous(worker.port, upstream.authority, 3)
                time.sleep(0.1)
            # each worker's attempts over its own blackholed time (the fresh one's starts
            # before its process does)
            blackholed = time.monotonic() - (relay.blackholed_at or 0)
            per_worker.append(f"{relay.accepted - before} in {blackholed:.1f}s")
        figures.extra["connect attempts per worker"] = ", ".join(per_worker)
        healed = time.monotonic()
        for worker in (fresh, connected):
            fleet.relay(worker).heal()
        for worker in (fresh, connected):
            while True:
                sock, answer = open_tunnel(worker.port, upstream.authority)
                if sock is not None:
                    sock.close()
                    break
                assert time.monotonic() - healed < 10, f"no admission 10 s after the heal: {answer}"
                time.sleep(0.05)
        figures.extra["admitting again after"] = f"{time.monotonic() - healed:.2f}s"
        figures.max_active = upstream.max_active
        held.close()
    return figures


def _simultaneous(port: int, target: str, callers: int) -> list[Answer]:
    barrier = threading.Barrier(callers)
    answers: list[Answer] = []

    def call() -> None:
        barrier.wait()
        answers.append(open_tunnel(port, target)[1])

    threads = [threading.Thread(target=call) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return answers


def _three_workers(
    fleet: Fleet, url: str, on_lease_loss: str | None, relay_to: int | None
) -> tuple[ProxyProcess, ProxyProcess, ProxyProcess]:
    a, b, c = (fleet.start(url, *worker_args(on_lease_loss), relay_to=relay_to) for _ in range(3))
    return a, b, c


def _holder_and_load(
    a: ProxyProcess, others: Sequence[ProxyProcess], upstream: HoldingServer
) -> tuple[list[socket.socket], TunnelLoad]:
    """Worker A holds the whole cap; clients keep trying through the others."""
    tunnels = hold_tunnels(a.port, upstream.authority, CAP)
    upstream.wait_active(CAP)
    return tunnels, TunnelLoad([w.port for w in others], upstream.authority)


def cut_off(
    who: str,
    on_lease_loss: str | None = None,
    outage: float = 2 * LEASE,
    after: float = 4.0,
    pythonpath: str | None = None,
) -> Figures:
    """2. Redis unreachable for ``outage`` seconds: ``who`` is "fleet" (every worker's relay
    blackholed), "one" (worker A's alone) or "paused" (worker A SIGSTOPped, then SIGCONT).
    Worker A holds the cap throughout; clients keep trying through B and C."""
    with stage(RedisServer, pythonpath) as (server, upstream, fleet, figures):
        a, b, c = _three_workers(fleet, "", on_lease_loss, relay_to=server.port)
        with measured(upstream, figures):
            tunnels, load = _holder_and_load(a, [b, c], upstream)
            cut = [fleet.relay(w) for w in (a, b, c)] if who == "fleet" else [fleet.relay(a)] if who == "one" else []
            for relay in cut:
                relay.blackhole()
            if who == "paused":
                a.proc.send_signal(signal.SIGSTOP)
            time.sleep(outage)
            for relay in cut:
                relay.heal()
            if who == "paused":
                a.proc.send_signal(signal.SIGCONT)
            healed = time.monotonic()
            time.sleep(after)
            figures.answers = load.stop()
            figures.extra["A's tunnels closed"] = sum(closed_by_proxy(sock) for sock in tunnels)
            figures.extra["admitted after the heal"] = figures.statuses(healed)[200]
            figures.extra["A logged the lease loss"] = bool(a.matching("lease on Redis .* lapsing"))
            for sock in tunnels:
                sock.close()
        expect_clean(server, fleet)
    return figures


def late_release(pythonpath: str | None = None, delay: float = 1.5) -> Figures:
    """3. A release written on a connection that then broke reaches Redis ``delay`` seconds
    after the heal, so after the new connection's first commands (what a TCP retransmission
    can do). Half a refresh interval off the refresh cadence: the widest window for B."""
    with stage(RedisServer, pythonpath) as (server, upstream, fleet, figures):
        a, b = fleet.start("", *worker_args(), relay_to=server.port), fleet.start(server.url, *worker_args())
        with measured(upstream, figures):
            hold_tunnels(a.port, upstream.authority, 1)[0].close()  # every script used once
            upstream.wait_active(0)
            # the upstream sees the close before A's release is answered by Redis
            wait_for(
                lambda: not _worker_counts(server, fleet.prefix, upstream.authority),
                5,
                ignore=(redis.RedisError,),
                what="A's release",
            )
            tunnels = hold_tunnels(a.port, upstream.authority, CAP)
            relay = fleet.relay(a)
            relay.blackhole()
            mark = len(a.lines)
            tunnels.pop().close()  # A's release of it leaves on the connection now cut off
            upstream.wait_active(CAP - 1)
            a.wait_line("Redis unavailable", start=mark)  # the release timed out: A reconnects
            load = TunnelLoad([b.port], upstream.authority, clients=3, hold=2.0)
            healed = time.monotonic()
            relay.heal(old_first=False, delay=delay)
            time.sleep(3.0)
            figures.answers = load.stop()
            # B's clients are closed: their releases may still be on the way (the upstream
            # sees a close first); once they land only A's count is left (up to 5 s)
            counts = _worker_counts(server, fleet.prefix, upstream.authority)
            deadline = time.monotonic() + 5
            while len(counts) > 1 and time.monotonic() < deadline:
                time.sleep(0.02)
                counts = _worker_counts(server, fleet.prefix, upstream.authority)
            figures.extra["A's count in Redis"] = counts
            figures.extra["admitted after the heal"] = figures.statuses(healed)[200]
            for sock in tunnels:
                sock.close()
        expect_clean(server, fleet)
    return figures


def data_loss(how: str, pythonpath: str | None = None, after: float = 4.0) -> Figures:
    """4. Redis loses its data while worker A holds the cap: ``how`` is "restart" (killed and
    started again empty) or "flushall"; clients keep trying through B and C."""
    with stage(RedisServer, pythonpath) as (server, upstream, fleet, figures):
        a, b, c = _three_workers(fleet, server.url, None, relay_to=None)
        with measured(upstream, figures):
            tunnels, load = _holder_and_load(a, [b, c], upstream)
            time.sleep(0.5)
            if how == "restart":
                server.restart()
            else:
                client = server.client()
                client.flushall()
                client.close()
            lost = time.monotonic()
            time.sleep(after)
            figures.answers = load.stop()
            refused = [a.sent for a in figures.answers if a.sent >= lost and a.refused_by_redis]
            figures.extra["refused (not at cap) after the loss"] = len(refused)
            figures.extra["admissions paused for"] = f"{max(refused) - lost:.2f}s" if refused else "0s"
            figures.extra["A's count in Redis"] = _worker_counts(server, fleet.prefix, upstream.authority)
            for sock in tunnels:
                sock.close()
        expect_clean(server, fleet)
    return figures


def sentinel_failover(pythonpath: str | None = None, plain_url: bool = False, after: float = 5.0) -> Figures:
    """6. The master dies; the sentinel promotes the replica. Worker A holds the cap; clients
    keep trying through B and C. ``plain_url``: workers given the master's address as
    ``redis://`` (what revisions without Sentinel support could be given)."""
    with stage(SentinelSetup, pythonpath) as (setup, upstream, fleet, figures):
        a, b, c = _three_workers(fleet, setup.master.url if plain_url else setup.url, None, relay_to=None)
        with measured(upstream, figures):
            tunnels, load = _holder_and_load(a, [b, c], upstream)
            time.sleep(0.5)
            old = setup.master.port
            marks = [len(w.lines) for w in (a, b, c)]
            setup.kill_master()
            killed = time.monotonic()
            wait_for(
                lambda: setup.master_port() != old,
                30,
                ignore=(redis.RedisError,),
                what="the sentinel to promote the replica",
            )
            promoted = time.monotonic()
            figures.extra["promoted after"] = f"{promoted - killed:.2f}s"
            if not plain_url:
                for worker, mark in zip((a, b, c), marks, strict=True):
                    worker.wait_line("Redis available again", 15, mark)
                followed = time.monotonic()
                figures.extra["all workers followed after"] = f"{followed - killed:.2f}s"
                figures.extra["followed after promotion"] = f"{followed - promoted:.2f}s"
            time.sleep(after)
            figures.answers = load.stop()
            figures.extra["refused (not at cap) since the kill"] = figures.refused_by_redis(killed)
            figures.extra["refused (not at cap) in the last second"] = figures.refused_by_redis(time.monotonic() - 1)
            for sock in tunnels:
                sock.close()
        if not plain_url:
            expect_clean(setup.replica, fleet)
    return figures


def cluster_node_failure(pythonpath: str | None = None, plain_url: bool = False) -> Figures:
    """5. A 3-node Cluster, three hosts whose slots are on different nodes, workers given one
    node's address (``plain_url``: as ``redis://``, what revisions without Cluster support
    could be given). Each host is filled to the cap; then the node serving one of them is
    killed, and every host is tried again."""
    cluster, fleet, figures = ClusterSetup(), Fleet(pythonpath), Figures()
    seed = cluster.nodes[0]
    url = f"redis://127.0.0.1:{seed.port}/0" if plain_url else cluster.url(seed)
    hosts = hosts_on_nodes(cluster, 3)
    try:
        a, b = fleet.start(url, *worker_args()), fleet.start(url, *worker_args())
        held: dict[str, list[socket.socket]] = {}
        for upstream, _node in hosts:
            tunnels = []
            for i in range(CAP + 1):
                sock, answer = open_tunnel((a, b)[i % 2].port, upstream.authority)
                figures.answers.append(answer)
                if sock is not None:
                    tunnels.append(sock)
            held[upstream.authority] = tunnels
        figures.extra["before the kill"] = _by_host(figures.answers, hosts)
        victim_upstream, victim = next((u, n) for u, n in hosts if n is not seed)
        victim.kill()
        killed = time.monotonic()
        for upstream, _node in hosts:  # one slot back on each host, then one over the cap
            tunnels = held[upstream.authority]
            if tunnels:
                tunnels.pop().close()
            upstream.wait_active(len(tunnels))
        after: list[Answer] = []
        for _ in range(2):
            for upstream, _node in hosts:
                for worker in (a, b):
                    sock, answer = open_tunnel(worker.port, upstream.authority)
                    after.append(answer)
                    if sock is not None:
                        held[upstream.authority].append(sock)
        figures.answers += after
        figures.extra["after the kill"] = _by_host(after, hosts)
        figures.extra["killed node's host"] = victim_upstream.authority
        figures.extra["slowest answer after the kill"] = f"{max(a.latency for a in after) * 1000:.0f}ms"
        figures.extra["answered within"] = f"{time.monotonic() - killed:.2f}s"
        figures.max_active = max(u.max_active for u, _ in hosts)
        for tunnels in held.values():
            for sock in tunnels:
                sock.close()
    finally:
        fleet.stop()
        for upstream, _ in hosts:
            upstream.close()
        cluster.stop()
    return figures


def _by_host(answers: list[Answer], hosts: list[tuple[HoldingServer, RedisServer]]) -> dict[str, str]:
    """Per host (by port): how many were admitted, refused at the cap, refused otherwise."""
    summary = {}
    for upstream, _ in hosts:
        mine = [a for a in answers if a.target == upstream.authority]
        admitted = sum(a.status == 200 for a in mine)
        at_cap = sum("limit reached" in a.reason for a in mine)
        summary[str(upstream.port)] = f"{admitted} admitted, {at_cap} at cap, {len(mine) - admitted - at_cap} other"
    return summary


def cluster_resharding(
    pythonpath: str | None = None, pause: float = 1.0, after: float = 2.0, extra: tuple[str, ...] = ()
) -> Figures:
    """5. The slot of a busy host moves to another node (IMPORTING/MIGRATING, ``pause`` seconds
    of ASK redirections, MIGRATE, SETSLOT NODE) while clients churn tunnels through two
    workers at the cap (``extra``: more flags for the workers)."""
    cluster, fleet, figures = ClusterSetup(), Fleet(pythonpath), Figures()
    ((upstream, source),) = hosts_on_nodes(cluster, 1)
    target = next(n for n in cluster.nodes if n is not source)
    try:
        a, b = (fleet.start(cluster.url(cluster.nodes[0]), *worker_args(None, *extra)) for _ in range(2))
        with measured(upstream, figures):
            load = TunnelLoad([a.port, b.port], upstream.authority, clients=6, hold=0.3, pause=0.02)
            upstream.wait_active(CAP)
            time.sleep(0.5)
            moving = time.monotonic()
            slot = key_slot(f"{{{upstream.authority}}}")
            cluster.move_slot(slot, source, target, pause=pause)
            moved = time.monotonic()
            time.sleep(after)
            figures.answers = load.stop()
        figures.extra["refused (not at cap) during the move"] = figures.refused_by_redis(moving)
        figures.extra["admitted during and after the move"] = figures.statuses(moving)[200]
        figures.extra["move took"] = f"{moved - moving:.2f}s"
        client = target.client()
        try:
            figures.extra["keys on the new node"] = len(client.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 10))
        finally:
            client.close()
        expect_clean(target, fleet)
    finally:
        fleet.stop()
        upstream.close()
        cluster.stop()
    return figures


def _worker_counts(server: RedisServer, prefix: str, host: str) -> dict[str, int]:
    client = server.client()
    try:
        return {k.decode().split(":")[2]: int(v) for k, v in client.hgetall(f"{prefix}:{{{host}}}:counts").items()}
    finally:
        client.close()


def expect_clean(server: RedisServer, fleet: Fleet) -> None:
    """After the scenario, counts return to zero: every worker's part is gone once it stops."""
    for worker in fleet.workers:
        worker.stop(timeout=30)
    client = server.client()
    try:
        wait_for(lambda: not leftover_keys(client, fleet.prefix), 10, ignore=(redis.RedisError,), what="no keys left")
    finally:
        client.close()


def hosts_on_nodes(cluster: ClusterSetup, count: int) -> list[tuple[HoldingServer, RedisServer]]:
    """Upstreams whose host keys hash to ``count`` different Cluster nodes."""
    chosen: dict[int, tuple[HoldingServer, RedisServer]] = {}
    spare: list[HoldingServer] = []
    while len(chosen) < count:
        upstream = HoldingServer()
        node = cluster.node_of(f"{{{upstream.authority}}}")
        if node.port in chosen:
            spare.append(upstream)
        else:
            chosen[node.port] = (upstream, node)
    for upstream in spare:
        upstream.close()
    return list(chosen.values())


Scenario = Callable[..., Figures]
