"""Tenants: what configured shares cost per tunnel, and what they give a small tenant."""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

from tests.support.tenant_load import TenantClient, TenantUpstream, percentile

from .harness import dprl, redis_server
from .rates import compare_cost

SHARES = ("--tenant-share", "a=3", "--tenant-share", "b=1:max=50%", "--tenant-by", "header")


def figure_tenant_cost(args: argparse.Namespace, workdir: Path) -> list[dict]:
    """CONNECT tunnels/s with tenant shares configured (every tunnel the default tenant's,
    a cap that never bites) against none, in one process, then through Redis."""
    rows = [_cost(args, workdir, "local", [])]
    with redis_server() as url:
        rows.append(_cost(args, workdir, "distributed", ["--redis-url", url]))
    return rows


def _cost(args: argparse.Namespace, workdir: Path, name: str, extra: list[str]) -> dict:
    figure = f"CONNECT tunnels/s, {name}, with tenant shares"
    return compare_cost(args, workdir, figure, extra, list(SHARES), ("no tenants", "tenants"))


def figure_tenant_fairness(args: argparse.Namespace, workdir: Path) -> list[dict]:
    """Cap 10, --queue-timeout 10: tenant a runs 100 clients holding 200 ms, tenant b 3 in a
    loop; b's wait for a slot (p50, p99), with shares a=1,b=1 and without tenants."""
    rows = []
    for label, shares in (
        ("without tenants", ()),
        ("with shares a=1,b=1", ("--tenant-share", "a=1", "--tenant-share", "b=1")),
    ):
        upstream = TenantUpstream()
        try:
            with dprl("--max-connections", "10", "--queue-timeout", "10", "--tenant-by", "header", *shares) as proxy:
                stop_a, stop_b = threading.Event(), threading.Event()
                batch = [TenantClient(proxy.port, upstream.authority, "a", 0.2, stop_a) for _ in range(100)]
                for client in batch:
                    client.start()
                deadline = time.monotonic() + 10
                while upstream.open("a") < 10 and time.monotonic() < deadline:
                    time.sleep(0.01)
                small = [TenantClient(proxy.port, upstream.authority, "b", 0.2, stop_b) for _ in range(3)]
                for client in small:
                    client.start()
                time.sleep(max(5.0, args.duration))
                for event, clients in ((stop_b, small), (stop_a, batch)):
                    event.set()
                    for client in clients:
                        client.join(30)
        finally:
            upstream.close()
        waits = [w for client in small for w in client.waits]
        p50, p99 = percentile(waits, 0.5) * 1000, percentile(waits, 0.99) * 1000
        rows.append(
            {
                "figure": f"tenant b's wait for a slot, {label}",
                "p50 ms": round(p50, 1),
                "p99 ms": round(p99, 1),
                "connections": len(waits),
                "upstream max": upstream.max_total,
                "lines": [
                    f"b's wait {label}: p50 {p50:.1f} ms, p99 {p99:.1f} ms over {len(waits)} connections "
                    f"(upstream saw at most {upstream.max_total})"
                ],
            }
        )
    return rows
