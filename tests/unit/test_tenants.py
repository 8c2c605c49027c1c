"""Tenant shares: parsing, guarantees, ceilings, the fair order, in memory (no sockets)."""

from __future__ import annotations

import gevent
import pytest

from dprl.errors import TenantShareExceeded
from dprl.limits.hosts import HostLimits
from dprl.limits.memory import MemoryLimiter
from dprl.limits.rates import Rate
from dprl.limits.tenants import (
    DEFAULT_TENANT,
    Lifetimes,
    Share,
    TenantShares,
    ceiling,
    guarantee,
    parse_share,
    parse_shares,
)


def test_shares_parse_and_refuse_bad_text() -> None:
    assert parse_share("batch=1:max=50%") == ("batch", Share(1.0, 50.0))
    assert parse_shares("a=3, b=1") == {"a": Share(3.0), "b": Share(1.0)}
    for bad in ("a", "a=0", "a=x", "a=1:max=0%", "a=1:max=150%", "a b=1", "=1"):
        with pytest.raises(ValueError):
            parse_share(bad)


def test_guarantees_are_floors_of_the_weighted_parts_and_ceilings_at_least_one() -> None:
    assert guarantee(10, 3, 4) == 7 and guarantee(10, 1, 4) == 2
    assert guarantee(9, 1, 3) == 3  # 9 * 1/3 is 2.9999... in floats: still 3
    assert ceiling(10, Share(1, 50)) == 5 and ceiling(1, Share(1, 50)) == 1 and ceiling(7, Share()) == 7


def test_standings_count_only_the_tenants_that_want_the_host() -> None:
    shares = TenantShares({"a": Share(1), "b": Share(1)})
    assert shares.tenant("nobody") == DEFAULT_TENANT and shares.names == ("a", "b", "default")
    alone = shares.standings(10, {"a": 10}, {})
    assert alone["a"].guarantee == 10 and alone["b"].guarantee == 0
    both = shares.standings(10, {"a": 10}, {"b": 1})
    assert both["a"].guarantee == 5 and both["b"].guarantee == 5


def test_a_tenants_part_of_a_rate_is_by_weight_among_the_active_ones() -> None:
    shares = TenantShares({"a": Share(3), "b": Share(1, 10)})
    rate = Rate(100, 1.0, 10)
    assert shares.rate_of(rate, "a", []) == rate  # alone: the whole rate
    assert shares.rate_of(rate, "a", ["b"]) == Rate(75, 1.0, 7)
    assert shares.rate_of(rate, "b", []) == Rate(10, 1.0, 1)  # its max, even alone


def _limiter(cap: int, **shares: Share) -> MemoryLimiter:
    limiter = MemoryLimiter(HostLimits(cap))
    limiter.tenants.replace(shares)
    return limiter


def test_a_freed_slot_goes_to_the_tenant_furthest_below_its_guarantee() -> None:
    limiter = _limiter(4, a=Share(1), b=Share(1))
    limiter.waiting.policy.timeout = 5
    held = [limiter.acquire("h", tenant="a") for _ in range(4)]
    order: list[str] = []

    def ask(tenant: str) -> None:
        slot = limiter.acquire("h", tenant=tenant)
        order.append(tenant)
        held.append(slot)

    waiters = [gevent.spawn(ask, t) for t in ("a", "a", "b", "b")]
    gevent.sleep(0)
    for _ in range(4):
        held.pop(0).release()
        gevent.sleep(0)
    assert order == ["b", "b", "a", "a"]  # b below its guarantee of 2 first, then a
    gevent.joinall(waiters)
    for slot in held:
        slot.release()
    assert not limiter.process_counts() and not limiter.tenant_counts("h")


def test_without_a_queue_a_tenant_at_its_max_is_refused_with_the_reason() -> None:
    limiter = _limiter(4, a=Share(1, 50))
    slots = [limiter.acquire("h", tenant="a") for _ in range(2)]
    with pytest.raises(TenantShareExceeded) as refused:
        limiter.acquire("h", tenant="a")
    assert refused.value.reason == "tenant_share" and "its max" in refused.value.detail
    slots.append(limiter.acquire("h", tenant="someone"))  # default: room left
    for slot in slots:
        slot.release()
    assert not limiter.tenant_counts("h")


def test_no_shares_means_no_tenants() -> None:
    limiter = _limiter(1)
    slot = limiter.acquire("h", tenant="a")
    assert limiter.tenant_counts("h") == {}
    slot.release()


def test_lifetimes_tell_a_wait_only_once_they_have_seen_enough() -> None:
    lifetimes = Lifetimes(size=2)
    for _ in range(Lifetimes.SAMPLES - 1):
        lifetimes.closed("api", 2.0)
    assert lifetimes.expected_wait("api", 3, 4) is None  # not enough seen yet
    lifetimes.closed("api", 2.0)
    assert lifetimes.expected_wait("api", 3, 4) == pytest.approx(1.5)  # 3 of 4 closes, 2 s each
    assert lifetimes.expected_wait("api", 0, 4) == 0.0 and lifetimes.expected_wait("api", 3, 0) is None
    for _ in range(Lifetimes.WINDOW * 4):  # the mean follows what connections last now
        lifetimes.closed("api", 0.5)
    assert lifetimes.expected_wait("api", 4, 4) == pytest.approx(0.5, rel=0.05)
    lifetimes.closed("b", 1.0)
    lifetimes.closed("c", 1.0)  # a third host: the book is forgotten rather than grown
    assert lifetimes.expected_wait("api", 4, 4) is None
