"""The console's server side without sockets: the table query, the CSV, each host's history."""

from __future__ import annotations

import csv
import io

import pytest

from dprl.ops.console import SAMPLES, STEP, History, TableQuery, csv_text
from dprl.stats import ProxyStats

ROWS = [
    {"host": "a.example", "open": 3, "limit": 3, "waiting": 2, "refused_last_minute": 5},
    {"host": "b.example", "open": 1, "limit": 0, "waiting": 0, "refused_last_minute": 0},
    {"host": "c.example", "open": 0, "fleet_open": 4, "limit": 5, "waiting": 0, "refused_last_minute": 1},
]


def test_the_table_query_sorts_filters_and_pages() -> None:
    assert [r["host"] for r in TableQuery.parse("sort=use").select(ROWS)[1]] == ["a.example", "c.example", "b.example"]
    assert TableQuery.parse("sort=open").select(ROWS)[1][0]["host"] == "c.example"  # fleet-wide
    total, page = TableQuery.parse("sort=host&order=desc&offset=1&limit=1").select(ROWS)
    assert total == 3 and [r["host"] for r in page] == ["b.example"]
    total, page = TableQuery.parse("q=B.EX").select(ROWS)
    assert total == 1 and page[0]["host"] == "b.example"
    for bad in ("sort=x", "order=sideways", "limit=0", "limit=9999", "offset=-2", "format=pdf", "x=1", "limit=z"):
        with pytest.raises(ValueError):
            TableQuery.parse(bad)


def test_the_csv_has_a_header_and_every_row() -> None:
    parsed = list(csv.DictReader(io.StringIO(csv_text(ROWS))))
    assert [r["host"] for r in parsed] == ["a.example", "b.example", "c.example"]
    assert parsed[2]["fleet_open"] == "4" and parsed[0]["fleet_open"] == ""


def test_history_keeps_five_minutes_per_host_and_forgets_quiet_ones() -> None:
    stats = ProxyStats(max_hosts=10)
    history = History(max_hosts=2)
    for step in range(SAMPLES + 10):
        now = 1000.0 + step * STEP
        for _ in range(2):
            stats.opened("a.example", 0.001)
        stats.refused("a.example", "limit")
        history.sample(stats, {"a.example": step % 3, "b.example": 1, "c.example": 1}, now)
    line = history.of(["a.example"])["a.example"]
    assert len(line["t"]) == SAMPLES and line["refused"][1:] == [1.0] * (SAMPLES - 1)
    assert history.rates["a.example"] == pytest.approx((2 / STEP, 1 / STEP))
    assert set(history.hosts) == {"a.example", "b.example"}  # bounded: c never got a line
    later = 1000.0 + (2 * SAMPLES + 20) * STEP
    history.sample(stats, {}, later)  # b quiet for more than 5 minutes: gone
    assert "b.example" not in history.hosts


def test_pick_orders_host_keys_by_a_value_and_pages_them() -> None:
    use = {"a.example": 1.0, "b.example": 0.2, "c.example": 0.6}
    query = TableQuery.parse("sort=use&limit=2")
    assert query.pick(use, lambda key, sort: use[key]) == (3, ["a.example", "c.example"])
    assert TableQuery.parse("sort=use&q=B").pick(use, lambda key, sort: use[key]) == (1, ["b.example"])
    ascending = TableQuery.parse("sort=host&offset=1")
    assert ascending.pick(use, lambda key, sort: key) == (3, ["b.example", "c.example"])
