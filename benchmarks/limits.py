"""Fleet limits stored in Redis: admission cost with many stored hosts and patterns."""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

from tests.support.network import free_port

from .harness import dprl, figure_row, loadgen, measured, nginx, percentile, redis_server, rotated


def _store_limits(redis_port: int, prefix: str, hosts: int, patterns: int) -> None:
    """``hosts`` stored host limits and ``patterns`` stored patterns under ``prefix`` (HSET by pipe)."""
    key = f"{prefix}:{{limits}}:hosts"
    lines = []
    for i in range(hosts + patterns):
        field = f"host-{i}.example" if i < hosts else f"*.zone-{i}.example"
        lines.append(f"*4\r\n$4\r\nHSET\r\n${len(key)}\r\n{key}\r\n${len(field)}\r\n{field}\r\n$2\r\n50\r\n")
    version = f"{prefix}:{{limits}}:version"
    lines.append(f"*2\r\n$4\r\nINCR\r\n${len(version)}\r\n{version}\r\n")
    subprocess.run(
        ["redis-cli", "-p", str(redis_port), "--pipe"], input="".join(lines).encode(), check=True, capture_output=True
    )


def figure_limits(args: argparse.Namespace, workdir: Path) -> list[dict]:
    """Fleet limits stored in Redis: how fast a change reaches another worker (100 changes),
    and tunnels/s with 10,000 stored host limits and 1,000 patterns against none."""
    import urllib.request

    from dprl.redis.address import RedisDeployment
    from dprl.redis.stored_limits import change
    from dprl.redis.topology import make_topology

    rows = []
    with redis_server() as url, nginx(workdir) as upstream:
        redis_port = int(url.rsplit(":", 1)[1].split("/")[0])
        _store_limits(redis_port, "bench_full", 10_000, 1_000)
        admin = free_port()
        with dprl("--redis-url", url, "--redis-prefix", "bench_prop", "--admin-port", str(admin)):
            topology = make_topology(RedisDeployment.from_url(url), "bench_prop", 2.0, "", lambda shard: None)
            runner = topology.shard_for("limits").runner
            latencies = []
            for i in range(100):
                limit = 100 + i
                started = time.monotonic()
                change(runner, "bench_prop", "set", "api.example.com", limit, "bench")
                while True:
                    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/hosts/api.example.com") as answer:
                        if json.loads(answer.read())["limit"] == limit:
                            break
                latencies.append(time.monotonic() - started)
            topology.close()
        line = (
            "fleet limit change to another worker (process), 100 changes: "
            f"p50 {percentile(latencies, 0.5) * 1000:.2f} ms, p99 {percentile(latencies, 0.99) * 1000:.2f} ms, "
            f"max {max(latencies) * 1000:.2f} ms"
        )
        rows.append({"figure": "fleet limit propagation", "direct": None, "custom": True, "lines": [line]})
        base = ("--redis-url", url, "--max-connections", "100000")
        with dprl(*base, "--redis-prefix", "bench_empty") as empty, dprl(*base, "--redis-prefix", "bench_full") as full:
            empty.name, full.name = "no stored limits", "10k limits + 1k patterns"
            for proxy in (empty, full):
                loadgen(workdir, "connect", proxy.port, upstream, args.connections, 1)  # warm-up
            direct: list[float] = []
            runs: dict[str, list[tuple[float, ...]]] = {empty.name: [], full.name: []}
            for repeat in range(args.repeat):
                direct.append(loadgen(workdir, "direct", upstream, args.connections, args.duration)[0])
                for proxy in rotated([empty, full], repeat):
                    load = ("connect", proxy.port, upstream, args.connections, args.duration)
                    runs[proxy.name].append(measured(proxy, lambda load=load: loadgen(workdir, *load)))
        row = figure_row("CONNECT tunnels/s, distributed, stored limits", direct, runs, "us/tunnel")
        a, b = row["no stored limits"], row["10k limits + 1k patterns"]
        row["lines"] = [
            f"{row['figure']}: none {a:.1f}/s ({row['no stored limits cpu']:.1f} us CPU/tunnel), 10,000 hosts + 1,000 "
            f"patterns {b:.1f}/s ({row['10k limits + 1k patterns cpu']:.1f} us CPU/tunnel): {b / a:.3f}"
        ]
        rows.append(row)
    return rows
