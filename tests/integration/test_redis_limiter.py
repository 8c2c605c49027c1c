"""The Redis limiter on its own, driven by greenlets in this thread against a real Redis."""

from __future__ import annotations

import logging
import random
import time

import gevent
import pytest

from dprl.config import DEFAULTS
from dprl.errors import LimiterUnavailable, LimitExceeded
from dprl.limits.hosts import HostLimits
from dprl.redis.address import RedisDeployment
from dprl.redis.limiter import RedisLimiter

from ..support.network import wait_for

HOST = "stress.example.com"


@pytest.fixture
def make_worker(redis_server, redis_prefix):
    workers: list[RedisLimiter] = []

    def make(limit: int = 5, lease_ttl: float = 5.0, **kwargs) -> RedisLimiter:
        settings = {"on_error": DEFAULTS.on_redis_error, "timeout": DEFAULTS.redis_timeout, **kwargs}
        address = RedisDeployment.from_url(redis_server.url)
        worker = RedisLimiter(
            HostLimits(limit),
            address,
            prefix=redis_prefix,
            lease_ttl=lease_ttl,
            log=logging.getLogger("dprl.test"),
            **settings,
        )
        worker.start()
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        worker.close()


def hub_wait_for(predicate, timeout: float, what: str) -> None:
    """Poll while letting this thread's gevent hub run (the limiters live in it)."""
    wait_for(predicate, timeout, what, interval=0.01, sleep=gevent.sleep)


def _fleet_count(redis_server, prefix: str) -> int:
    client = redis_server.client()
    try:
        return sum(int(v) for v in client.hvals(f"{prefix}:{{{HOST}}}:counts"))
    finally:
        client.close()


def test_concurrent_cycles_from_several_workers_never_exceed_the_cap_and_end_at_zero(
    make_worker, redis_server, redis_prefix
):
    cap = 5
    # a short lease: refreshes (absolute counts, every lease/3) interleave with the acquires all
    # along; not shorter, or a slow machine running 360 greenlets lets a lease lapse
    workers = [make_worker(cap, lease_ttl=1.0) for _ in range(4)]
    state = {"held": 0, "max": 0, "admitted": 0, "refused": 0}
    deadline = time.monotonic() + 3

    def client(worker: RedisLimiter) -> None:
        while time.monotonic() < deadline:
            try:
                slot = worker.acquire(HOST)
            except LimitExceeded:
                state["refused"] += 1
                gevent.sleep(random.random() * 0.001)
                continue
            state["held"] += 1
            state["admitted"] += 1
            state["max"] = max(state["max"], state["held"])
            gevent.sleep(random.random() * 0.002)
            state["held"] -= 1  # the connection is closed ...
            slot.release()  # ... and only then is the slot given back

    # 300 clients on the first worker alone: more than redis-py's default pool of 100
    greenlets = [gevent.spawn(client, workers[0]) for _ in range(300)]
    greenlets += [gevent.spawn(client, worker) for worker in workers[1:] for _ in range(20)]
    gevent.joinall(greenlets, raise_error=True)
    assert state["max"] <= cap, f"{state['max']} slots held at once, cap {cap}"
    assert state["max"] == cap, f"never reached the cap: {state}"
    assert state["admitted"] > 100 and state["refused"] > 100, state
    # releases are sent without waiting; their replies settle the local counts
    hub_wait_for(lambda: all(not w.process_counts() for w in workers), timeout=5, what="releases answered")
    assert _fleet_count(redis_server, redis_prefix) == 0


def test_no_undercount_seen_from_outside(make_worker, redis_server, redis_prefix):
    """Sampled through a plain Redis client while workers churn (complements the test above)."""
    worker = make_worker(3, lease_ttl=0.3)
    held = []
    for _ in range(200):
        if len(held) < 3 and random.random() < 0.6:
            held.append(worker.acquire(HOST))
        elif held:
            held.pop(random.randrange(len(held))).release()
        assert _fleet_count(redis_server, redis_prefix) >= len(held)
    for slot in held:
        slot.release()


