"""Redis faults against a fleet of real workers, measured at a counting upstream.

Each test runs one scenario of ``tests/faults.py`` (``scripts/fault-drill`` prints the same
figures, and those of an older revision) and checks the docs' promise (docs/distributed.md) for that fault:
the cap holds at the upstream, clients are answered within the Redis timeout, and the
fleet's counts are back to zero in Redis once the workers stop.
"""

from __future__ import annotations

import math
import signal

import pytest
import redis

from ..support import faults
from ..support.faults import CAP, LEASE
from ..support.network import wait_for
from ..support.proxy_process import ProxyProcess
from ..support.redis_server import RedisServer

pytestmark = pytest.mark.faults

TIMEOUT = 0.5  # --redis-timeout of every worker in the scenarios
JITTER = 0.25  # scheduling on a loaded 2-core machine, on top of the timeout (k callers in line would wait k x 0.5 s)


def test_blackholed_redis_answers_every_caller_within_the_timeout_with_one_connect_attempt():
    figures = faults.blackhole_answers()
    slowest = figures.max_latency()
    assert slowest <= TIMEOUT + JITTER, f"a caller waited {slowest:.3f}s: {figures.summary()}"
    assert all(a.status == 500 and "Redis unavailable" in a.reason for a in figures.answers), figures.reasons()
    callers = len(figures.answers) // 2
    for worker in str(figures.extra["connect attempts per worker"]).split(", "):
        attempts, seconds = worker.split(" in ")
        # One attempt per probe interval (1 s) at most, whatever the number of callers (a
        # hundred per worker here), for each of the worker's two connections: the ordered
        # channel and the subscriber (wake-ups, limits). Counted at the blackhole and at
        # each whole second after it, with one more each for the window's edges: the
        # test's clock and the worker's probe clock do not start together.
        assert int(attempts) <= 2 * (math.ceil(float(seconds.rstrip("s"))) + 2), figures.summary()
        assert int(attempts) < callers / 4, figures.summary()


def test_fleet_wide_outage_longer_than_the_lease_does_not_over_admit_at_the_heal():
    figures = faults.cut_off("fleet", "keep")
    assert figures.max_active <= CAP, figures.summary()
    assert figures.extra["A's tunnels closed"] == 0


def test_one_worker_cut_off_with_on_lease_loss_close_ends_its_tunnels_before_its_lease_lapses():
    figures = faults.cut_off("one", "close")
    assert figures.max_active <= CAP, figures.summary()
    assert figures.extra["A's tunnels closed"] == CAP, figures.summary()
    assert figures.extra["A logged the lease loss"], figures.summary()


def test_one_worker_cut_off_with_on_lease_loss_keep_is_over_the_cap_only_while_its_tunnels_live():
    """The documented cost of keep: B and C admit once A's lease lapses; at the heal A
    re-asserts its count, and nobody admits until the fleet is back under the cap."""
    figures = faults.cut_off("one", "keep")
    assert figures.extra["A's tunnels closed"] == 0
    assert figures.extra["A logged the lease loss"], figures.summary()
    assert figures.max_active <= 2 * CAP, figures.summary()
    assert figures.extra["admitted after the heal"] == 0, figures.summary()


@pytest.mark.parametrize("policy", ["keep", "close"])
def test_one_worker_paused_longer_than_its_lease(policy):
    """A stopped process can act on nothing: its lease lapses, the others admit, and the
    upstream is over the cap until it runs again (close: it ends its tunnels at once;
    keep: they go on, and it re-asserts its count)."""
    outage = 2 * LEASE
    figures = faults.cut_off("paused", policy, outage=outage)
    assert figures.max_active <= 2 * CAP, figures.summary()
    if policy == "close":
        assert figures.extra["A's tunnels closed"] == CAP, figures.summary()
        assert figures.above_cap <= outage - LEASE + 0.5, figures.summary()
    else:
        assert figures.extra["A's tunnels closed"] == 0, figures.summary()


def test_a_release_from_a_dead_connection_landing_late_changes_nothing():
    figures = faults.late_release()
    assert figures.max_active <= CAP, figures.summary()
    assert list(figures.extra["A's count in Redis"].values()) == [CAP - 1], figures.summary()  # type: ignore[union-attr]


@pytest.mark.parametrize("how", ["restart", "flushall"])
def test_after_data_loss_nobody_admits_beyond_the_cap(how):
    figures = faults.data_loss(how)
    assert figures.max_active <= CAP, figures.summary()
    assert list(figures.extra["A's count in Redis"].values()) == [CAP], figures.summary()  # type: ignore[union-attr]


