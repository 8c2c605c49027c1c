"""--workers N: one port, N processes, one cap (counted at a real upstream), crashes handled."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from dprl.workers.slot_table import SlotTable

from ..support.network import wait_for
from ..support.proxy_process import ProxyProcess
from ..support.redis_server import RedisServer, leftover_keys
from ..support.upstream import HoldingServer


@pytest.fixture(params=["local", "redis"])
def workers(request):
    """make(*args): a supervisor with 2 workers, in local mode or on a Redis of the test's own."""
    started: list[ProxyProcess] = []
    redis = RedisServer() if request.param == "redis" else None

    def make(*args: str) -> ProxyProcess:
        extra = ("--redis-url", redis.url, "--redis-prefix", "dprl_workers") if redis else ()
        proc = ProxyProcess("--workers", "2", "--shutdown-timeout", "2", *extra, *args)
        proc.wait_line(r"dprl supervisor listening")
        started.append(proc)
        return proc

    make.redis = redis
    yield make
    for proc in started:
        proc.stop()
    if redis is not None:
        try:  # the stored limits stay: they are configuration
            assert [k for k in leftover_keys(redis.client(), "dprl_workers") if b"{limits}" not in k] == []
        finally:
            redis.stop()


def connect(port: int, target: str) -> socket.socket | None:
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    except ConnectionRefusedError:  # a SYN that met a worker's socket as it died
        return None
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    if sock.recv(100).startswith(b"HTTP/1.1 200"):
        return sock
    sock.close()
    return None