def test_lost_data_is_noticed_and_nobody_admits_beyond_the_cap(make_worker, redis_server, redis_prefix):
    """What FLUSHALL or a restart without persistence leaves: no keys, the epoch marker gone.

    The other worker's next admission notices and waits; the holder's counts come back at
    its next refresh; after one refresh interval the cap is enforced against them.
    """
    lease = 1.5
    holder, other = make_worker(2, lease_ttl=lease), make_worker(2, lease_ttl=lease)
    slots = [holder.acquire(HOST) for _ in range(2)]
    with pytest.raises(LimitExceeded):
        other.acquire(HOST)  # at the cap; and the other worker learns the epoch
    client = redis_server.client()
    client.delete(*client.keys(f"{redis_prefix}:*"))
    with pytest.raises(LimiterUnavailable, match="lost data"):
        other.acquire(HOST)  # a third admission now would exceed the cap
    hub_wait_for(
        lambda: _fleet_count(redis_server, redis_prefix) == 2, timeout=lease / 3 + 1, what="counts re-asserted"
    )
    deadline = time.monotonic() + lease / 3 + 1.5
    while True:  # paused, then refused at the cap: never admitted
        try:
            other.acquire(HOST).release()
            raise AssertionError("admitted beyond the cap after Redis lost data")
        except LimitExceeded:
            break
        except LimiterUnavailable:
            assert time.monotonic() < deadline, "admissions still paused after one refresh interval"
            gevent.sleep(0.05)
    for slot in slots:
        slot.release()
    client.close()


def test_an_overcount_left_by_a_failed_release_is_healed_by_the_refresh(make_worker, redis_server, redis_prefix):
    worker = make_worker(10, lease_ttl=0.6)
    slot = worker.acquire(HOST)
    client = redis_server.client()
    client.hset(f"{redis_prefix}:{{{HOST}}}:counts", worker.worker, 4)  # three releases that never arrived
    hub_wait_for(lambda: _fleet_count(redis_server, redis_prefix) == 1, timeout=2, what="refresh to heal the count")
    slot.release()
    hub_wait_for(lambda: _fleet_count(redis_server, redis_prefix) == 0, timeout=5, what="the release applied")
    client.close()


def test_release_twice_is_impossible(make_worker, redis_server, redis_prefix):
    worker = make_worker(1)
    with worker.acquire(HOST) as slot:
        pass
    slot.release()
    hub_wait_for(lambda: not worker.process_counts(), timeout=5, what="the release answered")
    assert _fleet_count(redis_server, redis_prefix) == 0
    worker.acquire(HOST).release()


def test_redis_down_policy_reject_answers_at_once(redis_server, redis_prefix):
    worker = RedisLimiter(
        HostLimits(2),
        RedisDeployment.from_url("redis://127.0.0.1:1/0"),
        prefix=redis_prefix,
        lease_ttl=DEFAULTS.lease_ttl,
        on_error="reject",
        timeout=0.5,
        log=logging.getLogger("dprl.test"),
    )
    started = time.monotonic()
    for _ in range(20):
        with pytest.raises(LimiterUnavailable):
            worker.acquire(HOST)
    assert time.monotonic() - started < 1.5, "each refusal waited for Redis"
    assert worker.process_counts() == {}
    worker.close()


def test_a_released_slot_is_free_fleet_wide_when_release_returns(make_worker, redis_server, redis_prefix):
    """Also right after Redis forgot the scripts (a restart): the release is sent again
    before release() returns, so the next client is not refused by a slot given back."""
    first, second = make_worker(1), make_worker(1)
    for flush_scripts in (False, True):
        slot = first.acquire(HOST)
        with pytest.raises(LimitExceeded):
            second.acquire(HOST)
        if flush_scripts:
            client = redis_server.client()
            client.script_flush()
            client.close()
        slot.release()
        second.acquire(HOST).release()
