"""The admin listener: the console (/), /metrics, /healthz, /readyz, /hosts, on a port of its own.

Served by gevent's WSGI server in the proxy's hub, never through the proxy port. A
request copies what it shows in the hub (``snapshot.take``) and renders it in gevent's
thread pool, so the proxy's loop is not stalled by a scrape of many hosts.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import time
from collections.abc import Callable, Iterable
from urllib.parse import unquote

import gevent
from gevent.pool import Pool
from gevent.pywsgi import WSGIServer

from ..background import Background
from ..errors import LimiterUnavailable, ListenError
from ..limits.hosts import normalize_host_spec, normalize_limit_spec
from ..limits.rates import Rate, parse_rate
from ..limits.tenants import check_tenant_name, parse_share
from ..proxy.server import ProxyServer
from . import console, snapshot
from .exposition import Rendered, host_row, host_rows, render_metrics

StartResponse = Callable[..., object]
_TEXT = "text/plain; charset=utf-8"
_JSON = "application/json"
# The console and its script: nothing but this listener's own scripts and requests, no frame
PAGE_HEADERS = [
    ("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'"),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
]


class _ErrorLog:
    """pywsgi writes its errors to a file-like object: send them to our logger instead."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log

    def write(self, text: str) -> None:
        if text.strip():
            self.log.debug("admin: %s", text.rstrip())

    def flush(self) -> None:
        pass


