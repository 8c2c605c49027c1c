"""The operator's console at GET / of the admin listener, in a real headless Chromium, against
a proxy with live tunnels: the at-cap row, sorting, filtering, the read-only notice, a limit
changed with the admin token, a hostile host name shown as text, and the CSV export."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from dprl import DistributedProxyRateLimiter, ProxyRateLimiter

from ..support.browser import Browser
from ..support.network import free_port, proxy_connect, wait_for
from ..support.proxy_process import ProxyProcess
from ..support.redis_server import RedisServer
from ..support.upstream import HoldingServer

TOKEN = "console-test-token"
HOSTILE = "<img src=x onerror=alert(1)>"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    chromium = Browser(tmp_path)
    yield chromium
    chromium.close()


@pytest.fixture
def origins() -> Iterator[list[HoldingServer]]:
    servers = [HoldingServer() for _ in range(2)]
    yield servers
    for server in servers:
        server.close()


def _row(host: str) -> str:
    return f'document.querySelector(`tr[data-host="{host}"]`)'


def _type_filter(browser: Browser, text: str) -> None:
    """Text in the filter box, as typing puts it there (an input event)."""
    value = json.dumps(text)
    browser.evaluate(
        f"(f => {{ f.value = {value}; f.dispatchEvent(new Event('input')); }})(document.getElementById('filter'))"
    )


def _in_order(rows: str, hosts: list[str]) -> str:
    """A JavaScript test: the expression ``rows`` lists exactly ``hosts``, in that order."""
    return f"JSON.stringify({rows}) === {json.dumps(json.dumps(hosts, separators=(',', ':')))}"


def test_the_console_shows_the_cap_sorts_filters_and_changes_a_limit_with_the_token(
    browser: Browser,
    origins: list[HoldingServer],
    make_proxy: Callable[..., ProxyRateLimiter],
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    caplog.set_level(logging.INFO, logger="dprl.test")
    proxy = make_proxy(3, admin_port=free_port(), admin_token=TOKEN)
    full, light = (f"127.0.0.1:{origin.port}" for origin in origins)
    held = [proxy_connect(proxy, full)[0] for _ in range(3)] + [proxy_connect(proxy, light)[0]]
    try:
        browser.open(proxy.admin_url + "/")
        browser.wait(_row(full), what="the at-cap host's row")
        assert browser.evaluate(f"{_row(full)}.querySelector('.use').textContent") == "3 / 3"
        assert browser.evaluate(f"{_row(full)}.className") == "full"
        at_cap = browser.evaluate(f"getComputedStyle({_row(full)}).backgroundColor")
        assert at_cap == "rgb(255, 217, 214)" != browser.evaluate(f"getComputedStyle({_row(light)}).backgroundColor")
        assert browser.evaluate(f"{_row(light)}.querySelector('.use').textContent") == "1 / 3"
        assert browser.evaluate(f"{_row(light)}.className") == ""
        assert "Read-only" in browser.evaluate("document.getElementById('notice').textContent")
        assert browser.evaluate(f"{_row(full)}.querySelector('button')") is None  # nothing to press
        assert browser.evaluate("getComputedStyle(document.getElementById('tenants')).display") == "none"

        order = "[...document.querySelectorAll('#rows tr')].map(r => r.dataset.host)"
        assert browser.evaluate(order) == [full, light]  # busiest first
        browser.evaluate("document.querySelector('th[data-sort=\"host\"]').click()")
        descending = sorted([full, light], reverse=True)
        browser.wait(_in_order(order, descending), what="rows sorted by host")
        browser.evaluate("document.querySelector('th[data-sort=\"host\"]').click()")
        browser.wait(_in_order(order, sorted([full, light])), what="ascending")

        port = light.rsplit(":", 1)[1]
        _type_filter(browser, port)
        browser.wait(_in_order(order, [light]), what="only the filtered host")
        _type_filter(browser, "")
        browser.wait(f"{order}.length === 2", what="both hosts again")
        shot = tmp_path / "console.png"
        browser.screenshot(shot)
        if os.environ.get("DPRL_SCREENSHOT_DIR"):  # for the README's picture (docs/console.png)
            shutil.copy(shot, Path(os.environ["DPRL_SCREENSHOT_DIR"]) / "console.png")

        # with the token (kept in this tab's sessionStorage): raise the cap to 4 from the page
        browser.evaluate(f"sessionStorage.setItem('dprl-admin-token', '{TOKEN}')")
        browser.evaluate("refresh()")
        browser.wait(f"{_row(full)}.querySelector('button')", what="the limit button")
        assert "unlocked" in browser.evaluate("document.getElementById('notice').className")
        browser.evaluate("window.prompt = () => '4'")
        browser.evaluate(f"{_row(full)}.querySelector('button').click()")
        browser.wait("document.getElementById('notice').textContent.includes('changed')", what="the change made")
        sock, head = proxy_connect(proxy, full)
        held.append(sock)
        assert head.startswith(b"HTTP/1.1 200"), "a fourth connection after the page raised the cap"
        changes = [r.getMessage() for r in caplog.records if "limit changed" in r.getMessage()]
        assert len(changes) == 1 and "the console at 127.0.0.1" in changes[0] and f"{full}=4" in changes[0]
        browser.evaluate("window.prompt = () => '50/s'")  # a rate, from the same button
        browser.evaluate(f"{_row(full)}.querySelector('button').click()")
        browser.wait("document.getElementById('notice').textContent.includes('rate of')", what="the rate set")
        browser.wait(f"{_row(full)} && {_row(full)}.children[4].textContent === '50/s'", what="the rate shown")
        browser.evaluate("window.prompt = () => 'batch=1:max=50%'")  # a tenant share, from the page
        browser.evaluate("document.getElementById('share').click()")
        browser.wait("document.getElementById('shares').textContent === 'batch=1:max=50%'", what="the share shown")
        assert {k: str(v) for k, v in proxy.tenant_shares().items()} == {"batch": "1:max=50%"}
        assert not browser.dialogs and not browser.console_errors
    finally:
        for sock in held:
            sock.close()


def test_a_hostile_host_name_is_rendered_as_text(
    browser: Browser, redis_server: RedisServer, redis_prefix: str
) -> None:
    """Host names reach the page from clients and from Redis (a stored limit's key is not
    checked when read): one that is markup shows as its text, and opens no dialog."""
    proxy = DistributedProxyRateLimiter(
        port=0,
        max_connections_per_host=3,
        redis_url=redis_server.url,
        redis_prefix=redis_prefix,
        admin_port=free_port(),
    ).start()
    client = redis_server.client()
    try:
        hosts, _, version, *_ = (f"{redis_prefix}:{{limits}}:{name}" for name in ("hosts", "default", "version"))
        client.hset(hosts, HOSTILE, 5)
        client.incr(version)
        wait_for(lambda: HOSTILE in requests.get(proxy.admin_url + "/hosts", timeout=5).text, 5, "the stored key")
        browser.open(proxy.admin_url + "/")
        browser.wait("document.querySelectorAll('#rows tr').length > 0", what="the table")
        cells = "[...document.querySelectorAll('#rows td.host')]"
        assert browser.evaluate(f"{cells}.map(td => td.textContent)") == [HOSTILE]
        assert "&lt;img" in browser.evaluate(f"{cells}[0].innerHTML")
        assert browser.evaluate("document.querySelectorAll('#rows img').length") == 0
        assert not browser.dialogs, browser.dialogs
    finally:
        client.delete(hosts, version)
        client.close()
        proxy.stop(timeout=2)


def test_the_csv_export_matches_hosts_and_bad_queries_get_400(
    origins: list[HoldingServer], make_proxy: Callable[..., ProxyRateLimiter]
) -> None:
    proxy = make_proxy(3, admin_port=free_port(), host_limits={"api.example.com": 9})
    held = [proxy_connect(proxy, f"127.0.0.1:{origins[0].port}")[0] for _ in range(2)]
    try:
        rows = requests.get(proxy.admin_url + "/hosts", timeout=5).json()["hosts"]
        exported = requests.get(proxy.admin_url + "/hosts?format=csv&sort=host&order=asc", timeout=5)
        assert exported.headers["Content-Type"].startswith("text/csv")
        parsed = list(csv.DictReader(io.StringIO(exported.text)))
        assert [r["host"] for r in parsed] == sorted(r["host"] for r in rows)
        for line in parsed:
            row = next(r for r in rows if r["host"] == line["host"])
            assert (int(line["open"]), int(line["limit"]), int(line["waiting"])) == (
                row["open"],
                row["limit"],
                row["waiting"],
            )
        page = requests.get(proxy.admin_url + "/hosts?limit=1&offset=1&sort=host&order=asc", timeout=5).json()
        assert page["total"] == len(rows) and [r["host"] for r in page["hosts"]] == sorted(r["host"] for r in rows)[1:2]
        for bad in ("sort=nope", "limit=0", "limit=501", "offset=-1", "order=up", "format=xml", "color=red"):
            assert requests.get(f"{proxy.admin_url}/hosts?{bad}", timeout=5).status_code == 400, bad
        page_headers = requests.get(proxy.admin_url + "/", timeout=5).headers
        assert "script-src 'self'" in page_headers["Content-Security-Policy"]
    finally:
        for sock in held:
            sock.close()


def test_under_workers_the_supervisor_serves_the_machines_page(browser: Browser, origins: list[HoldingServer]) -> None:
    """--workers 2: the page shows the machine's count (both workers' tunnels together)."""
    admin = free_port()
    proc = ProxyProcess(
        *("--workers", "2", "--max-connections", "3", "--admin-port", str(admin), "--shutdown-timeout", "2")
    )
    held = []
    try:
        proc.wait_line("dprl supervisor listening")
        target = f"127.0.0.1:{origins[0].port}"
        held = [proxy_connect(proc.port, target)[0] for _ in range(3)]
        origins[0].wait_active(3)
        browser.open(f"http://127.0.0.1:{admin}/")
        browser.wait(f"{_row(target)} && {_row(target)}.querySelector('.use').textContent === '3 / 3'", what="3 / 3")
        assert browser.evaluate(f"{_row(target)}.className") == "full"
        assert "2 workers" in browser.evaluate("document.getElementById('mode').textContent")
        summary = requests.get(f"http://127.0.0.1:{admin}/summary", timeout=5).json()
        assert summary["open"] == 3 and summary["writable"] is False
        assert not browser.dialogs
    finally:
        for sock in held:
            sock.close()
        assert proc.stop(timeout=30) == 0


def test_tenant_shares_change_through_the_admin_listener_with_the_token(
    make_proxy: Callable[..., ProxyRateLimiter], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dprl.test")
    proxy = make_proxy(3, admin_port=free_port(), admin_token=TOKEN, tenant_shares={"a": "3"})
    url, auth = f"{proxy.admin_url}/tenants", {"Authorization": f"Bearer {TOKEN}"}
    assert requests.get(url, timeout=5).json() == {"a": "3"}
    assert requests.put(f"{url}/b", data="1", timeout=5).status_code == 403  # no token
    assert requests.put(f"{url}/b", data="0", headers=auth, timeout=5).status_code == 400
    assert requests.put(f"{url}/b", data="1:max=50%", headers=auth, timeout=5).json() == {"a": "3", "b": "1:max=50%"}
    assert requests.delete(f"{url}/a", headers=auth, timeout=5).json() == {"b": "1:max=50%"}
    changes = [r.getMessage() for r in caplog.records if "tenant share changed" in r.getMessage()]
    assert changes == [
        "tenant share changed by admin client 127.0.0.1: b=1:max=50%",
        "tenant share changed by admin client 127.0.0.1: a removed",
    ]


def test_each_hosts_history_is_sampled_every_five_seconds(
    origins: list[HoldingServer], make_proxy: Callable[..., ProxyRateLimiter]
) -> None:
    """The sparklines' data: a host's in use and refusals, one sample every 5 s."""
    proxy = make_proxy(2, admin_port=free_port())
    target = f"127.0.0.1:{origins[0].port}"
    held = [proxy_connect(proxy, target)[0] for _ in range(2)]
    refused, head = proxy_connect(proxy, target)  # at the cap: one refusal
    refused.close()
    assert head.startswith(b"HTTP/1.1 500")
    try:
        url = f"{proxy.admin_url}/history?hosts={target},never.example"
        wait_for(lambda: len(requests.get(url, timeout=5).json().get(target, {}).get("t", [])) >= 2, 12, "two samples")
        line = requests.get(url, timeout=5).json()
        assert list(line) == [target]  # a host never seen has no line
        assert line[target]["open"][-1] == 2 and sum(line[target]["refused"]) == 0  # refused before the 1st sample
        assert 4 <= line[target]["t"][-1] - line[target]["t"][-2] <= 6
        rows = requests.get(f"{proxy.admin_url}/hosts?sort=opened_per_s", timeout=5).json()["hosts"]
        assert rows[0]["host"] == target and "opened_per_s" in rows[0]
    finally:
        for sock in held:
            sock.close()
