"""Redis fault drill: each scenario of tests/support/faults.py, with what the upstream saw.

Usage: scripts/fault-drill [--baseline REV] [--only NAME,...] [--repeat N]

Every scenario runs real redis-server processes (plain, Sentinel, Cluster), three
`python -m dprl` workers (cap 3, lease 3 s, --on-redis-error reject, --redis-timeout 0.5)
and a counting upstream; it breaks something and reports the most connections the
upstream saw at once, how long it saw more than the cap, and how slowly clients were
answered. --baseline REV runs the same scenarios against a worktree of that revision
(options it does not know are left out; URLs it cannot take make it fail at start).
Figures of timing-dependent scenarios vary between runs: --repeat N shows the spread.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

from tests.support import faults

from .harness import ROOT

SCENARIOS: dict[str, Callable[[str | None], faults.Figures]] = {
    "1 blackhole: answer latency": lambda tree: faults.blackhole_answers(tree),
    "2 fleet cut off 2x lease (keep)": lambda tree: faults.cut_off(
        "fleet", "keep" if not tree else None, pythonpath=tree
    ),
    "2 one worker cut off 2x lease (keep)": lambda tree: faults.cut_off(
        "one", "keep" if not tree else None, pythonpath=tree
    ),
    "2 one worker cut off 2x lease (close)": lambda tree: faults.cut_off("one", "close", pythonpath=tree),
    "2 one worker SIGSTOP 2x lease (keep)": lambda tree: faults.cut_off(
        "paused", "keep" if not tree else None, pythonpath=tree
    ),
    "2 one worker SIGSTOP 2x lease (close)": lambda tree: faults.cut_off("paused", "close", pythonpath=tree),
    "3 late release after reconnect": lambda tree: faults.late_release(tree),
    "4 Redis restarted empty": lambda tree: faults.data_loss("restart", tree),
    "4 FLUSHALL": lambda tree: faults.data_loss("flushall", tree),
    "5 Cluster: one node killed": lambda tree: faults.cluster_node_failure(tree, plain_url=bool(tree)),
    "5 Cluster: busy slot resharded": lambda tree: faults.cluster_resharding(tree),
    "6 Sentinel failover": lambda tree: faults.sentinel_failover(tree, plain_url=bool(tree)),
}


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/fault-drill", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", help="also run the scenarios against this git revision")
    parser.add_argument("--only", default="", help="comma-separated scenario numbers or name fragments")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each scenario per tree")
    args = parser.parse_args()
    wanted = [w.strip().lower() for w in args.only.split(",") if w.strip()]
    chosen = {n: run for n, run in SCENARIOS.items() if not wanted or any(w in n.lower() for w in wanted)}
    with tempfile.TemporaryDirectory(prefix="dprl-drill-") as tmp:
        trees: dict[str, str | None] = {"this tree": None}
        if args.baseline:
            tree = Path(tmp) / "baseline"
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(tree), args.baseline], check=True
            )
            trees[args.baseline] = str(tree)
        try:
            for name, run in chosen.items():
                for label, tree in trees.items():
                    if tree and "(close)" in name:
                        continue  # --on-lease-loss is what this issue added
                    for _ in range(args.repeat):
                        print(f"{name:<40} {label:<12} {_figures(run, tree)}", flush=True)
        finally:
            if args.baseline:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    return 0


def _figures(run: Callable[[str | None], faults.Figures], tree: str | None) -> str:
    try:
        return run(tree).summary()
    except AssertionError as exc:
        lines = str(exc).splitlines()
        return "failed: " + lines[0] + (f" ... {lines[-2].strip()}" if len(lines) > 2 else "")
    except Exception:
        return "error: " + traceback.format_exc().splitlines()[-1]


if __name__ == "__main__":
    sys.exit(main())
