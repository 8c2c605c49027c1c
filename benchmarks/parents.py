"""Parent proxies: what going through one costs against a direct dial, in one run."""

from __future__ import annotations

import argparse
from pathlib import Path

from tests.support.parents import TinyProxy

from .harness import dprl
from .rates import compare_cost


def figure_parent_tunnels(args: argparse.Namespace, workdir: Path) -> list[dict]:
    """CONNECT tunnels/s and dprl's CPU per tunnel dialling directly, against through a
    parent (--parent-pool, --route '*=p'), two proxies side by side: a tinyproxy parent,
    then another dprl (a parent that is not the bottleneck, so the two run at one pace)."""
    rows = []
    parent = TinyProxy(workdir)
    try:
        rows.append(_through(args, workdir, "tinyproxy", parent.url))
    finally:
        parent.stop()
    with dprl("--max-connections", "100000") as other:
        rows.append(_through(args, workdir, "another dprl", f"http://127.0.0.1:{other.port}"))
    return rows


def _through(args: argparse.Namespace, workdir: Path, name: str, url: str) -> dict:
    setting = ["--parent-pool", f"p={url}", "--route", "*=p"]
    figure = f"CONNECT tunnels/s, through {name} as the parent"
    return compare_cost(args, workdir, figure, [], setting, ("direct", f"via {name}"))
