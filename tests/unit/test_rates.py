"""Rates and GCRA (dprl/limits/rates.py): parsing, and the guarantee itself, on simulated
clocks: over any interval of length W, admissions <= burst + rate * W, with no under-admission."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dprl.limits.rates import Rate, RateBook, gcra, parse_rate


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("10/s", Rate(10, 1.0, 1)),
        ("600/m", Rate(600, 60.0, 1)),
        ("5/h", Rate(5, 3600.0, 1)),
        ("10/s:burst=20", Rate(10, 1.0, 20)),
        (" 2.5 / s : burst = 3 ", Rate(2.5, 1.0, 3)),
    ],
)
def test_rates_parse(text, rate):
    assert parse_rate(text) == rate
    assert parse_rate(str(rate)) == rate  # shown as it is written


@pytest.mark.parametrize("text", ["", "0"])
def test_zero_or_nothing_is_no_rate(text):
    assert parse_rate(text) is None


@pytest.mark.parametrize("text", ["10", "10/d", "-1/s", "0/s", "10/s:burst=0", "10/s:bust=2", "ten/s", "10/s,"])
def test_bad_rates_are_one_line_errors(text):
    with pytest.raises(ValueError, match=r"rate|burst") as info:
        parse_rate(text)
    assert "\n" not in str(info.value)


def _admitted(rate: Rate, arrivals: list[float]) -> list[float]:
    book, out = RateBook(), []
    for now in arrivals:
        verdict = book.check("h", rate, now)
        if verdict.wait == 0:
            book.commit("h", rate, verdict, now)
            out.append(now)
        else:
            assert verdict.wait <= rate.interval * rate.burst + 1e-9
    return out


def _worst_excess(rate: Rate, admitted: list[float]) -> float:
    """max over windows [a_i, a_j] of (admissions in it) - (burst + rate * length)."""
    worst = float("-inf")
    for i, start in enumerate(admitted):
        for j in range(i, len(admitted)):
            worst = max(worst, (j - i + 1) - (rate.burst + rate.per_second * (admitted[j] - start)))
    return worst


@settings(max_examples=200, deadline=None)
@given(
    st.floats(1, 200),
    st.integers(1, 10),
    st.lists(st.floats(0, 3), min_size=1, max_size=250).map(sorted),
)
def test_any_window_holds_at_most_burst_plus_rate_times_its_length(per_second, burst, arrivals):
    rate = Rate(per_second, 1.0, burst)
    admitted = _admitted(rate, arrivals)
    assert _worst_excess(rate, admitted) <= 1e-6


def test_a_saturating_load_is_admitted_at_the_full_rate():
    """No under-admission: callers every 1 ms for 5 s at 50/s, burst 5: b + r*T, to the one."""
    rate = Rate(50, 1.0, 5)
    arrivals = [i / 1000 for i in range(5001)]
    admitted = _admitted(rate, arrivals)
    assert len(admitted) == 5 + 50 * 5  # the burst at 0, then one every 20 ms, the last at 5.0 s
    gaps = [b - a for a, b in itertools.pairwise(admitted[5:])]
    assert max(gaps) <= 0.02 + 1e-9 and min(gaps) >= 0.02 - 1e-9


def test_burst_one_is_strictly_paced():
    rate = Rate(10, 1.0, 1)
    admitted = _admitted(rate, [i / 100 for i in range(101)])
    assert admitted == pytest.approx([i / 10 for i in range(11)])


def test_a_refusal_consumes_nothing_and_says_when_the_next_token_comes():
    rate = Rate(2, 1.0, 1)
    book = RateBook()
    first = book.check("h", rate, 10.0)
    book.commit("h", rate, first, 10.0)
    for now in (10.1, 10.2, 10.3):  # refused, repeatedly: the TAT does not move
        assert book.check("h", rate, now).wait == pytest.approx(10.5 - now)
    assert book.check("h", rate, 10.5).wait == 0


def test_the_book_forgets_hosts_whose_burst_is_full_again():
    rate = Rate(1000, 1.0, 1)
    book = RateBook()
    for i in range(3000):
        now = float(i)
        book.commit(f"h{i}", rate, book.check(f"h{i}", rate, now), now)
    assert len(book._tat) < 1100


def test_gcra_is_the_same_function_everywhere():
    """The Lua scripts and the slot table implement these formulas: pin them."""
    rate = Rate(10, 1.0, 3)  # T = 0.1, tau = 0.2
    assert gcra(rate, 0.0, 100.0).wait == 0 and gcra(rate, 0.0, 100.0).tat == pytest.approx(100.1)
    assert gcra(rate, 100.3, 100.0).wait == pytest.approx(0.1)
    assert gcra(rate, 100.2, 100.0).tat == pytest.approx(100.3)


def test_a_changed_rate_carries_the_tokens_owed_over():
    """1/m with a token taken: 60 s owed; at 100/s the same one token is owed: 10 ms."""
    book, slow, fast = RateBook(), Rate(1, 60.0, 1), Rate(100, 1.0, 1)
    book.commit("h", slow, book.check("h", slow, 0.0), 0.0)
    assert book.check("h", slow, 1.0).wait == pytest.approx(59.0)
    assert book.check("h", fast, 1.0).wait == pytest.approx(59.0 / 60 * 0.01)
