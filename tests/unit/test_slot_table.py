"""The machine's slot table (``--workers`` in local mode): real shared memory, mapped by
real processes."""

from __future__ import annotations

import random

import pytest

from dprl.limits.limiter import Admission
from dprl.limits.tenants import tenant_key
from dprl.workers.slot_table import SlotTable, TableFull, TenantLine, TenantRules

ADMITTED, HOST_FULL, GROUP_FULL, OTHERS_FIRST, TENANT_SHARE = (
    Admission.ADMITTED,
    Admission.HOST_FULL,
    Admission.GROUP_FULL,
    Admission.OTHERS_FIRST,
    Admission.TENANT_SHARE,
)


def handles(table: SlotTable, count: int) -> list[SlotTable]:
    """One handle per worker column, each with its own open description (as workers have)."""
    return [SlotTable(table.shared_fd, index) for index in range(count)]


def test_counts_match_a_model_through_collisions_and_deletions() -> None:
    """A 16-entry table and 12 keys: long probe runs that wrap around, entries dropped at
    zero from their middle (backward shift), every key still found after every step."""
    tables = handles(SlotTable.create(workers=2, capacity=16), 2)
    keys = [f"host{i}.example:{8000 + i}" for i in range(12)]
    model: dict[tuple[int, str], int] = {}
    rng = random.Random(7)
    for _ in range(4000):
        worker, key = rng.randrange(2), rng.choice(keys)
        if model.get((worker, key)) and rng.random() < 0.55:
            tables[worker].give_back(key)
            model[(worker, key)] -= 1
        else:
            assert tables[worker].take(key, 0) == ADMITTED
            model[(worker, key)] = model.get((worker, key), 0) + 1
        for column in (0, 1):
            expected = {k: n for (w, k), n in model.items() if w == column and n}
            assert tables[0].totals(column) == expected
        for key in keys:
            assert tables[1].total(key) == model.get((0, key), 0) + model.get((1, key), 0)
    for (worker, key), count in model.items():
        for _ in range(count):
            tables[worker].give_back(key)
    assert tables[0].totals() == {}
    assert not any(tables[0]._map[64:])  # every entry dropped: the table is all zeros again


def test_caps_and_shared_caps() -> None:
    a, b = handles(SlotTable.create(workers=2), 2)
    assert [a.take("api", 2), b.take("api", 2), a.take("api", 2)] == [ADMITTED, ADMITTED, HOST_FULL]
    assert a.take("img1", 5, "shared:cdn", 2) == ADMITTED
    assert b.take("img2", 5, "shared:cdn", 2) == ADMITTED
    assert a.take("img3", 5, "shared:cdn", 2) == GROUP_FULL
    b.give_back("img2", "shared:cdn")
    assert a.take("img3", 5, "shared:cdn", 2) == ADMITTED
    assert a.totals() == {"api": 2, "img1": 1, "img3": 1, "shared:cdn": 2}


def test_older_waiters_of_other_workers_go_first() -> None:
    a, b, c = handles(SlotTable.create(workers=3), 3)
    assert a.take("api", 1) == ADMITTED
    assert b.set_head("api", 100) == []  # b waits since t=100
    assert c.set_head("api", 200) == [1]  # c waits since t=200; b waits too
    assert a.give_back("api") == [1, 2]  # both are told
    assert c.take("api", 1, since=200) == OTHERS_FIRST  # b came first
    assert a.take("api", 1) == OTHERS_FIRST  # so does a newcomer
    assert b.take("api", 1, since=100) == ADMITTED
    assert b.set_head("api", 0) == [2]
    b.give_back("api")
    assert c.take("api", 1, since=200) == ADMITTED
    c.give_back("api")
    c.set_head("api", 0)
    assert a.totals() == {} and not any(a._map[64:])


def test_forget_gives_a_dead_workers_slots_and_places_back() -> None:
    supervisor = SlotTable.create(workers=2)
    a, b = handles(supervisor, 2)
    for _ in range(3):
        b.take("api", 5)
    b.take("img", 5, "shared:cdn", 5)
    b.set_head("other", 123)
    a.take("api", 5)
    assert supervisor.forget(1) == 4  # slots of hosts; the shared cap's count goes with them
    assert a.totals() == {"api": 1}
    assert a.take("other", 1) == ADMITTED  # b's place in the line is gone


def test_a_full_table_says_so() -> None:
    (table,) = handles(SlotTable.create(workers=1, capacity=4), 1)
    for i in range(4):
        table.take(f"h{i}", 1)
    with pytest.raises(TableFull):
        table.take("h4", 1)
    table.give_back("h0")
    assert table.take("h4", 1) == ADMITTED


