"""Parent proxies without sockets: parsing pools and routes, the order each strategy
offers parents in, ejection and its back-off."""

from __future__ import annotations

import collections
import itertools
import logging

import pytest

from dprl.parents.health import FIRST_BACKOFF, JITTER, Health, jittered
from dprl.parents.pool import Parents, Pool, parent_status
from dprl.parents.spec import DIRECT, parse_parent_url, parse_pool, parse_route, parse_routes, route_for


def test_a_parent_url_keeps_its_credentials_out_of_its_label_and_repr() -> None:
    parent = parse_parent_url("scrape", "http://us%40er:p%3Ass@Proxy.Example:3128?max=5&weight=3")
    assert (parent.scheme, parent.host, parent.port, parent.max_connections, parent.weight) == (
        "http",
        "proxy.example",
        3128,
        5,
        3,
    )
    assert (parent.username, parent.password) == ("us@er", "p:ss")
    assert parent.label == "scrape/proxy.example:3128"
    assert "p:ss" not in repr(parent) and "p:ss" not in parent.label
    assert parse_parent_url("p", "socks5h://[::1]:1080").host == "[::1]"
    for bad in ("proxy:3128", "http://proxy", "http://p:1/path", "http://p:1?speed=2", "http://p:1?max=-1"):
        with pytest.raises(ValueError) as caught:
            parse_parent_url("p", bad.replace("http://", "http://u:secret@"))
        assert "secret" not in str(caught.value)


def test_a_pool_takes_urls_a_strategy_and_a_max_for_its_parents() -> None:
    pool = parse_pool("p=http://a:1,http://b:2?max=3,select=least-connections,max=7")
    assert pool.select == "least-connections"
    assert [p.max_connections for p in pool.parents] == [7, 3]
    for bad in ("p=", "p=select=round-robin", "direct=http://a:1", "p=http://a:1,http://a:1", "p=http://a:1,weird"):
        with pytest.raises(ValueError):
            parse_pool(bad)


def test_routes_match_in_order_with_host_patterns_and_a_catch_all() -> None:
    routes = parse_routes("api.example.com=fast, *.example.com=slow, *=corp")
    assert route_for(routes, "api.example.com") == "fast"
    assert route_for(routes, "www.example.com") == "slow"
    assert route_for(routes, "www.example.com:8443") == "corp"  # a pattern's port follows the host keys' rule
    assert route_for(routes, "other.net") == "corp"
    assert route_for({}, "other.net") == DIRECT
    assert parse_route("API.Example.com:443=direct") == ("api.example.com", "direct")


def test_round_robin_follows_weights_smoothly() -> None:
    pool = Pool(parse_pool("p=http://a:1?weight=3,http://b:1,http://c:1"))
    firsts = [pool.offer("x")[0].spec.host for _ in range(10)]
    assert collections.Counter(firsts[:5]) == {"a": 3, "b": 1, "c": 1}  # 3:1:1 within every five
    assert not any(x == y == "a" for x, y in itertools.pairwise(firsts[:5]))  # spread, not a burst
    assert len(pool.offer("x")) == 3  # the others follow: the failover order


def test_destination_hash_sticks_and_moves_only_the_gone_parents_destinations() -> None:
    pool = Pool(parse_pool("p=http://a:1,http://b:1,http://c:1,select=destination-hash"))
    homes = {f"host{i}": pool.offer(f"host{i}")[0] for i in range(60)}
    assert all(pool.offer(d)[0] is home for d, home in homes.items())  # sticky
    assert len({home.spec.host for home in homes.values()}) == 3  # and spread
    gone = pool.parents[0]
    gone.ejected_until = 1.0
    for destination, home in homes.items():
        now = pool.offer(destination)[0]
        assert now is home or home is gone


def test_least_connections_prefers_the_least_loaded_per_weight() -> None:
    pool = Pool(parse_pool("p=http://a:1?weight=2,http://b:1,select=least-connections"))
    a, b = pool.parents
    a.in_use, b.in_use = 3, 2  # 1.5 per weight against 2
    assert pool.offer("x")[0] is a
    a.in_use = 5
    assert pool.offer("x")[0] is b


def test_a_reload_keeps_the_state_of_parents_that_stay() -> None:
    parents = Parents({"p": parse_pool("p=http://a:1,http://b:1")}, {"*": "p"})
    a = parents.pools["p"].parents[0]
    a.in_use, a.failures = 2, 1
    parents.replace({"p": parse_pool("p=http://a:1,http://c:1")}, {"*": "p"})
    kept = parents.pools["p"].parents[0]
    assert kept is a and kept.in_use == 2
    assert parents.pool_for("anything.example") is parents.pools["p"]
    parents.replace({"p": parse_pool("p=http://a:1")}, {"*.x": "p"})
    assert parents.pool_for("anything.example") is None


def test_failures_eject_after_the_threshold_and_the_back_off_is_jittered() -> None:
    parents = Parents({"p": parse_pool("p=http://127.0.0.1:1")}, {"*": "p"})
    health = Health(parents, threshold=3, timeout=0.2, log=logging.getLogger("test"))
    (parent,) = parents.pools["p"].parents
    health.failed(parent, "connect", "refused")
    health.failed(parent, "handshake", "closed")
    assert parent.up and parent.failures == 2
    health.succeeded(parent)
    for _ in range(3):
        health.failed(parent, "connect", "refused")
    try:
        assert not parent.up and parent.backoff == FIRST_BACKOFF
        status = parent_status(parent)
        assert status["state"] == "ejected" and status["failures_total"] == {"connect": 4, "handshake": 1}
        assert 0 < status["probe_in"] <= FIRST_BACKOFF * (1 + JITTER)
        assert parents.pools["p"].offer("x") == []
    finally:
        health.stop()
    assert jittered(10.0, lambda: 0.0) == pytest.approx(10.0 * (1 - JITTER))
    assert jittered(10.0, lambda: 1.0) == pytest.approx(10.0 * (1 + JITTER))
