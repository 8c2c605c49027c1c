"""dprl embedded under ``gunicorn -k gevent -w 2``, the most common legacy gevent stack: each
worker starts its proxy in ``post_worker_init`` (after gevent's monkey-patching, in the
worker's own hub) and stops it in ``worker_exit``; a WSGI app sends its requests out
through it. Distributed, the cap holds across both workers at a counting upstream and a
SIGTERM to gunicorn leaves no key in Redis; local, each worker has a cap of its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from ..support.network import free_port
from ..support.redis_server import RedisServer, leftover_keys
from ..support.upstream import CountingUpstream

APP = textwrap.dedent(
    """
    import os

    import requests

    from dprl import DistributedProxyRateLimiter, ProxyRateLimiter

    proxy = None


    def start_proxy():
        global proxy
        if os.environ.get("REDIS_URL"):
            proxy = DistributedProxyRateLimiter(
                max_connections_per_host=2, redis_url=os.environ["REDIS_URL"], redis_prefix=os.environ["PREFIX"]
            )
        else:
            proxy = ProxyRateLimiter(max_connections_per_host=2)
        proxy.start()


    def stop_proxy():
        if proxy is not None:
            proxy.stop()


    def application(environ, start_response):
        url = f"{os.environ['UPSTREAM']}/hold?pid={os.getpid()}"
        answer = requests.get(url, proxies={"http": proxy.proxy_url}, timeout=30)
        body = f"{os.getpid()} {answer.status_code}".encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
    """
)

CONFIG = textwrap.dedent(
    """
    workers = 2
    worker_class = "gevent"
    reuse_port = True  # the kernel spreads connections over both workers
    graceful_timeout = 5


    def post_worker_init(worker):  # after gevent patched the worker: the proxy runs in its hub
        import app

        app.start_proxy()


    def worker_exit(server, worker):  # every slot and lease given back
        import app

        app.stop_proxy()
    """
)


def run_gunicorn(tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "gunicorn.conf.py").write_text(CONFIG)
    port = free_port()
    gunicorn = Path(sys.executable).with_name("gunicorn")
    proc = subprocess.Popen(
        [str(gunicorn), "-c", "gunicorn.conf.py", "-b", f"127.0.0.1:{port}", "app:application"],
        cwd=tmp_path,
        env={**os.environ, **env, "PYTHONPATH": f"{tmp_path}:{os.getcwd()}"},
        stderr=subprocess.PIPE,
        text=True,
    )
    booted = 0
    assert proc.stderr is not None
    for line in proc.stderr:
        booted += "Booting worker" in line
        if booted == 2:
            break
    threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep the pipe drained
    return proc, port


def fetch_until_held(port: int, upstream: CountingUpstream, held: int) -> list[tuple[int, int]]:
    """App requests one every 20 ms (a burst could all be taken by one worker's accept
    loop) until ``held`` are held at the upstream and both workers have answered, then let
    them finish. (worker pid, status the proxy gave) of each."""
    answers: list[tuple[int, int]] = []
    threads = []

    def one() -> None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as reply:
            pid, status = reply.read().split()
            answers.append((int(pid), int(status)))

    deadline = time.monotonic() + 20
    while upstream.active < held or len({pid for pid, _ in answers}) < 2:
        assert time.monotonic() < deadline, (upstream.active, answers)
        threads.append(threading.Thread(target=one))
        threads[-1].start()
        time.sleep(0.02)
    upstream.release()
    for thread in threads:
        thread.join(30)
    assert len(answers) == len(threads)
    return answers


@pytest.fixture
def upstream() -> CountingUpstream:
    server = CountingUpstream().start()
    yield server
    server.stop()


def test_the_cap_holds_across_gunicorn_workers_and_sigterm_gives_every_key_back(tmp_path, upstream) -> None:
    redis = RedisServer()
    try:
        env = {"REDIS_URL": redis.url, "PREFIX": "dprl_gunicorn", "UPSTREAM": f"http://127.0.0.1:{upstream.port}"}
        proc, port = run_gunicorn(tmp_path, env)
        try:
            answers = fetch_until_held(port, upstream, held=2)
            statuses = [status for _, status in answers]
            assert set(statuses) == {200, 500} and statuses.count(200) >= 2  # late ones after the release
            assert upstream.max_active == 2  # one cap for both workers, counted at the upstream
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
        assert leftover_keys(redis.client(), "dprl_gunicorn") == []
    finally:
        redis.stop()


def test_local_caps_are_per_gunicorn_worker(tmp_path, upstream) -> None:
    proc, port = run_gunicorn(tmp_path, {"UPSTREAM": f"http://127.0.0.1:{upstream.port}"})
    try:
        answers = fetch_until_held(port, upstream, held=4)
        assert upstream.max_active == 4  # 2 per worker: a local cap is one process's
        statuses = [status for _, status in answers]
        assert set(statuses) <= {200, 500} and statuses.count(200) >= 4
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
