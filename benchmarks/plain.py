"""Plain HTTP keep-alive requests through the proxy (wrk)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .harness import figure_row, measured, nginx, proxies, rotated, wrk


def figure_plain(args: argparse.Namespace, workdir: Path) -> dict:
    """Plain HTTP keep-alive requests/s for a small response, 50 concurrent clients."""
    with nginx(workdir) as upstream, proxies("--max-connections", "100000") as started:
        target = f"http://127.0.0.1:{upstream}/small"
        lua = workdir / "absolute.lua"
        lua.write_text(f'wrk.path = "{target}"\n')
        wrk(target, 1, args.connections)  # warm-up
        for proxy in started:
            wrk(f"http://127.0.0.1:{proxy.port}/", 1, args.connections, lua)
        direct: list[float] = []
        runs: dict[str, list[tuple[float, ...]]] = {proxy.name: [] for proxy in started}
        for repeat in range(args.repeat):
            direct.append(wrk(target, args.duration, args.connections)[0])
            for proxy in rotated(started, repeat):
                url = f"http://127.0.0.1:{proxy.port}/"
                runs[proxy.name].append(measured(proxy, lambda url=url: wrk(url, args.duration, args.connections, lua)))
    return figure_row("plain HTTP keep-alive req/s", direct, runs, "us/request")
