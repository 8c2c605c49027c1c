"""The operator's console: the page at ``GET /`` of the admin listener, the table query it
sends (sorted, filtered and paged here, so the page never holds 20,000 rows), its CSV
export, and each host's recent history for the sparklines.

The page (``console.html``, package data) is one self-contained file: no CDN, no build
step. It reads ``/summary``, ``/hosts?...`` and ``/history?hosts=...`` every 2 s, and writes
limits through ``PUT /limits/HOST`` with the admin token as a bearer header (never a
cookie: no request of another site can carry it).
"""

from __future__ import annotations

import csv
import heapq
import io
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from importlib import resources
from typing import NamedTuple
from urllib.parse import parse_qs

from gevent.monkey import get_original

from ..limits.hosts import HostKey
from ..stats import NO_HOST, ProxyStats

# the blocking sleep of the standard library, even in a monkey-patched program: the table is
# ordered in a thread of gevent's pool, never in the loop
_pause = get_original("time", "sleep")
PAUSE = 0.0002
PAGE = resources.files(__package__).joinpath("console.html").read_bytes()
SCRIPT = resources.files(__package__).joinpath("console.js").read_bytes()
SORTS = ("host", "open", "limit", "use", "waiting", "refused_last_minute", "opened_per_s", "rate")
MAX_PAGE = 500
STEP = 5.0  # seconds between two samples of a host's history
SAMPLES = 60  # 5 minutes of them
CSV_FIELDS = (
    *("host", "open", "fleet_open", "limit", "limit_from", "waiting", "refused_last_minute"),
    *("opened_per_s", "refused_per_s", "rate", "next_token_in"),
)


class TableQuery(NamedTuple):
    """What the page asks of /hosts: a slice of the rows in an order, filtered by host name."""

    offset: int = 0
    limit: int | None = None  # None: every row (the JSON API as it always was)
    sort: str = "open"
    descending: bool = True
    text: str = ""  # a substring of the host name
    csv: bool = False

    @classmethod
    def parse(cls, query: str) -> TableQuery:
        """ValueError (400) for a bad parameter."""
        params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        unknown = set(params) - {"offset", "limit", "sort", "order", "q", "format"}
        if unknown:
            raise ValueError(f"unknown parameters {sorted(unknown)} (offset, limit, sort, order, q, format)")
        sort = params.get("sort", "open")
        if sort not in SORTS:
            raise ValueError(f"sort is one of {', '.join(SORTS)}, got {sort!r}")
        order = params.get("order", "desc" if sort != "host" else "asc")
        if order not in ("asc", "desc"):
            raise ValueError(f"order is asc or desc, got {order!r}")
        if params.get("format", "json") not in ("json", "csv"):
            raise ValueError("format is json or csv")
        try:
            offset = int(params.get("offset", "0"))
            limit = int(params["limit"]) if "limit" in params else None
        except ValueError:
            raise ValueError("offset and limit are whole numbers") from None
        if offset < 0 or (limit is not None and not 1 <= limit <= MAX_PAGE):
            raise ValueError(f"offset is 0 or more, limit 1 to {MAX_PAGE}")
        return cls(
            offset, limit, sort, order == "desc", params.get("q", "").strip().lower(), params.get("format") == "csv"
        )

    def pick(self, keys: Iterable[HostKey], value: Callable[[HostKey, str], object]) -> tuple[int, list[HostKey]]:
        """(how many hosts match, the page of them in order), from the host keys alone:
        ``value(key, sort)`` is a host's sort value, so rows are built for the page only.

        Runs in a thread of its own beside the proxy's loop. A page is chosen with a heap of
        offset + limit entries rather than by sorting 20,000 (a sort compares in C, holding
        the interpreter the whole time), and every 256 keys this thread sleeps a moment: the
        loop gets the interpreter at once instead of after a switch interval (5 ms) for each
        system call it makes."""
        keys = [k for k in keys if self.text in k.lower()] if self.text else list(keys)
        calls = 0

        def order(key: HostKey) -> tuple[object, HostKey]:
            nonlocal calls
            calls += 1
            if not calls % 256:
                _pause(PAUSE)
            return value(key, self.sort), key

        if self.limit is None:
            ordered = sorted(keys, key=order, reverse=self.descending)
            return len(keys), ordered[self.offset :]
        best = heapq.nlargest if self.descending else heapq.nsmallest
        return len(keys), best(self.offset + self.limit, keys, key=order)[self.offset :]

    def select(self, rows: list[dict]) -> tuple[int, list[dict]]:
        """(rows that match, the page of them in order)."""
        if self.text:
            rows = [r for r in rows if self.text in str(r["host"]).lower()]
        rows = sorted(rows, key=_sort_key(self.sort), reverse=self.descending)
        if self.limit is None:
            return len(rows), rows[self.offset :]
        return len(rows), rows[self.offset : self.offset + self.limit]