def test_the_cap_holds_across_workers(workers, holding: HoldingServer) -> None:
    proc = workers("--max-connections", "3", "--access-log", "true")
    target = f"127.0.0.1:{holding.port}"
    stop = time.monotonic() + 2.0
    admitted = [0]

    def client() -> None:
        while time.monotonic() < stop:
            sock = connect(proc.port, target)
            if sock is None:
                time.sleep(0.01)
                continue
            admitted[0] += 1
            time.sleep(0.05)
            sock.close()

    threads = [threading.Thread(target=client) for _ in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    holding.wait_active(0)
    assert holding.max_active == 3 and admitted[0] > 30
    served = {m for line in proc.matching("upstream close") for m in re.findall(r"dprl\.w(\d)", line)}
    assert served == {"0", "1"}, "the kernel spreads connections over both workers"


def test_a_killed_workers_slots_come_back_at_once(workers, holding: HoldingServer) -> None:
    proc = workers("--max-connections", "3", "--log-level", "debug", "--lease-ttl", "15")
    target = f"127.0.0.1:{holding.port}"
    held = []
    while len(held) < 3 or not proc.matching(r"dprl\.w0: upstream open"):
        sock = connect(proc.port, target)
        if sock is None:  # the cap is full but w0 holds none: try again with another spread
            held.pop(0).close()
            holding.wait_active(len(held))
            continue
        held.append(sock)
    pid = int(proc.wait_line(r"worker w0 started \(pid (\d+)\)")[1])
    mark = len(proc.lines)
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    proc.wait_line(r"worker w0 \(pid \d+\) exited with signal SIGKILL; its [1-3] slot\(s\) given back", start=mark)
    survivors = []
    for sock in held:
        sock.settimeout(0.2)
        try:
            if sock.recv(1) == b"":
                sock.close()
                continue
        except TimeoutError:
            survivors.append(sock)
            continue
        except OSError:
            sock.close()
            continue
    again = []
    while len(survivors) + len(again) < 3:
        assert time.monotonic() - killed < 1.0, "the dead worker's slots are not back within 1 s"
        sock = connect(proc.port, target)
        if sock is not None:
            again.append(sock)
        else:
            time.sleep(0.02)
    assert connect(proc.port, target) is None  # and no more than the cap
    assert holding.max_active <= 3
    proc.wait_line(r"worker w0 started \(pid \d+\)", start=mark)  # a new worker serves
    for sock in survivors + again:
        sock.close()


def test_graceful_stop_lets_open_tunnels_finish(workers, holding: HoldingServer) -> None:
    proc = workers("--max-connections", "3")
    sock = connect(proc.port, f"127.0.0.1:{holding.port}")
    assert sock is not None
    proc.proc.send_signal(signal.SIGTERM)
    proc.wait_line(r"received SIGTERM: stopping 2 workers")
    sock.settimeout(0.5)
    with pytest.raises(TimeoutError):
        sock.recv(1)  # still open while the workers drain
    sock.close()
    assert proc.proc.wait(10) == 0
    assert proc.matching("dprl supervisor stopped")


def test_the_admin_listener_shows_the_whole_machine(workers, holding: HoldingServer) -> None:
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    from ..support.network import free_port

    admin = f"http://127.0.0.1:{free_port()}"
    proc = workers("--max-connections", "10", "--admin-port", admin.rsplit(":", 1)[1], "--log-level", "debug")
    target = f"127.0.0.1:{holding.port}"
    held = []
    while len(held) < 4 or len({m for line in proc.matching("upstream open") for m in re.findall(r"w(\d):", line)}) < 2:
        sock = connect(proc.port, target)
        assert sock is not None, "both workers should have served by the 10th"
        held.append(sock)
        wait_for(lambda: len(proc.matching("upstream open")) >= len(held), what="the worker's log line")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(requests.get(f"{admin}/metrics", timeout=10).text)
        for s in family.samples
    }
    assert samples[("dprl_upstream_connections", (("host", target),))] == len(held)  # summed over workers
    assert samples[("dprl_upstream_connections_limit", (("host", target),))] == 10  # the same everywhere
    assert samples[("dprl_upstream_connections_opened_total", (("host", target),))] == len(held)
    hosts = requests.get(f"{admin}/hosts", timeout=10).json()["hosts"]
    assert [(r["host"], r["open"], r["limit"]) for r in hosts] == [(target, len(held), 10)]
    assert requests.get(f"{admin}/readyz", timeout=10).text == "ready\n"
    assert requests.get(f"{admin}/healthz", timeout=10).status_code == 200
    assert requests.put(f"{admin}/limits/{target}", data="2", timeout=10).status_code == 200
    for sock in held:
        sock.close()
    holding.wait_active(0)  # the upstream sees the closes before the workers give the slots back
    wait_for(lambda: requests.get(f"{admin}/hosts/{target}", timeout=10).json()["open"] == 0, what="slots back")
    two = [connect(proc.port, target) for _ in range(3)]
    assert sum(s is not None for s in two) == 2  # the limit set through the supervisor holds for all
    for sock in two:
        if sock is not None:
            sock.close()
    if workers.redis is None:  # local mode: a restarted worker is given the change too
        pid = int(proc.wait_line(r"worker w0 started \(pid (\d+)\)")[1])
        mark = len(proc.lines)
        os.kill(pid, signal.SIGKILL)
        proc.wait_line(r"dprl\.w0: dprl listening", start=mark)
        wait_for(lambda: len(requests.get(f"{admin}/metrics", timeout=10).text) > 0, what="the admin listener")
        wait_for(
            lambda: requests.get(f"{admin}/hosts/{target}", timeout=10).json()["limit"] == 2,
            what="the limit replayed to the new worker (the largest is shown)",
        )


def test_waiters_are_served_in_arrival_order_across_workers(workers, holding: HoldingServer) -> None:
    from .test_queue import arrive, inversions

    proc = workers("--max-connections", "2", "--queue-timeout", "30")
    clients = arrive(proc.port, f"127.0.0.1:{holding.port}", 24, 0.03, 0.15)
    assert [c.status for c in clients] == [200] * 24
    assert holding.max_active == 2
    assert len(holding.first_bytes) == 24 and inversions(holding) <= 1  # one slot freed as two arrive
    holding.wait_active(0)


