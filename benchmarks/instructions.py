"""Instructions per CONNECT tunnel, counted by valgrind (callgrind): dprl beside the floor.

A count of user-space instructions does not move with whatever else the machine runs,
so a change of a few percent shows in one run where CPU time needs many: this is the
figure to measure one change of the tunnel path by. Each proxy runs under callgrind
(about 50 times slower), takes a warm-up load, then its counters are zeroed, a fixed
number of tunnels is driven through it (10 clients), and the counters are dumped.
System calls and the kernel's work are not in it: see the syscalls figure for those.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.support.network import free_port, wait_port

from .harness import PYTHON, ROOT, ensure_tools, loadgen, nginx, redis_server

TUNNELS = 2000
CLIENTS = 10


@contextlib.contextmanager
def under_callgrind(workdir: Path, name: str, command: list[str]) -> Iterator[tuple[int, int, Path]]:
    """(port, pid, output file prefix) of ``command`` (its last argument: the port) under callgrind."""
    port = free_port()
    out = workdir / f"callgrind-{name}"
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p", *command, str(port)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, timeout=60)
        yield port, proc.pid, out
    finally:
        proc.kill()
        proc.wait(30)


def count(workdir: Path, name: str, command: list[str], upstream: int) -> float:
    """Instructions per tunnel of one proxy."""
    with under_callgrind(workdir, name, command) as (port, pid, out):
        loadgen(workdir, "connect", port, upstream, CLIENTS, 120, 300)  # warm-up
        subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
        _, tunnels = loadgen(workdir, "connect", port, upstream, CLIENTS, 300, TUNNELS)
        subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
        dump = Path(f"{out}.{pid}.1")
        for line in dump.read_text(errors="replace").splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1]) / tunnels
    raise RuntimeError(f"no totals in {dump}")


def figure_instructions(args: argparse.Namespace, workdir: Path) -> dict:
    """User-space instructions per CONNECT tunnel: dprl local, dprl distributed, the floor."""
    ensure_tools("valgrind")
    dprl = [PYTHON, "-m", "dprl", "--bind", "127.0.0.1", "--log-level", "warn", "--max-connections", "100000"]
    floor = [PYTHON, str(ROOT / "scripts/floor_proxy.py")]
    counts = {}
    with nginx(workdir) as upstream:
        counts["dprl"] = count(workdir, "dprl", [*dprl, "--port"], upstream)
        counts["floor"] = count(workdir, "floor", floor, upstream)
        with redis_server() as url:
            counts["redis"] = count(workdir, "redis", [*dprl, "--redis-url", url, "--port"], upstream)
    return {
        "figure": "instructions per CONNECT tunnel",
        "direct": None,
        "instructions": counts,
        "lines": [
            f"instructions per CONNECT tunnel (callgrind, {TUNNELS:,} tunnels, {CLIENTS} clients): "
            f"dprl {counts['dprl']:,.0f}, distributed {counts['redis']:,.0f}, floor {counts['floor']:,.0f} "
            f"(dprl / floor = {counts['dprl'] / counts['floor']:.3f})"
        ],
    }
