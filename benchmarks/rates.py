"""Request rates: what a rate costs per tunnel, and how exactly the upstream sees it."""

from __future__ import annotations

import argparse
import contextlib
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.support.arrivals import ArrivalProcess

from .harness import dprl, figure_row, nginx, redis_server
from .tunnels import tunnel_runs


def figure_rate_cost(args: argparse.Namespace, workdir: Path) -> list[dict]:
    """CONNECT tunnels/s with a rate set on the host (high enough never to bite) against none,
    in one process, then through Redis."""
    rows = [_cost(args, workdir, "local", [])]
    with redis_server() as url:
        rows.append(_cost(args, workdir, "distributed", ["--redis-url", url]))
    return rows


def _cost(args: argparse.Namespace, workdir: Path, name: str, extra: list[str]) -> dict:
    rated = ["--max-rate", "1000000/s:burst=1000"]
    figure = f"CONNECT tunnels/s, {name}, with a rate that never bites"
    return compare_cost(args, workdir, figure, extra, rated, ("no rate", "rate set"))


def compare_cost(
    args: argparse.Namespace, workdir: Path, figure: str, extra: list[str], setting: list[str], labels=("none", "set")
) -> dict:
    """Two proxies side by side in one run (a cap that never bites), without and with ``setting``:
    tunnels/s and CPU per tunnel of each, and the ratio of their CPU."""
    plain_label, set_label = labels
    with (
        nginx(workdir) as upstream,
        dprl("--max-connections", "100000", *extra) as plain,
        dprl("--max-connections", "100000", *setting, *extra) as configured,
    ):
        plain.name, configured.name = plain_label, set_label
        direct, runs = tunnel_runs(args, workdir, upstream, [plain, configured])
    row = figure_row(figure, direct, runs, "us/tunnel")
    row["lines"] = [
        f"{row['figure']}: {plain_label} {row[plain_label]:.1f}/s ({row[plain_label + ' cpu']:.1f} us CPU/tunnel), "
        f"{set_label} {row[set_label]:.1f}/s ({row[set_label + ' cpu']:.1f} us CPU/tunnel): "
        f"CPU with / without = {row[set_label + ' cpu'] / row[plain_label + ' cpu']:.3f}"
    ]
    return row


def figure_rate_precision(args: argparse.Namespace, workdir: Path) -> list[dict]:
    """40 clients sending plain requests as fast as they can through a 50/s, burst 5 rate,
    through one local proxy, then through 3 workers sharing it in Redis: for each window W,
    the most arrivals the upstream saw in any W, against b + r*W."""
    rows = [_precision(args, "local, 1 process", [])]
    with redis_server() as url:
        rows.append(_precision(args, "distributed, 3 workers", ["--redis-url", url], workers=3))
    return rows


def _precision(args: argparse.Namespace, name: str, extra: list[str], workers: int = 1) -> dict:
    origin = ArrivalProcess()  # its own process: the 40 client threads here do not delay its clock
    rate, burst, clients = 50.0, 5, 40
    options = ["--max-rate", f"{rate:g}/s:burst={burst}", "--reject-status", "429", *extra]
    with contextlib.ExitStack() as stack:
        ports = [stack.enter_context(dprl(*options)).port for _ in range(workers)]
        url = f"http://{origin.authority}/x"
        openers = [
            urllib.request.build_opener(urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{port}"}))
            for port in ports
        ]
        start = time.monotonic()
        until = start + args.duration

        def push(opener: urllib.request.OpenerDirector) -> None:
            while time.monotonic() < until:
                try:
                    opener.open(url, timeout=10).read()
                except urllib.error.HTTPError as exc:
                    exc.read()
                except OSError:
                    pass

        threads = [threading.Thread(target=push, args=(openers[i % workers],)) for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    origin.collect()
    seen = len([t for t in origin.arrivals if t >= start])
    ratios = {w: origin.most_in_any_window(w) / (burst + rate * w) for w in (0.1, 0.5, 1.0, args.duration)}
    expected = burst + rate * args.duration
    row = {"figure": f"rate precision, {name}, 50/s burst 5, 40 clients", "direct": None}
    row["lines"] = [
        f"{row['figure']}: worst window / (b + r*W) = {max(ratios.values()):.3f} "
        f"({', '.join(f'W={w:g}s {r:.3f}' for w, r in ratios.items())}); "
        f"arrivals {seen} in {args.duration:g}s against b + r*T = {expected:g} ({seen / expected:.3f})"
    ]
    return row
