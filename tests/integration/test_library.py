"""The library inside other programs: plain threaded ones and gevent-patched ones."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import requests

from dprl import ProxyRateLimiter

from ..support.network import assert_no_slots, proxy_connect

THREADED_PROGRAM = """
import json, socket, sys, threading
import requests
from dprl import ProxyRateLimiter

port = int(sys.argv[1])
results = {}
with ProxyRateLimiter(port=0, max_connections_per_host=20) as prl:
    prl.set_host_limit(f"127.0.0.1:{port}", 2)
    url = f"http://127.0.0.1:{port}/plain"
    results["get"] = requests.get(url, proxies={"http": prl.proxy_url}, headers={"Connection": "close"}).text
    socks, tunnels = [], []
    for _ in range(3):
        sock = socket.create_connection(("127.0.0.1", prl.port))
        socks.append(sock)
        sock.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\\r\\n\\r\\n".encode())
        tunnels.append(sock.recv(100).split(b" ")[1].decode())
    results["tunnels"] = tunnels
    results["active"] = prl.active_connections_for_host(f"127.0.0.1:{port}")
    for sock in socks:
        sock.close()
    results["proxy_thread"] = prl._thread is not None and prl._thread is not threading.main_thread()
    from gevent import monkey
    results["gevent_patched"] = monkey.is_module_patched("socket")
print(json.dumps(results))
"""

PATCHED_PROGRAM = """
from gevent import monkey
monkey.patch_all()
import json, sys
import gevent, requests
from dprl import ProxyRateLimiter

port = int(sys.argv[1])
prl = ProxyRateLimiter(0, 3).start()
url = f"http://127.0.0.1:{port}/hold"  # held at the upstream until the test releases it
session = lambda: requests.get(url, proxies={"http": prl.proxy_url}, headers={"Connection": "close"})
jobs = [gevent.spawn(session) for _ in range(10)]
while sum(1 for job in jobs if job.ready()) < 7:  # the 7 over the cap are refused at once
    gevent.sleep(0.01)
print("refused", flush=True)
gevent.joinall(jobs, timeout=20)
results = {
    "statuses": sorted(job.value.status_code for job in jobs if job.value is not None),
    "in_hub": prl._thread is None,
}
prl.stop(timeout=5)
results["after_stop"] = prl.limiter.process_counts()
print(json.dumps(results))
"""


def _run(program: str, port: int) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(program), str(port)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_plain_threaded_program_uses_the_proxy_from_its_main_thread(upstream):
    results = _run(THREADED_PROGRAM, upstream.port)
    assert results["get"] == "ok:/plain"
    assert results["tunnels"] == ["200", "200", "500"]
    assert results["active"] == 2
    assert results["proxy_thread"] and not results["gevent_patched"]


def test_monkey_patched_program_serves_from_its_own_hub(upstream):
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(PATCHED_PROGRAM), str(upstream.port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "refused", proc.stderr.read()
        upstream.wait_active(3)
        assert upstream.active == 3  # the other 7 were refused, none got through
        upstream.release()
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    results = json.loads(out.strip().splitlines()[-1])
    assert results["in_hub"]
    assert results["statuses"] == [200] * 3 + [500] * 7, results
    assert upstream.max_active == 3
    assert results["after_stop"] == {}


def test_stop_waits_for_in_flight_requests_up_to_its_timeout(upstream):
    proxy = ProxyRateLimiter(0, 5).start()
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(
            requests.get, f"http://127.0.0.1:{upstream.port}/hold", proxies={"http": proxy.proxy_url}, timeout=30
        )
        upstream.wait_active(1)
        stopper = pool.submit(proxy.stop, 10)
        upstream.release()
        assert future.result().text == "held"
        stopper.result()
    assert proxy.limiter.process_counts() == {}


def test_stop_closes_connections_left_after_its_timeout(upstream):
    proxy = ProxyRateLimiter(0, 5).start()
    sock, head = proxy_connect(proxy, f"127.0.0.1:{upstream.port}")
    assert b" 200 " in head
    proxy.stop(timeout=0.2)
    assert proxy.limiter.process_counts() == {}
    assert sock.recv(10) == b""
    sock.close()


def test_restart_after_stop_and_errors_on_a_taken_port(upstream):
    proxy = ProxyRateLimiter(0, 1)
    with proxy:
        port = proxy.port
        assert requests.get(
            f"http://127.0.0.1:{upstream.port}/a", proxies={"http": proxy.proxy_url}, headers={"Connection": "close"}
        ).ok
        clash = ProxyRateLimiter(port)
        try:
            clash.start()
            raise AssertionError("a second proxy started on a taken port")
        except OSError:
            pass
    with proxy:  # a stopped proxy can start again
        assert_no_slots(proxy)
