"""Request rates: ``N/s``, ``N/m`` or ``N/h`` with an optional burst, and GCRA to enforce them.

GCRA (the generic cell rate algorithm) keeps one number per host: its theoretical arrival
time (TAT), the moment the host would be back to a full burst. With emission interval
``T = 1/rate`` and tolerance ``tau = (burst - 1) * T``, an admission at ``now`` conforms
when ``TAT - now <= tau``; it then moves the TAT to ``max(TAT, now) + T``. Over any
interval of length ``W`` that admits at most ``burst + rate * W``: exactly, with no
"+1" (``burst=1``, the default, is strictly paced). A refusal changes nothing, and says
how long until the next token: ``TAT - tau - now``.

This module is the arithmetic, shared by every limiter: in memory on the monotonic
clock, in the machine's slot table, and (the same formulas in Lua) in Redis on Redis's
own clock.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_SPEC = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*/\s*([smh])\s*(?::\s*burst\s*=\s*([0-9]+)\s*)?")


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` admissions per ``per`` seconds, ``burst`` of them at once."""

    count: float
    per: float
    burst: int = 1

    @property
    def interval(self) -> float:
        """Seconds between admissions at the steady rate (the emission interval T)."""
        return self.per / self.count

    @property
    def tolerance(self) -> float:
        """How far the TAT may run ahead of now (tau): the burst beyond the first."""
        return (self.burst - 1) * self.interval

    @property
    def per_second(self) -> float:
        return self.count / self.per

    def __str__(self) -> str:
        unit = {1.0: "s", 60.0: "m", 3600.0: "h"}[self.per]
        count = f"{self.count:g}"
        return f"{count}/{unit}" if self.burst == 1 else f"{count}/{unit}:burst={self.burst}"


def parse_rate(text: str) -> Rate | None:
    """``10/s``, ``600/m``, ``5/s:burst=20``; ``0`` (or empty) means no rate. ValueError
    (one line) for anything else."""
    if text.strip() in ("", "0"):
        return None
    match = _SPEC.fullmatch(text)
    if match is None:
        raise ValueError(f"a rate is N/s, N/m or N/h, optionally with :burst=B (10/s:burst=20), got {text!r}")
    count, unit, burst = float(match[1]), match[2], int(match[3] or 1)
    if count <= 0:
        raise ValueError(f"a rate must be more than 0 per {unit} (0 alone means none), got {text!r}")
    if burst < 1:
        raise ValueError(f"a burst is 1 or more, got {text!r}")
    return Rate(count, _UNITS[unit], burst)


@dataclass(frozen=True, slots=True)
class Verdict:
    """One GCRA decision at ``now``: admit (and the TAT to store), or wait ``wait`` seconds."""

    wait: float  # 0.0: conforms now
    tat: float  # the TAT to store if admitted


EPSILON = 1e-9  # seconds: a TAT built by adding intervals carries float error; a token due
#                now must not be refused for 1e-17 s (the next admission would start late)


def gcra(rate: Rate, tat: float, now: float) -> Verdict:
    """Whether an admission conforms at ``now`` given the stored ``tat`` (0: none yet)."""
    start = tat if tat > now else now
    wait = start - rate.tolerance - now
    if wait > EPSILON:
        return Verdict(wait, tat)
    return Verdict(0.0, start + rate.interval)


def rescaled(tat: float, old_interval: float, new_interval: float, now: float) -> float:
    """A TAT kept under one rate, for another (a changed limit): the tokens owed carry over
    (``(tat - now) / old`` of them), neither a fresh burst nor a longer wait."""
    if tat <= now or old_interval == new_interval:
        return tat
    return now + (tat - now) / old_interval * new_interval


class RateBook:
    """The TAT of every host with a rate, in one process (local mode), on one clock, with
    the interval it was computed for (a rate changed at runtime rescales it).

    Keys whose TAT lies in the past carry no information (a full burst is available
    again), so the book forgets them: it never grows with hosts that stopped calling.
    """

    __slots__ = ("_since_sweep", "_tat")

    def __init__(self) -> None:
        self._tat: dict[str, tuple[float, float]] = {}  # key -> (TAT, the interval it is in)
        self._since_sweep = 0

    def _current(self, key: str, rate: Rate, now: float) -> float:
        tat, interval = self._tat.get(key, (0.0, rate.interval))
        return rescaled(tat, interval, rate.interval, now)

    def check(self, key: str, rate: Rate, now: float) -> Verdict:
        return gcra(rate, self._current(key, rate, now), now)

    def commit(self, key: str, rate: Rate, verdict: Verdict, now: float) -> None:
        """Record an admission ``check`` allowed (the caller also passed every other check)."""
        self._tat[key] = (verdict.tat, rate.interval)
        self._since_sweep += 1
        if self._since_sweep >= 1024:
            self._since_sweep = 0
            self._tat = {k: entry for k, entry in self._tat.items() if entry[0] > now}

    def busy(self, key: str, now: float) -> bool:
        """Whether ``key`` took a token lately (its TAT lies ahead: its burst is not full)."""
        entry = self._tat.get(key)
        return entry is not None and entry[0] > now

    def take(self, rates: Sequence[tuple[str, Rate]], now: float) -> float:
        """A token of each (name, rate) at ``now``: 0.0, or the seconds until all have one
        (nothing is taken then)."""
        verdicts = [(key, rate, self.check(key, rate, now)) for key, rate in rates]
        wait = max((verdict.wait for _, _, verdict in verdicts), default=0.0)
        if not wait:
            for key, rate, verdict in verdicts:
                self.commit(key, rate, verdict, now)
        return wait

    def eta(self, key: str, rate: Rate, now: float, ahead: int) -> float:
        """Seconds until the admission after ``ahead`` others (each taking a token) conforms."""
        tat = self._current(key, rate, now)
        return max(0.0, max(tat, now) + ahead * rate.interval - rate.tolerance - now)

    def pending(self, rate_for: Callable[[str], Rate | None], now: float) -> dict[str, float]:
        """Seconds until the next token of every host whose burst is not full (0: one is there)."""
        out = {}
        for key in list(self._tat):
            if key.startswith("tenant:"):  # a tenant's part of a host's rate: shown with its host
                continue
            rate = rate_for(key)
            if rate is not None:
                verdict = self.check(key, rate, now)
                if self._current(key, rate, now) > now:
                    out[key] = verdict.wait
        return out


def rates_text(rates: Sequence[tuple[str, Rate]]) -> str:
    """The rates of a refusal: ``10/s``, or ``10/s; shared:cdn 100/s``."""
    return "; ".join(f"{name} {rate}" if name.startswith("shared:") else str(rate) for name, rate in rates)
