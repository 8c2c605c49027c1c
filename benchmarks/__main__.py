"""dprl benchmark: each figure through the proxy and direct to the same upstream, same run.

Usage: python -m benchmarks [--figures tunnels,plain,...] [--duration 10] [--connections 50] [--repeat 3]
                     [--baseline REV] [--json FILE]

Upstream: nginx on a loopback port; load: wrk for plain HTTP and scripts/loadgen.c (epoll, C)
for tunnels (nginx, wrk, redis-server from apt, installed when missing).
The proxy runs as `python -m dprl` with a cap above the load, so every connection is
counted. Figures are medians over --repeat runs; the ratio is proxied / direct. For each
proxied figure the proxy's own CPU time (user + system, from /proc/PID/stat) is divided
by the operations done: microseconds of proxy CPU per tunnel, per request, per MB.
--baseline REV also measures a proxy built from that git revision (a worktree), in the
same run and interleaved with the others, so two versions compare on equal terms.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from .admin import figure_admin, figure_admin_stall
from .harness import EXTRA_ARGS, ROOT, TREES, ensure_tools
from .instructions import figure_instructions
from .limits import figure_limits
from .memory import figure_hosts_rss, figure_rss
from .parents import figure_parent_tunnels
from .parser import figure_redis_parser
from .plain import figure_plain
from .queue import figure_queue
from .rates import figure_rate_cost, figure_rate_precision
from .syscalls import figure_syscalls
from .tenants import figure_tenant_cost, figure_tenant_fairness
from .tunnels import (
    figure_bulk,
    figure_floor,
    figure_tunnels,
    figure_tunnels_redis,
    figure_tunnels_redis_100k,
)

FIGURES: dict[str, Callable[[argparse.Namespace, Path], dict | list[dict]]] = {
    "tunnels": figure_tunnels,
    "tunnels-redis": figure_tunnels_redis,
    "tunnels-redis-100k": figure_tunnels_redis_100k,
    "plain": figure_plain,
    "bulk": figure_bulk,
    "rss": figure_rss,
    "admin": figure_admin,
    "admin-stall": figure_admin_stall,
    "hosts-rss": figure_hosts_rss,
    "queue": figure_queue,
    "limits": figure_limits,
    "floor": figure_floor,
    "redis-parser": figure_redis_parser,
    "rate-cost": figure_rate_cost,
    "rate-precision": figure_rate_precision,
    "syscalls": figure_syscalls,
    "instructions": figure_instructions,
    "tenant-cost": figure_tenant_cost,
    "tenant-fairness": figure_tenant_fairness,
    "parent-tunnels": figure_parent_tunnels,
}


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--figures", default=",".join(FIGURES), help=f"comma-separated, of {', '.join(FIGURES)}")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--connections", type=int, default=50, help="concurrent clients")
    parser.add_argument("--repeat", type=int, default=3, help="measurements per figure (median reported)")
    parser.add_argument("--baseline", help="also measure a proxy built from this git revision, in the same run")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--workers", help="measure proxies with these --workers counts, e.g. 1,2 (no --baseline)")
    args = parser.parse_args()
    if args.workers:
        if args.baseline:
            parser.error("--workers and --baseline do not go together")
        TREES.clear()
        for count in sorted({int(n) for n in args.workers.split(",")}, reverse=True):
            name = f"{count} worker{'s' if count > 1 else ''}"
            TREES[name], EXTRA_ARGS[name] = ROOT, ("--workers", str(count))
    names = [n.strip() for n in args.figures.split(",") if n.strip()]
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        parser.error(f"unknown figure(s): {', '.join(unknown)}")
    ensure_tools("wrk", "nginx", "redis-server", "cc")
    rows = []
    with tempfile.TemporaryDirectory(prefix="dprl-bench-") as tmp:
        if args.baseline:
            tree = Path(tmp) / "baseline"
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(tree), args.baseline], check=True
            )
            TREES[f"baseline {args.baseline}"] = tree
        try:
            for name in names:
                result = FIGURES[name](args, Path(tmp))
                rows.extend(result if isinstance(result, list) else [result])
        finally:
            if args.baseline:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


def print_table(rows: list[dict]) -> None:
    names = list(TREES)
    header = f"{'figure':<46} {'direct':>10}" + "".join(f" {n[:22]:>22} {'ratio':>6} {'cpu/op':>12}" for n in names)
    print(header)
    for row in rows:
        if "lines" in row:
            continue
        direct = "-" if row["direct"] is None else f"{row['direct']:.1f}"
        line = f"{row['figure']:<46} {direct:>10}"
        for name in names:
            ratio = row.get(f"{name} ratio")
            cpu = row.get(f"{name} cpu")
            line += f" {row[name]:>22.1f} {'-' if ratio is None else f'{ratio:.3f}':>6}"
            line += f" {'-' if cpu is None else f'{cpu:.1f} ' + row.get('cpu_unit', '').split('/')[0]:>12}"
        print(line)
    for row in rows:
        for name in names:
            if f"{name} redis cpu" in row:
                redis_us = row[f"{name} redis cpu"]
                print(
                    f"{row['figure']} ({name}): redis-server CPU {redis_us:.1f} us per admitted-and-released "
                    f"tunnel, about {1e6 / redis_us:,.0f} admissions/s per Redis core"
                )
    for row in rows:
        for line in row.get("lines", []):
            print(line)
    if len(names) == 2:
        print()
        for row in rows:
            if row.get(names[1]) and "lines" not in row:
                print(f"{row['figure']:<46} {names[0]} / {names[1]}: {row[names[0]] / row[names[1]]:.3f}")


if __name__ == "__main__":
    sys.exit(main())
