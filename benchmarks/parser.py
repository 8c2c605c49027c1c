"""Redis replies through dprl's pure-Python RESP reader against hiredis."""

from __future__ import annotations

import argparse
from pathlib import Path

from .harness import dprl, figure_row, nginx, redis_server
from .tunnels import tunnel_runs


def figure_redis_parser(args: argparse.Namespace, workdir: Path) -> dict:
    """CONNECT tunnels/s in distributed mode with Redis replies parsed by hiredis (C) and by
    dprl's pure-Python reader (hiredis shadowed by a module that fails to import), same run."""
    shadow = workdir / "no-hiredis"
    shadow.mkdir(exist_ok=True)
    (shadow / "hiredis.py").write_text('raise ImportError("hiredis left out: the pure-Python reader is measured")\n')
    with (
        redis_server() as url,
        nginx(workdir) as upstream,
        dprl("--max-connections", "100000", "--redis-url", url) as fast,
        dprl("--max-connections", "100000", "--redis-url", url, path_first=shadow) as pure,
    ):
        fast.name, pure.name = "hiredis", "pure Python"
        direct, runs = tunnel_runs(args, workdir, upstream, [fast, pure])
    row = figure_row("CONNECT tunnels/s, distributed, Redis reply parser", direct, runs, "us/tunnel")
    row["lines"] = [
        f"{row['figure']}: hiredis {row['hiredis']:.1f}/s ({row['hiredis cpu']:.1f} us CPU/tunnel), "
        f"pure Python {row['pure Python']:.1f}/s ({row['pure Python cpu']:.1f} us CPU/tunnel): "
        f"pure / hiredis = {row['pure Python'] / row['hiredis']:.3f}"
    ]
    return row
