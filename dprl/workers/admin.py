"""The admin listener of a ``--workers`` supervisor: the whole machine, once.

Each worker serves its own admin listener on a private loopback port; the supervisor's
listener asks every worker and merges: counters and per-worker gauges are summed, limits
and fleet-wide views are the same everywhere (the largest is shown), the process start
time is the earliest. ``/readyz`` is ready when every worker is. ``/limits`` writes go to
one worker in distributed mode (stored in Redis, they reach every worker); in local mode
to every worker, and the supervisor keeps them to replay to a worker that restarts.
A plain threaded HTTP server: the supervisor carries no proxy traffic, and a scrape never
waits on a worker's event loop for long (2 s at most).
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NamedTuple

from prometheus_client import Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.parser import text_string_to_metric_families

from ..ops import console
from ..ops.admin import PAGE_HEADERS, write_refusal

# gauges whose value is the same view in every worker: the largest is shown, not the sum
_SAME_EVERYWHERE = (
    "dprl_upstream_connections_limit",
    "dprl_upstream_connections_default_limit",
    "dprl_fleet_upstream_connections",
    "dprl_tenant_connections",  # the machine's (or the fleet's) counts, as each worker reads them
    "dprl_build_info",
)
_EARLIEST = ("process_start_time_seconds",)
_LOWEST = ("dprl_redis_up",)
TIMEOUT = 2.0


class Fetched(NamedTuple):
    """A worker's answer to the supervisor."""

    status: int
    body: bytes


class Answer(NamedTuple):
    """The supervisor's answer to an admin client."""

    status: int
    body: bytes
    content_type: str


def _text(status: int, body: bytes) -> Answer:
    return Answer(status, body, "text/plain")


def _json(status: int, body: bytes) -> Answer:
    return Answer(status, body, "application/json")


def merge_metrics(texts: Iterable[str]) -> list[Metric]:
    """Families of several expositions merged into one (samples keyed by name and labels)."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple, float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
            samples = values.setdefault(family.name, {})
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                old = samples.get(key)
                if old is None:
                    samples[key] = sample.value
                elif sample.name.startswith(_SAME_EVERYWHERE):
                    samples[key] = max(old, sample.value)
                elif sample.name in _EARLIEST or sample.name in _LOWEST:
                    samples[key] = min(old, sample.value)
                else:
                    samples[key] = old + sample.value
    out = []
    for name, family in families.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
        out.append(family)
    return out


def merge_hosts(documents: Iterable[dict]) -> dict:
    """/hosts of several workers as one: per host, counts of this machine summed."""
    merged: dict[str, dict] = {}
    first: dict = {}
    for document in documents:
        first = first or document
        for row in document["hosts"]:
            seen = merged.get(row["host"])
            if seen is None:
                merged[row["host"]] = seen = {k: v for k, v in row.items() if k != "tenants"}
            else:
                for field in ("open", "waiting", "refused_last_minute", "opened_per_s", "refused_per_s"):
                    if field in row:
                        seen[field] = seen.get(field, 0) + row[field]
                for field in ("limit", "fleet_open"):
                    if field in row:
                        seen[field] = max(seen.get(field, 0), row[field])
            for tenant, standing in row.get("tenants", {}).items():
                # one worker's reading of the counts (all read the same table, or Redis): one
                # moment's; the waiters are each worker's own
                into = seen.setdefault("tenants", {}).setdefault(tenant, dict(standing, waiting=0))
                into["waiting"] += standing.get("waiting", 0)
    rows = sorted(merged.values(), key=lambda r: (-max(r["open"], r.get("fleet_open", 0)), r["host"]))
    return {"mode": first.get("mode", ""), "default_limit": first.get("default_limit", 0), "hosts": rows}


def merge_summaries(summaries: list[dict], writable: bool) -> dict:
    """The console's header for the machine: counts summed, the oldest uptime."""
    first = summaries[0] if summaries else {"mode": "workers", "describe": "", "backend_up": None}
    merged = {
        "mode": first["mode"],
        "describe": f"{len(summaries)} workers; {first['describe']}".rstrip("; "),
        "uptime": max((s["uptime"] for s in summaries), default=0),
        "backend_up": first["backend_up"] if all(s["backend_up"] == first["backend_up"] for s in summaries) else False,
        "writable": writable,  # the supervisor's own --admin-token decides
    }
    for field in ("clients", "open", "waiting", "refused_last_minute"):
        merged[field] = sum(s[field] for s in summaries)
    merged["hosts"] = max((s["hosts"] for s in summaries), default=0)
    fleet = [s["fleet_open"] for s in summaries if s.get("fleet_open") is not None]
    merged["fleet_open"] = max(fleet) if fleet else None
    return merged


