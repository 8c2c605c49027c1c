"""CONNECT tunnels (new tunnel + one request), bulk through a tunnel, and the gevent floor."""

from __future__ import annotations

import argparse
import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.support.network import free_port, wait_port

from .harness import (
    Proxy,
    dprl,
    figure_row,
    floor_proxy,
    loadgen,
    loadgen_binary,
    measured,
    nginx,
    proxies,
    redis_server,
    rotated,
)


def tunnels(
    args: argparse.Namespace,
    workdir: Path,
    name: str,
    proxy_args: tuple[str, ...] = (),
    redis_port: int | None = None,
) -> dict:
    with nginx(workdir) as upstream, proxies("--max-connections", "100000", *proxy_args) as started:
        direct, runs = tunnel_runs(args, workdir, upstream, started, redis_port)
    return figure_row(name, direct, runs, "us/tunnel")


def tunnel_runs(
    args: argparse.Namespace, workdir: Path, upstream: int, started: list[Proxy], redis_port: int | None = None
) -> tuple[list[float], dict[str, list[tuple[float, ...]]]]:
    """Tunnels direct and through each proxy, interleaved (--repeat times, after a warm-up):
    the direct rates, and each proxy's measurements by name."""
    loadgen(workdir, "direct", upstream, args.connections, 1)  # warm-up
    for proxy in started:
        loadgen(workdir, "connect", proxy.port, upstream, args.connections, 1)
    direct: list[float] = []
    runs: dict[str, list[tuple[float, ...]]] = {proxy.name: [] for proxy in started}
    for repeat in range(args.repeat):
        direct.append(loadgen(workdir, "direct", upstream, args.connections, args.duration)[0])
        for proxy in rotated(started, repeat):
            load = ("connect", proxy.port, upstream, args.connections, args.duration)
            runs[proxy.name].append(measured(proxy, lambda load=load: loadgen(workdir, *load), redis_port))
    return direct, runs


@contextlib.contextmanager
def bulk_server(workdir: Path) -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen([str(loadgen_binary(workdir)), "serve", str(port)])
    try:
        wait_port(port)
        yield port
    finally:
        proc.kill()
        proc.wait()


def bulk(
    workdir: Path, proxy: int, target: int, direction: str, seconds: float, streams: int = 4
) -> tuple[float, float]:
    """(MB/s, MB moved) of one bulk run."""
    out = subprocess.run(
        [str(loadgen_binary(workdir)), "bulk", str(proxy), str(target), direction, str(streams), f"{seconds:g}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate = float(out.split()[5])
    return rate, rate * seconds


def figure_bulk(args: argparse.Namespace, workdir: Path) -> list[dict]:
    """Bulk MB/s through CONNECT tunnels (4 streams), download and upload."""
    rows = []
    with bulk_server(workdir) as target, proxies("--max-connections", "100000") as started:
        for direction in ("down", "up"):
            for proxy in started:
                bulk(workdir, proxy.port, target, direction, 1)  # warm-up
            direct: list[float] = []
            runs: dict[str, list[tuple[float, ...]]] = {proxy.name: [] for proxy in started}
            for repeat in range(args.repeat):
                direct.append(bulk(workdir, 0, target, direction, args.duration)[0])
                for proxy in rotated(started, repeat):
                    load = (proxy.port, target, direction, args.duration)
                    runs[proxy.name].append(measured(proxy, lambda load=load: bulk(workdir, *load)))
            name = "download" if direction == "down" else "upload"
            rows.append(figure_row(f"bulk MB/s through a tunnel, {name}", direct, runs, "us/MB"))
    return rows


def figure_tunnels(args: argparse.Namespace, workdir: Path) -> dict:
    """CONNECT tunnels/s (new tunnel + one small GET each), local mode."""
    return tunnels(args, workdir, "CONNECT tunnels/s, local")


def figure_tunnels_redis(args: argparse.Namespace, workdir: Path) -> dict:
    """CONNECT tunnels/s in distributed mode, against an empty private Redis."""
    with redis_server() as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        return tunnels(args, workdir, "CONNECT tunnels/s, distributed", ("--redis-url", url), port)


def figure_tunnels_redis_100k(args: argparse.Namespace, workdir: Path) -> dict:
    """CONNECT tunnels/s in distributed mode, Redis holding 100,000 unrelated keys."""
    with redis_server(unrelated_keys=100_000) as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        return tunnels(args, workdir, "CONNECT tunnels/s, distributed, 100k keys", ("--redis-url", url), port)


def figure_floor(args: argparse.Namespace, workdir: Path) -> dict:
    """CONNECT tunnels/s through dprl and through the least a StreamServer proxy does
    (scripts/floor_proxy.py): what the shape itself costs per tunnel, same run."""
    with nginx(workdir) as upstream, dprl("--max-connections", "100000") as full, floor_proxy() as floor:
        full.name = "dprl"
        direct, runs = tunnel_runs(args, workdir, upstream, [full, floor])
    row = figure_row("CONNECT tunnels/s, dprl and the shape's floor", direct, runs, "us/tunnel")
    row["lines"] = [
        f"{row['figure']}: dprl {row['dprl']:.1f}/s ({row['dprl cpu']:.1f} us CPU/tunnel), a bare StreamServer "
        f"CONNECT proxy {row['floor']:.1f}/s ({row['floor cpu']:.1f} us CPU/tunnel): "
        f"dprl CPU / floor CPU = {row['dprl cpu'] / row['floor cpu']:.3f}"
    ]
    return row
