"""Request rates: what a rate costs per tunnel, and how exactly the upstream sees it."""

from __future__ import annotations

import argparse
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.support.arrivals import ArrivalProcess

from .harness import dprl, figure_row, nginx
from .tunnels import tunnel_runs


def figure_rate_cost(args: argparse.Namespace, workdir: Path) -> dict:
    """CONNECT tunnels/s with a rate set on the host (high enough never to bite) against none."""
    with (
        nginx(workdir) as upstream,
        dprl("--max-connections", "100000") as plain,
        dprl("--max-connections", "100000", "--max-rate", "1000000/s:burst=1000") as rated,
    ):
        plain.name, rated.name = "no rate", "rate set"
        direct, runs = tunnel_runs(args, workdir, upstream, [plain, rated])
    row = figure_row("CONNECT tunnels/s, local, with a rate that never bites", direct, runs, "us/tunnel")
    row["lines"] = [
        f"{row['figure']}: no rate {row['no rate']:.1f}/s ({row['no rate cpu']:.1f} us CPU/tunnel), "
        f"rate set {row['rate set']:.1f}/s ({row['rate set cpu']:.1f} us CPU/tunnel): "
        f"CPU with / without = {row['rate set cpu'] / row['no rate cpu']:.3f}"
    ]
    return row


def figure_rate_precision(args: argparse.Namespace, workdir: Path) -> dict:
    """40 clients sending plain requests as fast as they can through a 50/s, burst 5 rate:
    for each window W, the most arrivals the upstream saw in any W, against b + r*W."""
    origin = ArrivalProcess()  # its own process: the 40 client threads here do not delay its clock
    rate, burst, clients = 50.0, 5, 40
    with dprl("--max-rate", f"{rate:g}/s:burst={burst}", "--reject-status", "429") as proxy:
        url = f"http://{origin.authority}/x"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{proxy.port}"}))
        until = time.monotonic() + args.duration
        start = time.monotonic()

        def push() -> None:
            while time.monotonic() < until:
                try:
                    opener.open(url, timeout=10).read()
                except urllib.error.HTTPError as exc:
                    exc.read()
                except OSError:
                    pass

        threads = [threading.Thread(target=push) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    origin.collect()
    seen = len([t for t in origin.arrivals if t >= start])
    ratios = {}
    for width in (0.1, 0.5, 1.0, args.duration):
        ratios[width] = origin.most_in_any_window(width) / (burst + rate * width)
    worst = max(ratios.values())
    row = {"figure": "rate precision, local, 50/s burst 5, 40 clients", "direct": None}
    row["lines"] = [
        f"{row['figure']}: worst window / (b + r*W) = {worst:.3f} "
        f"({', '.join(f'W={w:g}s {r:.3f}' for w, r in ratios.items())}); "
        f"arrivals {seen} in {args.duration:g}s against b + r*T = {burst + rate * args.duration:g} "
        f"({seen / (burst + rate * args.duration):.3f})"
    ]
    return row