def test_workers_stop_when_the_supervisor_is_killed(workers, holding: HoldingServer) -> None:
    """A worker left behind would serve the port with counts no new supervisor sees."""
    proc = workers("--max-connections", "3")
    pids = [int(proc.wait_line(rf"worker w{i} started \(pid (\d+)\)")[1]) for i in range(2)]
    sock = connect(proc.port, f"127.0.0.1:{holding.port}")
    assert sock is not None
    proc.proc.kill()
    proc.proc.wait(10)

    def exited(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
        except FileNotFoundError:
            return True

    wait_for(lambda: all(exited(pid) for pid in pids), what="the workers gone with their supervisor")
    holding.wait_active(0)  # the tunnel they held is closed too
    sock.close()


def test_a_shared_cap_holds_across_workers(workers) -> None:
    """Two hosts (two upstreams) under one shared cap of 3, 20 clients spread over both
    workers: never more than 3 open at both upstreams together (their event logs merged),
    and every slot back at the end."""
    first, second = HoldingServer(), HoldingServer()
    try:
        hosts = [f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"]
        proc = workers("--max-connections", "10", "--shared-limit", f"pair=3:{hosts[0]},{hosts[1]}")
        stop = time.monotonic() + 1.5

        def client(target: str) -> None:
            while time.monotonic() < stop:
                sock = connect(proc.port, target)
                if sock is None:
                    time.sleep(0.01)
                    continue
                time.sleep(0.03)
                sock.close()

        threads = [threading.Thread(target=client, args=(hosts[i % 2],)) for i in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        first.wait_active(0)
        second.wait_active(0)
        now = {first: 0, second: 0}
        together = 0
        for _, server, active in sorted(((t, srv, n) for srv in now for t, n in srv.events), key=lambda e: e[0]):
            now[server] = active
            together = max(together, sum(now.values()))
        assert first.max_active and second.max_active and together == 3
        held = [connect(proc.port, hosts[i % 2]) for i in range(4)]
        assert sum(s is not None for s in held) == 3  # every slot came back: the cap, not less
        for sock in held:
            if sock is not None:
                sock.close()
    finally:
        first.close()
        second.close()


def test_the_cap_holds_between_processes() -> None:
    """Four processes race for 3 slots of one host, 3,000 times each; each reads the
    machine's total after every admission: it never exceeds the cap."""
    table = SlotTable.create(workers=4)
    code = textwrap.dedent(
        """
        import sys
        from dprl.limits.limiter import Admission
        from dprl.workers.slot_table import SlotTable

        ADMITTED = Admission.ADMITTED
        table = SlotTable(int(sys.argv[2]), int(sys.argv[1]))
        admitted = highest = 0
        for _ in range(3000):
            if table.take("api", 3) == ADMITTED:
                admitted += 1
                highest = max(highest, table.total("api"))
                table.give_back("api")
        print(admitted, highest)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(i), str(table.shared_fd)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            pass_fds=(table.shared_fd,),
        )
        for i in range(4)
    ]
    results = [tuple(map(int, p.communicate(timeout=120)[0].split())) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert all(admitted > 0 for admitted, _ in results)
    assert max(highest for _, highest in results) <= 3
    assert table.totals() == {}


def test_workers_auto_on_one_allowed_cpu_starts_one_process():
    """Pinned to one CPU (as ``taskset -c 0`` does): os.cpu_count() still says every CPU,
    dprl starts one process and says where the number came from."""
    proc = ProxyProcess("--workers", "auto", preexec_fn=lambda: os.sched_setaffinity(0, {0}))
    try:
        proc.wait_line(r"--workers auto: 1 worker\(s\), from 1 CPU\(s\) in this process's affinity mask")
        assert not proc.matching("supervisor")
    finally:
        assert proc.stop() == 0


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_workers_auto_on_two_allowed_cpus_starts_a_supervisor():
    proc = ProxyProcess("--workers", "auto", preexec_fn=lambda: os.sched_setaffinity(0, {0, 1}))
    try:
        proc.wait_line(r"--workers auto: 2 worker\(s\), from 2 CPU\(s\)")
        proc.wait_line(r"dprl supervisor listening on .* with 2 workers")
    finally:
        assert proc.stop() == 0