def _sort_key(sort: str):
    if sort == "host":
        return lambda r: r["host"]
    if sort == "use":
        return lambda r: (_in_use(r) / r["limit"] if r["limit"] else -1.0, r["host"])
    if sort == "open":
        return lambda r: (_in_use(r), r["host"])
    if sort == "rate":
        return lambda r: (r.get("rate") or "", r["host"])
    return lambda r: (r.get(sort) or 0, r["host"])


def _in_use(row: Mapping[str, object]) -> int:
    """Fleet-wide when known (distributed mode), else this process's."""
    return max(int(row["open"]), int(row.get("fleet_open", 0)))  # type: ignore[call-overload]


def csv_text(rows: Iterable[Mapping[str, object]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in CSV_FIELDS})
    return out.getvalue()


class Sample(NamedTuple):
    at: float  # time.time()
    open: int  # in use (fleet-wide when known)
    opened: int  # connections opened so far, this process
    refused: int  # refusals so far, this process


class History:
    """The last 5 minutes of each busy host: in use, opened and refused, every 5 s.

    Bounded: the hosts are those the stats keep counters for (--metrics-max-hosts at most)
    and those with connections open, at most ``max_hosts``; each keeps ``SAMPLES``.
    """

    def __init__(self, max_hosts: int) -> None:
        self.max_hosts = max_hosts
        self.hosts: dict[HostKey, deque[Sample]] = {}
        # (opened/s, refused/s) over the last minute per host, replaced whole at each sample:
        # a page rendered in another thread reads it without a lock
        self.rates: dict[HostKey, tuple[float, float]] = {}

    def sample(self, stats: ProxyStats, open_now: Mapping[HostKey, int], now: float | None = None) -> None:
        """Called every STEP seconds in the proxy's hub (a few hundred dict reads)."""
        now = time.time() if now is None else now
        counters = {**stats.hosts, **stats.pinned_hosts}
        keys = [k for k in (*open_now, *counters) if k != NO_HOST]
        seen = set()
        for key in keys:
            if key in seen:
                continue
            seen.add(key)
            entry = counters.get(key)
            opened = entry.opened if entry is not None else 0
            refused = sum(entry.refusals.values()) if entry is not None else 0
            line = self.hosts.get(key)
            if line is None:
                if len(self.hosts) >= self.max_hosts:
                    continue
                line = self.hosts[key] = deque(maxlen=SAMPLES)
            line.append(Sample(now, open_now.get(key, 0), opened, refused))
        for key in [k for k, line in self.hosts.items() if k not in seen and line[-1].at < now - SAMPLES * STEP]:
            del self.hosts[key]  # quiet for 5 minutes: its history says nothing any more
        self.rates = {key: self.per_second(key) for key in self.hosts}

    def per_second(self, key: HostKey) -> tuple[float, float]:
        """(opened/s, refused/s) over the last minute (what the samples cover of it)."""
        line = self.hosts.get(key)
        if not line or len(line) < 2:
            return 0.0, 0.0
        last = line[-1]
        first = next((s for s in line if s.at >= last.at - 60), line[0])
        span = last.at - first.at
        if span <= 0:
            return 0.0, 0.0
        return (last.opened - first.opened) / span, (last.refused - first.refused) / span

    def of(self, keys: Iterable[HostKey]) -> dict[HostKey, dict[str, list[float]]]:
        """Sparkline data: per host, sample times, in use, and refusals in each step."""
        out = {}
        for key in keys:
            line = self.hosts.get(key)
            if not line:
                continue
            samples = list(line)
            refused = [0] + [b.refused - a.refused for a, b in itertools.pairwise(samples)]
            times: list[float] = [round(s.at, 1) for s in samples]
            out[key] = {"t": times, "open": [float(s.open) for s in samples], "refused": [float(n) for n in refused]}
        return out