def test_a_rate_in_the_table_is_one_for_every_worker_and_outlives_connections():
    from dprl.limits.rates import Rate

    table = SlotTable.create(workers=2)
    a, b = SlotTable(table.shared_fd, 0), SlotTable(table.shared_fd, 1)
    rate = Rate(1, 60.0, 2)  # 1/m, burst 2
    assert a.take("api", 0, rates=[("api", rate)]) == ADMITTED
    a.give_back("api")  # the connection closes: its entry goes, the arrival time stays
    assert b.take("api", 0, rates=[("api", rate)]) == ADMITTED  # the burst's second token, on the other worker
    b.give_back("api")
    assert a.take("api", 0, rates=[("api", rate)]) == Admission.RATE
    assert 59 < a.rate_wait <= 60
    assert b.pace([("api", rate)]) > 59  # a request on a kept-alive connection: no token either
    assert a.eta("api", rate, ahead=1) == pytest.approx(a.rate_wait + 60, abs=0.5)
    assert a.take("other", 0, rates=[("other", rate)]) == ADMITTED  # another host has its own
    for t in (a, b, table):
        t.close()


def test_a_refusal_at_the_cap_takes_no_token_in_the_table():
    from dprl.limits.rates import Rate

    table = SlotTable.create(workers=1)
    a = SlotTable(table.shared_fd, 0)
    rate = Rate(1, 60.0, 2)  # two tokens
    assert a.take("api", 1, rates=[("api", rate)]) == ADMITTED
    for _ in range(3):
        assert a.take("api", 1, rates=[("api", rate)]) == HOST_FULL  # the cap refuses first: no token taken
    a.give_back("api")
    assert a.take("api", 1, rates=[("api", rate)]) == ADMITTED  # the second token was still there
    a.give_back("api")
    assert a.take("api", 1, rates=[("api", rate)]) == Admission.RATE
    a.close()
    table.close()


def _rules(host: str, mine: str, shares: dict[str, tuple[float, int]]) -> TenantRules:
    lines = {name: TenantLine(tenant_key(name, host), weight, top) for name, (weight, top) in shares.items()}
    return TenantRules(lines[mine], tuple(line for name, line in lines.items() if name != mine))


def test_tenant_counts_ceilings_and_the_fair_order_across_workers() -> None:
    """Cap 4, tenants a and b of equal weight: each tenant's count is the machine's, a's max
    holds, and a waiter of b at another worker goes before a's arrival over its guarantee."""
    a_worker, b_worker = handles(SlotTable.create(workers=2), 2)
    capped = _rules("api", "a", {"a": (1.0, 3), "b": (1.0, 4)})
    assert [a_worker.take("api", 4, tenants=capped) for _ in range(4)] == [ADMITTED] * 3 + [TENANT_SHARE]  # a's max
    assert a_worker.take("api", 4, tenants=_rules("api", "a", {"a": (1.0, 4), "b": (1.0, 4)})) == ADMITTED
    as_a, as_b = _rules("api", "a", {"a": (1.0, 4), "b": (1.0, 4)}), _rules("api", "b", {"a": (1.0, 4), "b": (1.0, 4)})
    assert a_worker.total(tenant_key("a", "api")) == 4 and b_worker.total("api") == 4
    b_worker.set_head(tenant_key("b", "api"), 100)  # b waits at the other worker (holds 0 of its 2)
    a_worker.give_back("api", tenant_line=tenant_key("a", "api"))
    assert a_worker.take("api", 4, since=200, tenants=as_a) == TENANT_SHARE  # the free slot is owed to b
    assert b_worker.take("api", 4, since=100, tenants=as_b) == ADMITTED
    b_worker.set_head(tenant_key("b", "api"), 0)
    a_worker.give_back("api", tenant_line=tenant_key("a", "api"))
    assert a_worker.take("api", 4, since=200, tenants=as_a) == ADMITTED  # nobody else waits
    for worker, tenant, count in ((a_worker, "a", 3), (b_worker, "b", 1)):
        for _ in range(count):
            worker.give_back("api", tenant_line=tenant_key(tenant, "api"))
    assert a_worker.totals() == {} and not any(a_worker._map[64 : 64 + a_worker.capacity * a_worker.entry_size])


def test_a_dead_workers_tenant_counts_go_with_its_column() -> None:
    supervisor, worker = handles(SlotTable.create(workers=2), 2)
    rules = _rules("api", "a", {"a": (1.0, 4)})
    assert [worker.take("api", 4, tenants=rules) for _ in range(2)] == [ADMITTED] * 2
    assert supervisor.forget(1) == 2  # the host's slots; the tenant's count goes with them
    assert supervisor.totals() == {}