def merge_histories(histories: list[dict]) -> dict:
    """Sparklines for the machine: each worker's in use and refusals, added step by step."""
    merged: dict[str, dict] = {}
    for history in histories:
        for host, line in history.items():
            seen = merged.get(host)
            if seen is None:
                merged[host] = {k: list(v) for k, v in line.items()}
                continue
            steps = min(len(seen["t"]), len(line["t"]))
            merged[host] = {
                "t": seen["t"][-steps:],
                "open": [a + b for a, b in zip(seen["open"][-steps:], line["open"][-steps:], strict=True)],
                "refused": [a + b for a, b in zip(seen["refused"][-steps:], line["refused"][-steps:], strict=True)],
            }
    return merged


def merge_parents(documents: Iterable[dict]) -> dict:
    """/parents of several workers as one: each worker keeps its own view of a parent's
    health, so the machine's is ``up`` only while every worker offers it; connections and
    failures are summed."""
    merged: dict[str, dict] = {}
    for document in documents:
        for row in document["parents"]:
            seen = merged.get(row["parent"])
            if seen is None:
                merged[row["parent"]] = dict(row, failures_total=dict(row["failures_total"]))
                continue
            seen["in_use"] += row["in_use"]
            seen["failures"] = max(seen["failures"], row["failures"])
            for reason, n in row["failures_total"].items():
                seen["failures_total"][reason] = seen["failures_total"].get(reason, 0) + n
            if row["state"] != "up":
                seen["state"], seen["probe_in"] = row["state"], max(seen["probe_in"], row["probe_in"])
    return {"parents": list(merged.values())}


