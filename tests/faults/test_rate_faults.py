"""A rate through Redis faults: Redis restarted empty, or flushed, loses the hosts'
theoretical arrival times. The promise (docs/limits.md): at most one extra burst b per
loss, measured at an upstream that timestamps every request."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterator

import pytest

from dprl.limits.rates import parse_rate

from ..integration.test_rates import JITTER, _get, _push
from ..support.arrivals import ArrivalProcess
from ..support.network import wait_for
from ..support.proxy_process import ProxyProcess
from ..support.redis_server import RedisServer

pytestmark = pytest.mark.faults


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


@pytest.mark.parametrize("loss", ["restart", "flushall"])
def test_a_redis_that_loses_its_data_costs_at_most_one_extra_burst(own_redis, loss):
    rate = parse_rate("20/s:burst=5")
    upstream = ArrivalProcess()
    worker = ProxyProcess(
        "--redis-url", own_redis.url, "--max-rate", str(rate), "--lease-ttl", "3", "--reject-status", "429"
    )
    try:
        url = f"http://{upstream.authority}/x"
        statuses: list[int] = []
        until = time.monotonic() + 6.0
        threads = [threading.Thread(target=_push, args=(worker.port, url, until, statuses)) for _ in range(10)]
        for thread in threads:
            thread.start()
        time.sleep(2.0)  # a steady load at the rate first: the loss comes in the middle of it
        if loss == "restart":
            own_redis.restart()
        else:
            client = own_redis.client()
            client.flushall()
            client.close()
        for thread in threads:
            thread.join(30)
        arrivals = upstream.collect()
        assert len(arrivals.arrivals) > rate.per_second * 3  # admissions went on after the loss
        for width in (0.25, 0.5, 1.0, 2.0):
            most = arrivals.most_in_any_window(width)
            assert most <= 2 * rate.burst + rate.per_second * (width + JITTER), (width, most)
    finally:
        upstream.close()
        assert worker.stop() == 0


def test_keep_alive_requests_through_an_outage_leave_admission_working_after_it(own_redis):
    """Requests on kept-alive connections take their tokens with pace.lua; during an outage
    they are answered by the policy (allow), and once Redis is back new connections are
    admitted again (the probe a paced request made is not left standing)."""
    upstream = ArrivalProcess()
    args = ("--max-rate", "1000/s:burst=100", "--on-redis-error", "allow", "--redis-timeout", "0.2")
    worker = ProxyProcess("--redis-url", own_redis.url, "--lease-ttl", "3", *args)
    try:
        url = f"http://{upstream.authority}/x"
        conn = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=10)
        assert _get(conn, url)[0] == 200
        own_redis.kill()
        for _ in range(5):  # on the kept-alive upstream connection: pace.lua fails, allow answers
            assert _get(conn, url)[0] == 200
            time.sleep(0.3)
        own_redis.start()

        def admitted() -> bool:
            fresh = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=10)
            return _get(fresh, url, close=True)[0] == 200 and "Redis available again" in "\n".join(worker.lines)

        wait_for(admitted, timeout=10, what="admissions through Redis again")
    finally:
        upstream.close()
        assert worker.stop() == 0
