"""System calls per CONNECT tunnel (``strace -c -f``): dprl beside the shape's floor, same load.

Each proxy is attached by strace for a fixed number of tunnels (loadgen's CYCLES), and every
system call's count is divided by the tunnels done: what each proxy asks of the kernel per
tunnel, a figure that does not move with the machine's load.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import time
from pathlib import Path

from .harness import dprl, ensure_tools, floor_proxy, loadgen, nginx

TUNNELS = 10_000


def strace_counts(workdir: Path, pid: int, load: tuple[object, ...]) -> tuple[dict[str, int], float]:
    """({system call: calls}, tunnels done) while ``load`` runs, strace attached to ``pid``."""
    out = workdir / f"strace-{pid}.txt"
    tracer = subprocess.Popen(["strace", "-c", "-f", "-q", "-o", str(out), "-p", str(pid)])
    time.sleep(1.0)  # strace attaches to every thread before the load starts
    try:
        _, tunnels = loadgen(workdir, *load)
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(30)
    counts: dict[str, int] = {}
    for line in out.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[0][0].isdigit() and fields[-1] != "total":
            counts[fields[-1]] = int(fields[3])
    return counts, tunnels


def figure_syscalls(args: argparse.Namespace, workdir: Path) -> dict:
    """System calls per CONNECT tunnel, dprl (local) and the floor, under strace -c -f."""
    ensure_tools("strace")
    per_tunnel: dict[str, dict[str, float]] = {}
    with nginx(workdir) as upstream, dprl("--max-connections", "100000") as full, floor_proxy() as floor:
        for name, proxy in (("dprl", full), ("floor", floor)):
            load = ("connect", proxy.port, upstream, args.connections, 120, TUNNELS)
            loadgen(workdir, "connect", proxy.port, upstream, args.connections, 1)  # warm-up
            counts, tunnels = strace_counts(workdir, proxy.pid, load)
            per_tunnel[name] = {call: n / tunnels for call, n in counts.items()}
    calls = sorted(set().union(*per_tunnel.values()), key=lambda c: -per_tunnel["dprl"].get(c, 0.0))
    lines = [f"system calls per CONNECT tunnel (strace -c -f, {TUNNELS:,} tunnels each):"]
    lines.append(f"  {'call':<16} {'dprl':>8} {'floor':>8}")
    for call in calls:
        d, f = per_tunnel["dprl"].get(call, 0.0), per_tunnel["floor"].get(call, 0.0)
        if d >= 0.01 or f >= 0.01:
            lines.append(f"  {call:<16} {d:>8.2f} {f:>8.2f}")
    totals = {name: sum(c.values()) for name, c in per_tunnel.items()}
    lines.append(f"  {'total':<16} {totals['dprl']:>8.2f} {totals['floor']:>8.2f}")
    return {
        "figure": "system calls per CONNECT tunnel",
        "direct": None,
        "per_tunnel": per_tunnel,
        "lines": lines,
    }
