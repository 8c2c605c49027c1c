"""Parent proxies: what going through one costs against a direct dial, in one run."""

from __future__ import annotations

import argparse
from pathlib import Path

from tests.support.parents import TinyProxy

from .rates import compare_cost


def figure_parent_tunnels(args: argparse.Namespace, workdir: Path) -> dict:
    """CONNECT tunnels/s and dprl's CPU per tunnel dialling directly, against through a
    tinyproxy parent (--parent-pool, --route '*=p'), two proxies side by side."""
    parent = TinyProxy(workdir)
    try:
        setting = ["--parent-pool", f"p={parent.url}", "--route", "*=p"]
        return compare_cost(
            args, workdir, "CONNECT tunnels/s, through a parent proxy", [], setting, ("direct", "via tinyproxy")
        )
    finally:
        parent.stop()
