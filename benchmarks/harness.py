"""What every figure shares: the proxies under test, the upstreams and load generators, CPU from /proc."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.support.network import free_port, wait_port

ROOT = Path(__file__).resolve().parent.parent
PYTHON = os.environ.get("DPRL_PYTHON") or str(ROOT / ".venv/bin/python")
if not Path(PYTHON).exists():
    PYTHON = sys.executable
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
TREES: dict[str, Path] = {"dprl": ROOT}  # name -> source tree; --baseline adds one, --workers makes them
EXTRA_ARGS: dict[str, tuple[str, ...]] = {}  # name -> options of that proxy (--workers N)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its descendants (its --workers, and their
    private redis-server) so far: fields 14 and 15 of /proc/PID/stat, summed."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/task/{pid}/children") as children:
            kids = [int(p) for p in children.read().split()]
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS + sum(cpu_seconds(kid) for kid in kids)


@dataclasses.dataclass
class Proxy:
    name: str
    port: int
    pid: int


def ensure_tools(*tools: str) -> None:
    packages = {
        "wrk": "wrk",
        "nginx": "nginx-light",
        "redis-server": "redis-server",
        "cc": "gcc",
        "strace": "strace",
        "valgrind": "valgrind",
    }
    missing = [packages[t] for t in tools if shutil.which(t) is None and not Path(f"/usr/sbin/{t}").exists()]
    if missing:
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True)
        subprocess.run(
            [*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
            check=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            stdout=subprocess.DEVNULL,
        )


@contextlib.contextmanager
def nginx(workdir: Path) -> Iterator[int]:
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(
        f"""
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 20000; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /small {{ default_type text/plain; return 200 "hello, world\\n"; }}
    }}
}}
"""
    )
    nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = subprocess.Popen([nginx_bin, "-c", str(conf), "-p", str(workdir)], stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def dprl(*args: str, tree: Path = ROOT, path_first: Path | None = None) -> Iterator[Proxy]:
    """``python -m dprl`` from ``tree`` (this checkout, or a baseline worktree); modules in
    ``path_first`` shadow installed ones."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in (path_first, tree) if p)}
    proc = subprocess.Popen(
        [PYTHON, "-m", "dprl", "--bind", "127.0.0.1", "--port", str(port), "--log-level", "warn", *args],
        cwd=tree,
        env=env,
    )
    try:
        wait_port(port)
        yield Proxy(tree.name if tree != ROOT else "dprl", port, proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)


@contextlib.contextmanager
def proxies(*args: str) -> Iterator[list[Proxy]]:
    """One proxy per tree being measured (this checkout, and the baseline if any)."""
    with contextlib.ExitStack() as stack:
        started = []
        for name, tree in TREES.items():
            proxy = stack.enter_context(dprl(*args, *EXTRA_ARGS.get(name, ()), tree=tree))
            proxy.name = name
            started.append(proxy)
        yield started


def rotated(started: list[Proxy], repeat: int) -> list[Proxy]:
    """The proxies in a different order each repeat: none always runs right after the direct load."""
    shift = repeat % len(started)
    return started[shift:] + started[:shift]


def measured(proxy: Proxy, run: Callable[[], tuple[float, float]], redis_port: int | None = None) -> tuple[float, ...]:
    """(rate, proxy CPU microseconds per operation[, redis-server's]) of one run; ``run``
    returns (rate, operations). Redis's CPU time is its own account of it (INFO cpu)."""
    before = cpu_seconds(proxy.pid)
    redis_before = redis_cpu_seconds(redis_port) if redis_port else 0.0
    rate, operations = run()
    cpu = (cpu_seconds(proxy.pid) - before) * 1e6 / max(operations, 1)
    if not redis_port:
        return rate, cpu
    return rate, cpu, (redis_cpu_seconds(redis_port) - redis_before) * 1e6 / max(operations, 1)


def redis_cpu_seconds(port: int) -> float:
    """used_cpu_user + used_cpu_sys of a redis-server (INFO cpu)."""
    out = subprocess.run(["redis-cli", "-p", str(port), "INFO", "cpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return float(fields["used_cpu_user"]) + float(fields["used_cpu_sys"])


@contextlib.contextmanager
def redis_server(unrelated_keys: int = 0) -> Iterator[str]:
    """A private redis-server on a free port; optionally holding unrelated keys."""
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        if unrelated_keys:
            lines = []
            for i in range(unrelated_keys):
                key, value = f"unrelated:{i}", f"value-{i}"
                lines.append(f"*3\r\n$3\r\nSET\r\n${len(key)}\r\n{key}\r\n${len(value)}\r\n{value}\r\n")
            subprocess.run(
                ["redis-cli", "-p", str(port), "--pipe"], input="".join(lines).encode(), check=True, capture_output=True
            )
            count = subprocess.run(["redis-cli", "-p", str(port), "DBSIZE"], capture_output=True, text=True).stdout
            assert int(count) >= unrelated_keys, count
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def loadgen_binary(workdir: Path) -> Path:
    binary = workdir / "loadgen"
    if not binary.exists():
        subprocess.run(["cc", "-O2", "-pthread", "-o", str(binary), str(ROOT / "scripts/loadgen.c")], check=True)
    return binary


def loadgen(workdir: Path, *args: object) -> tuple[float, float]:
    """(cycles per second, cycles) of one loadgen run."""
    binary = loadgen_binary(workdir)
    out = subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True, check=True).stdout
    fields = out.split()
    cycles, errors, rate = int(fields[1]), int(fields[3]), float(fields[7])
    if errors > cycles * 0.001:
        raise RuntimeError(f"loadgen saw {errors} errors in {cycles} cycles: {out}")
    return rate, cycles


def wrk(url: str, duration: float, connections: int, script: Path | None = None) -> tuple[float, float]:
    """(requests per second, requests) of one wrk run."""
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{duration:g}s", url]
    if script is not None:
        cmd[1:1] = ["-s", str(script)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"wrk saw {errors[1]} error responses:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]), float(re.search(r"(\d+) requests in", out)[1])


def figure_row(name: str, direct: list[float], runs: dict[str, list[tuple[float, ...]]], cpu_unit: str) -> dict:
    """A figure: the median rate of each proxy, its ratio to direct, and its CPU per operation
    (and redis-server's, when the runs measured it)."""
    d = statistics.median(direct)
    row: dict = {"figure": name, "direct": d, "runs_direct": direct, "cpu_unit": cpu_unit}
    for proxy, measurements in runs.items():
        rates = [m[0] for m in measurements]
        row[proxy] = statistics.median(rates)
        row[f"{proxy} ratio"] = statistics.median(rates) / d
        row[f"{proxy} cpu"] = statistics.median(m[1] for m in measurements)
        if len(measurements[0]) > 2:
            row[f"{proxy} redis cpu"] = statistics.median(m[2] for m in measurements)
        row[f"runs_{proxy}"] = measurements
    return row


@contextlib.contextmanager
def floor_proxy() -> Iterator[Proxy]:
    port = free_port()
    proc = subprocess.Popen(
        [PYTHON, str(ROOT / "scripts/floor_proxy.py"), str(port)], env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    try:
        wait_port(port)
        yield Proxy("floor", port, proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")