class AdminServer:
    def __init__(self, proxy: ProxyServer, bind: str, port: int, log: logging.Logger) -> None:
        self.proxy = proxy
        self.log = log
        self.address = (bind, port)
        self.wsgi = WSGIServer(self.address, self.app, log=None, error_log=_ErrorLog(log), spawn=Pool(100))
        self.history = console.History(proxy.limiter.stats.max_hosts)
        self._sampler = Background(self._sample)
        self.started = time.time()

    @property
    def port(self) -> int:
        return self.wsgi.server_port

    def start(self) -> None:
        try:
            self.wsgi.start()
        except OSError as exc:
            bind, port = self.address
            raise ListenError(exc.errno, f"cannot listen on admin {bind}:{port}: {exc.strerror or exc}") from None
        self._sampler.start()

    def stop(self) -> None:
        self._sampler.stop(block=False)
        self.wsgi.stop(timeout=1)

    def _sample(self) -> None:
        """Every host's recent history, for the console's sparklines and rates per second."""
        limiter = self.proxy.limiter
        while True:
            fleet = limiter.seen_fleet_counts() or {}
            counts = {**snapshot.hosts_only(limiter.process_counts()), **snapshot.hosts_only(fleet)}
            self.history.sample(limiter.stats, counts)
            gevent.sleep(console.STEP)

    def _summary(self, shot: snapshot.Snapshot) -> dict[str, object]:
        """The console's header: mode, where the counts live, uptime and totals (sums of the
        snapshot's counts: no row is built)."""
        return {
            "mode": shot.mode,
            "describe": self.proxy.limiter.describe(),
            "uptime": round(time.time() - self.started, 1),
            "clients": shot.clients,
            "hosts": len(shot.listed_hosts()),
            "open": sum(shot.open.values()),
            "fleet_open": sum(shot.fleet.values()) if shot.fleet is not None else None,
            "waiting": sum(shot.waiting.values()),
            "refused_last_minute": sum(c.refused_recently(shot.taken) for c in shot.counters.values()),
            "backend_up": shot.backend_up,
            "writable": bool(self.proxy.settings.admin_token),
        }

    # the application -----------------------------------------------------------------------
    def app(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/")
        if path == "/limits" or path.startswith("/limits/"):
            return self._limits(environ, start_response, method, unquote(path[len("/limits/") :]))
        if path == "/tenants" or path.startswith("/tenants/"):
            return self._tenants(environ, start_response, method, unquote(path[len("/tenants/") :]))
        if method not in ("GET", "HEAD"):
            return _reply(start_response, 405, b"only GET and HEAD\n", _TEXT, [("Allow", "GET, HEAD")])
        if path == "/metrics":
            body, content_type = self._render(lambda shot: render_metrics(shot, environ.get("HTTP_ACCEPT")))
            return _reply(start_response, 200, body, content_type)
        if path == "/healthz":
            return _reply(start_response, 200, b"ok\n", _TEXT)
        if path == "/readyz":
            reason = "shutting down" if self.proxy.stopping else self.proxy.limiter.probe()
            if reason:
                return _reply(start_response, 503, f"not ready: {reason}\n".encode(), _TEXT)
            return _reply(start_response, 200, b"ready\n", _TEXT)
        if path == "/":
            return _reply(start_response, 200, console.PAGE, "text/html; charset=utf-8", PAGE_HEADERS)
        if path == "/console.js":
            return _reply(start_response, 200, console.SCRIPT, "text/javascript; charset=utf-8", PAGE_HEADERS)
        if path == "/summary":
            body, _ = self._render(lambda shot: Rendered(_json(self._summary(shot)), _JSON))
            return _reply(start_response, 200, body, _JSON)
        if path == "/history":
            listed = environ.get("QUERY_STRING", "").removeprefix("hosts=").split(",")
            keys = [unquote(k) for k in listed if k]  # split first: a name may hold an encoded comma
            return _reply(start_response, 200, _json(self.history.of(keys[: console.MAX_PAGE])), _JSON)
        if path == "/parents":
            body, _ = self._render(lambda shot: Rendered(_json({"parents": shot.parents}), _JSON))
            return _reply(start_response, 200, body, _JSON)
        if path in ("/hosts", "/hosts/"):
            query_text = environ.get("QUERY_STRING", "")
            if not query_text:
                body, _ = self._render(lambda shot: Rendered(_hosts_document(shot), _JSON))
                return _reply(start_response, 200, body, _JSON)
            try:
                query = console.TableQuery.parse(query_text)
            except ValueError as exc:
                return _reply(start_response, 400, f"{exc}\n".encode(), _TEXT)
            rates = self.history.rates
            body, kind = self._render(lambda shot: _hosts_table(shot, query, rates))
            return _reply(start_response, 200, body, kind)
        if path.startswith("/hosts/"):
            try:
                key = normalize_host_spec(unquote(path[len("/hosts/") :]))
            except ValueError as exc:
                return _reply(start_response, 400, f"not a host: {exc}\n".encode(), _TEXT)
            body, _ = self._render(lambda shot: Rendered(_json(host_row(shot, key)), _JSON))
            return _reply(start_response, 200, body, _JSON)
        return _reply(start_response, 404, b"not found: try /metrics, /healthz, /readyz, /hosts or /parents\n", _TEXT)

    # /limits -------------------------------------------------------------------------------
    def _limits(self, environ: dict, start_response: StartResponse, method: str, host: str) -> list[bytes]:
        limits, limiter = self.proxy.limiter.limits, self.proxy.limiter
        if method in ("GET", "HEAD") and not host:
            document: dict[str, object] = {
                "mode": limiter.mode,
                "default": limits.effective_default(),
                "process": {
                    "default": limits.default,
                    "limits": {**limits.overrides(), **limits.patterns()},
                    "default_rate": _shown(limits.default_rate),
                    "rates": {key: str(rate) for key, rate in limits.rates().items()},
                },
            }
            if limiter.mode == "redis":
                document["fleet"] = {
                    "default": limits.stored_default,
                    "limits": limits.stored(),
                    "default_rate": _shown(limits.stored_default_rate),
                    "rates": {key: str(rate) for key, rate in limits.stored_rates().items()},
                }
            return _reply(start_response, 200, _json(document), _JSON)
        refused = self._write_gate(environ, start_response, method, host)
        if refused is not None:
            return refused
        try:
            key = normalize_limit_spec(host)
            limit, rate = 0, None
            of_rate = "rate" in environ.get("QUERY_STRING", "").split("&")  # DELETE /limits/HOST?rate
            if method == "PUT":
                text = environ["wsgi.input"].read(64).decode().strip()
                if "/" in text:  # a rate: 10/s, 600/m:burst=20
                    rate, of_rate = parse_rate(text), True
                elif not text.isdigit():
                    raise ValueError(f"the body must be a whole number, or a rate (10/s), got {text!r}")
                else:
                    limit = int(text)
        except ValueError as exc:
            return _reply(start_response, 400, f"{exc}\n".encode(), _TEXT)
        by = _source(environ)
        if limiter.mode == "redis":
            op = ("setrate" if rate is not None else "rmrate") if of_rate else ("set" if method == "PUT" else "rm")
            try:
                limiter.change_stored_limit(op, key, limit, by, str(rate or ""))  # type: ignore[attr-defined]  # mode "redis": a RedisLimiter
            except LimiterUnavailable as exc:
                return _reply(start_response, 503, f"{exc}\n".encode(), _TEXT)
        elif of_rate:
            limits.set_rate(key, rate)
            self.log.info("rate changed by %s: %s", by, f"{key}={rate}" if rate is not None else f"{key} removed")
        else:
            limits.set(key, limit)  # 0 removes, as in the library
            self.log.info("limit changed by %s: %s", by, f"{key}={limit}" if method == "PUT" else f"{key} removed")
        answer: dict[str, object] = {"host": key, "limit": limits.limit_for(key)}
        if of_rate or limits.rate_for(key) is not None:
            answer["rate"] = _shown(limits.rate_for(key))
        return _reply(start_response, 200, _json(answer), _JSON)

    # /tenants ------------------------------------------------------------------------------
    def _tenants(self, environ: dict, start_response: StartResponse, method: str, name: str) -> list[bytes]:
        """Tenant shares of this process (not stored in Redis: each process has its own, as
        from its configuration): GET them all, PUT or DELETE one (the same rules as /limits)."""
        tenants = self.proxy.limiter.tenants
        if method in ("GET", "HEAD") and not name:
            return _reply(start_response, 200, _json({k: str(v) for k, v in tenants.shares().items()}), _JSON)
        refused = self._write_gate(environ, start_response, method, name)
        if refused is not None:
            return refused
        try:
            share = None
            if method == "PUT":
                name, share = parse_share(f"{name}={environ['wsgi.input'].read(64).decode().strip()}")
            tenants.set(check_tenant_name(name), share)
        except ValueError as exc:
            return _reply(start_response, 400, f"{exc}\n".encode(), _TEXT)
        by = _source(environ)
        self.log.info(
            "tenant share changed by %s: %s", by, f"{name}={share}" if share is not None else f"{name} removed"
        )
        return _reply(start_response, 200, _json({k: str(v) for k, v in tenants.shares().items()}), _JSON)

    def _write_gate(self, environ: dict, start_response: StartResponse, method: str, item: str) -> list[bytes] | None:
        """The answer to a write that may not be made (405, 403), or None: it may."""
        if method not in ("PUT", "DELETE") or not item:
            allowed = "GET, HEAD" if not item else "PUT, DELETE"
            return _reply(start_response, 405, f"{allowed} here\n".encode(), _TEXT, [("Allow", allowed)])
        refusal = self._write_refusal(environ)
        if refusal:
            return _reply(start_response, 403, f"forbidden: {refusal}\n".encode(), _TEXT)
        return None

    def _write_refusal(self, environ: dict) -> str:
        token, given = self.proxy.settings.admin_token, environ.get("HTTP_AUTHORIZATION", "")
        return write_refusal(token, given, environ.get("REMOTE_ADDR", ""), self.address[0])

    def _render(self, render: Callable[[snapshot.Snapshot], Rendered]) -> Rendered:
        """Copy in the hub, render in a pool thread (the hub serves the proxy meanwhile)."""
        shot = snapshot.take(self.proxy.limiter, len(self.proxy.sessions), self.proxy.parents)
        return gevent.get_hub().threadpool.apply(render, (shot,))


def _source(environ: dict) -> str:
    """Who made a change, for the log line: the console, or another admin client."""
    if environ.get("HTTP_X_DPRL_SOURCE") == "console":
        return f"the console at {environ.get('REMOTE_ADDR')}"
    return f"admin client {environ.get('REMOTE_ADDR')}"


def write_refusal(token: str, authorization: str, remote: str, bind: str) -> str:
    """Why a client may not change limits ("" if it may): with --admin-token, the Bearer
    token; without one, only from loopback (or the admin bind address itself)."""
    if token:
        if not hmac.compare_digest(authorization.encode(), f"Bearer {token}".encode()):
            return "admin writes need the Bearer token of --admin-token"
        return ""
    if remote != bind and not ipaddress.ip_address(remote.split("%")[0]).is_loopback:
        return "without --admin-token, admin writes are taken from loopback only"
    return ""


def _hosts_table(shot: snapshot.Snapshot, query: console.TableQuery, rates: dict[str, tuple[float, float]]) -> Rendered:
    """/hosts as the console asks for it: sorted, filtered and one page of it (JSON with the
    total), or every matching row as CSV. Hosts are ordered by key; rows are built for the
    page alone."""
    open_, fleet, limits = shot.open, shot.fleet or {}, shot.limits

    def limit_of(key: str) -> int:  # a host's own limit is in the snapshot: no policy to work out
        own = limits.get(key)
        return own if own is not None else shot.limit_for(key)

    def value(key: str, sort: str) -> object:
        in_use = max(open_.get(key, 0), fleet.get(key, 0))
        if sort in ("open", "use"):
            limit = limit_of(key)
            return in_use if sort == "open" else (in_use / limit if limit else -1.0)
        if sort == "limit":
            return limit_of(key)
        if sort == "waiting":
            return shot.waiting.get(key, 0)
        if sort == "refused_last_minute":
            return shot.refused_recently(key)
        if sort == "opened_per_s":
            return rates.get(key, (0.0, 0.0))[0]
        if sort == "rate":
            rate = shot.rate_for(key)
            return rate.per_second if rate is not None else -1.0
        return key  # "host"

    total, keys = query.pick(shot.listed_hosts(), value)
    page = []
    for key in keys:
        row = host_row(shot, key)
        opened, refused = rates.get(key, (0.0, 0.0))
        row["opened_per_s"], row["refused_per_s"] = round(opened, 2), round(refused, 2)
        page.append(row)
    if query.csv:
        return Rendered(console.csv_text(page).encode(), "text/csv; charset=utf-8")
    document = {"mode": shot.mode, "default_limit": shot.default_limit, "total": total, "offset": query.offset}
    head = _json({**document, "hosts": []})[: -len(b"]}\n")]
    return Rendered(head + ",".join(json.dumps(r, separators=(",", ":")) for r in page).encode() + b"]}\n", _JSON)


def _hosts_document(shot: snapshot.Snapshot) -> bytes:
    """/hosts as JSON, encoded a row at a time: one json.dumps of 20,000 rows would hold the
    GIL for tens of milliseconds, and the proxy's loop would wait for it."""
    head = _json({"mode": shot.mode, "default_limit": shot.default_limit, "hosts": []})[: -len(b"]}\n")]
    rows = ",".join(json.dumps(row, separators=(",", ":")) for row in host_rows(shot))
    return head + rows.encode() + b"]}\n"


def _shown(rate: Rate | None) -> str | None:
    return None if rate is None else str(rate)


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"


def _reply(
    start_response: StartResponse,
    status: int,
    body: bytes,
    content_type: str,
    extra: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    reason = {
        200: "OK",
        400: "Bad Request",
        403: "Forbidden",
        404: "Not Found",
        405: "Method Not Allowed",
        503: "Service Unavailable",
    }
    headers = [("Content-Type", content_type), ("Content-Length", str(len(body))), ("Cache-Control", "no-store")]
    start_response(f"{status} {reason[status]}", headers + (extra or []))
    return [body]