def test_wait_replicas_refuses_an_admission_no_replica_confirmed():
    master = RedisServer()
    replica = RedisServer("--replicaof", "127.0.0.1", str(master.port))
    upstream = faults.HoldingServer()
    fleet = faults.Fleet()
    try:
        client = replica.client()
        wait_for(
            lambda: client.info("replication")["master_link_status"] == "up",
            15,
            ignore=(redis.RedisError,),
            what="the replica to sync",
        )
        client.close()
        worker = fleet.start(master.url, *faults.worker_args(None, "--redis-wait-replicas", "1"))
        sock, answer = faults.open_tunnel(worker.port, upstream.authority)
        assert sock is not None, answer
        sock.close()
        replica.proc.send_signal(signal.SIGSTOP)  # alive, but acknowledges nothing
        try:
            sock, answer = faults.open_tunnel(worker.port, upstream.authority)
            assert sock is None and answer.status == 500, answer
            assert "replicas confirmed" in answer.reason, answer
            assert answer.latency <= 2 * TIMEOUT + JITTER, answer  # the acquire, then WAIT's timeout
        finally:
            replica.proc.send_signal(signal.SIGCONT)
        wait_for(
            lambda: faults.open_tunnel(worker.port, upstream.authority)[0] is not None,
            10,
            ignore=(redis.RedisError,),
            what="admitting again",
        )
        assert upstream.max_active <= 1
        faults.expect_clean(master, fleet)
    finally:
        fleet.stop()
        upstream.close()
        replica.stop()
        master.stop()


def test_cluster_node_failure_affects_only_the_hosts_it_serves():
    figures = faults.cluster_node_failure()
    victim = figures.extra["killed node's host"].rsplit(":", 1)[1]  # type: ignore[union-attr]
    before, after = figures.extra["before the kill"], figures.extra["after the kill"]
    for port, summary in before.items():  # type: ignore[union-attr]
        assert summary == f"{CAP} admitted, 1 at cap, 0 other", (port, before)
    for port, summary in after.items():  # type: ignore[union-attr]
        if port == victim:
            assert summary.startswith("0 admitted, 0 at cap"), (port, after)  # Redis unavailable: the policy
        else:
            assert summary == "1 admitted, 3 at cap, 0 other", (port, after)
    assert figures.max_active <= CAP, figures.summary()
    assert figures.max_latency(since=0) < 5


@pytest.mark.parametrize("tenants", [(), ("--tenant-share", "a=1")], ids=["no-tenants", "tenants"])
def test_cluster_resharding_of_a_busy_hosts_slot_neither_over_admits_nor_refuses(tenants: tuple[str, ...]):
    """With tenants, the host's keys come with every tenant's (counts, leases, queue, rate),
    all in the host's slot: the tunnels here are all of tenant ``default``."""
    figures = faults.cluster_resharding(pause=0.3, extra=tenants)
    assert figures.max_active <= CAP, figures.summary()
    refusals = [a for a in figures.answers if a.status != 200 and "limit reached" not in a.reason]
    assert figures.extra["refused (not at cap) during the move"] == 0, (figures.summary(), refusals[:5])
    assert figures.extra["admitted during and after the move"] > 0, figures.summary()
    assert figures.extra["keys on the new node"] >= 1, figures.summary()


def test_sentinel_failover_is_followed_within_a_second_of_the_promotion_and_the_cap_holds():
    figures = faults.sentinel_failover()
    assert figures.max_active <= CAP, figures.summary()
    followed = float(figures.extra["followed after promotion"].rstrip("s"))  # type: ignore[union-attr]
    assert followed <= 1.0, figures.summary()


def test_a_plain_url_to_a_cluster_node_is_refused_with_what_to_use_instead():
    """Without redis+cluster:// the keys of most hosts live on other nodes: no admission is
    attempted there, and the answer (and the log) say which URL to give."""
    cluster = faults.ClusterSetup()
    upstream = faults.HoldingServer()
    try:
        worker = ProxyProcess("--redis-url", cluster.nodes[0].url, "--max-connections", "3", "--redis-timeout", "0.5")
        try:
            sock, answer = faults.open_tunnel(worker.port, upstream.authority)
            assert sock is None and answer.status == 500, answer
            assert "is a Redis Cluster node: give dprl a redis+cluster:// URL" in answer.reason, answer
            assert worker.matching("Redis unavailable at .*redis\\+cluster://")
        finally:
            worker.stop()
    finally:
        upstream.close()
        cluster.stop()
