"""Secrets are never shown: a recognisable password, given in every way dprl takes one,
appears in no log line (text or JSON, at debug level), no error, no admin page, no metric,
no ``dprl status`` or ``dprl limits`` output, no SIGUSR1 status line, in every mode."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
import requests

from ..support.network import free_port
from ..support.proxy_process import ProxyProcess
from ..support.redis_server import ClusterSetup, RedisServer, SentinelSetup

SECRET = "Xyzzy-s3cret-Pa55w0rd"
pytestmark = pytest.mark.faults  # starts Redis servers, a Sentinel and a Cluster


def _hidden(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text, f"the secret was shown: ...{text[max(0, text.find(SECRET) - 200) :][:400]}..."


def _run(*args: str) -> str:
    """A dprl subcommand's whole output (stdout and stderr)."""
    run = subprocess.run([sys.executable, "-m", "dprl", *args], capture_output=True, text=True, timeout=60, check=False)
    return f"exit {run.returncode}\n{run.stdout}\n{run.stderr}"


def _exercise(proc: ProxyProcess, admin_port: int, upstream_port: int, redis_url: str = "") -> list[str]:
    """Traffic, every admin page, SIGUSR1, ``dprl status`` (and ``dprl limits``), then a stop:
    everything the process and its tools showed."""
    shown: list[str] = []
    try:
        admin = f"http://127.0.0.1:{admin_port}"
        proxies = {"http": f"http://user:{SECRET}@127.0.0.1:{proc.port}"}
        for _ in range(3):
            with pytest.raises(requests.RequestException):  # nothing listens upstream: 502, or a refusal
                requests.get(f"http://127.0.0.1:{upstream_port}/x", proxies=proxies, timeout=10).raise_for_status()
        requests.get(f"http://127.0.0.1:{upstream_port}/x", proxies={"http": proc.url}, timeout=10)  # 407
        pages = (
            "/metrics",
            "/hosts",
            "/parents",
            "/summary",
            "/tenants",
            "/",
            "/hosts?format=csv",
            "/readyz",
            "/healthz",
        )
        for path in (*pages, f"/hosts/127.0.0.1:{upstream_port}"):
            shown.append(requests.get(admin + path, timeout=10).text)
        shown.append(requests.put(f"{admin}/limits/api.example", json={"limit": 3}, timeout=10).text)
        shown.append(requests.put(f"{admin}/limits/x", headers={"Authorization": "Bearer wrong"}, timeout=10).text)
        token = {"Authorization": f"Bearer {SECRET}"}
        written = requests.put(f"{admin}/limits/api.example", data="3", headers=token, timeout=10)
        shown += [written.text, requests.get(f"{admin}/limits", timeout=10).text]
        shown.append(requests.delete(f"{admin}/limits/api.example", headers=token, timeout=10).text)
        lines = len(proc.lines)
        proc.proc.send_signal(signal.SIGUSR1)
        proc.wait_line("status: clients=", start=lines)
        shown.append(_run("status", "--admin", admin))
        if redis_url:
            shown.append(_run("status", "--redis-url", redis_url))
            shown.append(_run("limits", "--redis-url", redis_url, "set", "api.example", "4"))
            shown.append(_run("limits", "--redis-url", redis_url, "list"))
            shown.append(_run("limits", "--redis-url", redis_url, "rm", "api.example"))
    finally:
        proc.stop()  # also when a step above failed: no process outlives its test
    shown.append("\n".join(proc.lines))
    return shown


def _start(*args: str, workers: str = "1", env: dict[str, str] | None = None) -> tuple[ProxyProcess, int]:
    admin = free_port()
    common = ["--log-level", "debug", "--access-log", "true", "--admin-port", str(admin), "--workers", workers]
    common += ["--proxy-auth", f"user:{SECRET}", "--admin-token", SECRET]
    proc = ProxyProcess(*common, *args, env=env)
    if workers != "1":
        proc.wait_line("dprl supervisor listening")  # a worker's line comes first
    return proc, admin