class MachineAdmin:
    """``workers()`` gives the admin base URLs of the workers running now."""

    def __init__(
        self,
        bind: str,
        port: int,
        workers: Callable[[], list[str]],
        stopping: Callable[[], bool],
        token: str,
        log: logging.Logger,
        local: bool = False,
    ) -> None:
        self.workers = workers
        self.local = local
        self.journal: list[tuple[str, str, bytes | None, dict]] = []  # local writes, in order
        self._journal_lock = threading.Lock()
        self.token = token
        self.stopping = stopping
        self.log = log
        admin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                admin.answer(self, "GET")

            def do_PUT(self) -> None:
                admin.answer(self, "PUT")

            def do_DELETE(self) -> None:
                admin.answer(self, "DELETE")

        self.server = ThreadingHTTPServer((bind, port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="dprl-admin", daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # answers ---------------------------------------------------------------------------
    def answer(self, request: BaseHTTPRequestHandler, method: str) -> None:
        path = request.path.split("?", 1)[0]
        urls = self.workers()
        extra: list[tuple[str, str]] = []
        if path == "/healthz" and method == "GET":
            status, body, kind = _text(200, b"ok\n") if urls else _text(503, b"no worker running\n")
        elif path == "/readyz" and method == "GET":
            status, body, kind = self._ready(urls)
        elif path == "/metrics" and method == "GET":
            texts = [self._fetch(url + "/metrics")[1].decode() for url in urls]
            encoder, content_type = choose_encoder(request.headers.get("Accept") or "")
            status, body, kind = Answer(200, encoder(_Families(merge_metrics(texts))), content_type)
        elif path == "/hosts" and method == "GET":
            document = merge_hosts(json.loads(self._fetch(url + "/hosts")[1]) for url in urls)
            status, body, kind = _json(200, json.dumps(document, separators=(",", ":")).encode() + b"\n")
        elif path.startswith("/hosts/") and method == "GET":
            document = merge_hosts({"hosts": [json.loads(self._fetch(url + path)[1])]} for url in urls)
            status, body, kind = _json(200, json.dumps(document["hosts"][0]).encode() + b"\n")
        elif path in ("/", "/console.js") and method == "GET":
            page, kind = (console.PAGE, "text/html") if path == "/" else (console.SCRIPT, "text/javascript")
            status, body, kind = Answer(200, page, f"{kind}; charset=utf-8")
            extra = PAGE_HEADERS
        elif path == "/summary" and method == "GET":
            summaries = [json.loads(self._fetch(url + "/summary")[1]) for url in urls]
            status, body, kind = _json(200, json.dumps(merge_summaries(summaries, bool(self.token))).encode())
        elif path == "/history" and method == "GET":
            histories = [json.loads(self._fetch(url + request.path)[1]) for url in urls]
            status, body, kind = _json(200, json.dumps(merge_histories(histories)).encode())
        elif path == "/hosts" and method == "GET" and "?" in request.path:
            status, body, kind = self._table(request.path.split("?", 1)[1], urls)
        elif path == "/parents" and method == "GET":
            document = merge_parents(json.loads(self._fetch(url + "/parents")[1]) for url in urls)
            status, body, kind = _json(200, json.dumps(document).encode() + b"\n")
        elif path == "/limits" or path.startswith("/limits/"):
            status, body, kind = self._forward(request, method, urls)
        elif path == "/tenants" or path.startswith("/tenants/"):  # each worker's own, in every mode
            status, body, kind = self._forward(request, method, urls, everywhere=True)
        else:
            status, body, kind = _text(404, b"not found: try /metrics, /healthz, /readyz, /hosts or /parents\n")
        request.send_response(status)
        for name, value in extra:
            request.send_header(name, value)
        request.send_header("Content-Type", kind)
        request.send_header("Content-Length", str(len(body)))
        request.send_header("Cache-Control", "no-store")
        request.end_headers()
        request.wfile.write(body)

    def _ready(self, urls: list[str]) -> Answer:
        if self.stopping():
            return _text(503, b"not ready: shutting down\n")
        if not urls:
            return _text(503, b"not ready: no worker running\n")
        for url in urls:
            status, body = self._fetch(url + "/readyz")
            if status != 200:
                return _text(503, body)
        return _text(200, b"ready\n")

    def _forward(
        self, request: BaseHTTPRequestHandler, method: str, urls: list[str], everywhere: bool = False
    ) -> Answer:
        """Limits: one worker answers for all; in local mode (or ``everywhere``: tenant
        shares, never stored in Redis) every worker takes each write."""
        if not urls:
            return _text(503, b"no worker running\n")
        if method != "GET":
            given, bind = request.headers.get("Authorization") or "", str(self.server.server_address[0])
            refusal = write_refusal(self.token, given, request.client_address[0], bind)
            if refusal:
                return _text(403, f"forbidden: {refusal}\n".encode())
        length = int(request.headers.get("Content-Length") or 0)
        data = request.rfile.read(length) if length else None
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "x-dprl-source")}
        # the worker sees the supervisor's loopback address: the header carries the token on
        if method == "GET" or not (self.local or everywhere):
            status, body = self._fetch(urls[0] + request.path, method, data, headers)
        else:
            with self._journal_lock:
                answers = [self._fetch(url + request.path, method, data, headers) for url in urls]
                status, body = answers[0]
                if all(200 <= code < 300 for code, _ in answers):
                    self.journal.append((method, request.path, data, headers))
        return _json(status, body) if body.startswith(b"{") else _text(status, body)

    def _table(self, query_text: str, urls: list[str]) -> Answer:
        """/hosts as the console asks for it, for the machine: every worker's rows merged,
        then sorted, filtered and paged (or exported) here."""
        try:
            query = console.TableQuery.parse(query_text)
        except ValueError as exc:
            return _text(400, f"{exc}\n".encode())
        everything = "sort=host&order=asc"  # each worker's rows, with their rates per second
        documents = [json.loads(self._fetch(url + "/hosts?" + everything)[1]) for url in urls]
        merged = merge_hosts(documents)
        total, page = query.select(merged["hosts"])
        if query.csv:
            return Answer(200, console.csv_text(page).encode(), "text/csv; charset=utf-8")
        document = {"mode": merged["mode"], "default_limit": merged["default_limit"], "total": total}
        return _json(200, json.dumps({**document, "offset": query.offset, "hosts": page}).encode())

    def replay(self, url: str) -> None:
        """A worker that (re)started gets the limit changes made since the start, in order."""
        with self._journal_lock:
            for method, path, data, headers in self.journal:
                status, body = self._fetch(url + path, method, data, headers)
                if not 200 <= status < 300:
                    self.log.error("replaying %s %s to %s: %d %s", method, path, url, status, body[:200])

    def _fetch(self, url: str, method: str = "GET", data: bytes | None = None, headers: dict | None = None) -> Fetched:
        try:
            with urllib.request.urlopen(
                urllib.request.Request(url, data=data, method=method, headers=headers or {}), timeout=TIMEOUT
            ) as answer:
                return Fetched(answer.status, answer.read())
        except urllib.error.HTTPError as exc:
            return Fetched(exc.code, exc.read())
        except OSError as exc:
            return Fetched(503, f"worker unreachable: {exc}\n".encode())


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families