@pytest.fixture
def secret_redis() -> Iterator[RedisServer]:
    server = RedisServer(password=SECRET)
    yield server
    server.stop()


@pytest.mark.parametrize("log_format", ["text", "json"])
@pytest.mark.parametrize("workers", ["1", "2"])
def test_local_mode(log_format: str, workers: str) -> None:
    proc, admin = _start("--log-format", log_format, workers=workers)
    _hidden(*_exercise(proc, admin, free_port()))


@pytest.mark.parametrize("workers", ["1", "2"])
def test_parent_proxy_credentials(workers: str) -> None:
    """Parents that never answer, with the secret as their password: tried, failed,
    ejected, named in 502s, pages, metrics and logs, never with their credentials."""
    http = f"http://scraper:{SECRET}@127.0.0.1:{free_port()}?max=3"
    socks = f"socks5://scraper:{SECRET}@127.0.0.1:{free_port()}"
    proc, admin = _start("--parent-pool", f"p={http},{socks}", "--route", "*=p", workers=workers)
    _hidden(*_exercise(proc, admin, free_port()))


@pytest.mark.parametrize("workers", ["1", "2"])
def test_redis_url_and_addr(secret_redis: RedisServer, workers: str) -> None:
    proc, admin = _start("--redis-url", secret_redis.url, "--log-format", "json", workers=workers)
    _hidden(*_exercise(proc, admin, free_port(), secret_redis.url))
    address = f"127.0.0.1:{secret_redis.port}"
    env = {"REDIS_ADDR": address, "REDIS_PASSWORD": SECRET}
    proc, admin = _start(workers=workers, env=env)
    _hidden(*_exercise(proc, admin, free_port()))


def test_sentinel_and_cluster() -> None:
    sentinel = SentinelSetup(password=SECRET)
    try:
        proc, admin = _start("--redis-url", sentinel.url)
        _hidden(*_exercise(proc, admin, free_port(), sentinel.url))
    finally:
        sentinel.stop()
    cluster = ClusterSetup(password=SECRET)
    try:
        proc, admin = _start("--redis-url", cluster.url())
        _hidden(*_exercise(proc, admin, free_port(), cluster.url()))
    finally:
        cluster.stop()


def test_unreachable_redis_and_a_wrong_password(secret_redis: RedisServer) -> None:
    closed = f"redis://user:{SECRET}@127.0.0.1:{free_port()}/0"
    proc, admin = _start("--redis-url", closed, "--redis-timeout", "0.2")
    shown = _exercise(proc, admin, free_port(), closed)
    assert any("Redis unavailable" in line for line in proc.lines)
    _hidden(*shown)
    wrong = f"redis://:{SECRET}-not@127.0.0.1:{secret_redis.port}/0"
    proc, admin = _start("--redis-url", wrong, "--redis-timeout", "0.2")
    shown = _exercise(proc, admin, free_port(), wrong)
    assert any("AUTH" in line or "WRONGPASS" in line for line in proc.lines), proc.lines[-20:]
    _hidden(*shown)


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{SECRET}@127.0.0.1:notaport/0",
        f"redis://:{SECRET}@127.0.0.1/x",
        f"redis+sentinel://:{SECRET}@127.0.0.1:26379",
        f"redis+cluster://:{SECRET}@127.0.0.1:7000/3",
        f"redis://127.0.0.1/0?password={SECRET}&bogus=1",
        f"redis+nonsense://:{SECRET}@127.0.0.1",
    ],
)
def test_a_bad_url_is_refused_without_showing_its_password(url: str) -> None:
    for args in (["--redis-url", url], ["status", "--redis-url", url], ["limits", "--redis-url", url, "list"]):
        output = _run(*args)
        assert output.startswith("exit 2"), output
        assert "Traceback" not in output
        _hidden(output)


def test_the_library_config_repr_masks_secrets() -> None:
    from dprl import Config

    config = Config(redis_url=f"redis://u:{SECRET}@h:1/0", proxy_auth=f"u:{SECRET}", admin_token=SECRET)
    _hidden(repr(config), str(config))
