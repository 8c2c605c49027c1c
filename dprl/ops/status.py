"""``dprl status``: the table of hosts for people, from a running proxy or straight from Redis.

``dprl status --admin URL`` reads a proxy's /hosts; ``dprl status --redis-url URL`` needs
no running proxy: it scans the fleet's keys and counts live leases with the same script
the proxies use (read-only).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence

from ..errors import RedisUnavailable
from ..redis.cleanup import glob_escape, open_topology, scan
from ..redis.protocol import ReplyError
from ..redis.scripts import COUNT

_COUNTS_KEY = re.compile(r"^(?P<prefix>.*):\{(?P<host>.*)\}:counts$")


def build_parser() -> argparse.ArgumentParser:
    admin_port = os.environ.get("DPRL_ADMIN_PORT", "")
    parser = argparse.ArgumentParser(
        prog="dprl status",
        description="Every host with a limit or an open connection: open, limit, use; busiest first.",
    )
    parser.add_argument(
        "--admin",
        metavar="URL",
        default=f"http://127.0.0.1:{admin_port}" if admin_port not in ("", "0") else "",
        help="a proxy's admin listener (default: http://127.0.0.1:$DPRL_ADMIN_PORT)",
    )
    parser.add_argument(
        "--redis-url", metavar="URL", default=os.environ.get("REDIS_URL", ""), help="read the fleet's counts from Redis"
    )
    parser.add_argument(
        "--redis-prefix", default=os.environ.get("DPRL_REDIS_PREFIX", "proxy_rate_limiter"), help="key prefix"
    )
    parser.add_argument("--redis-timeout", type=float, default=2.0, help="seconds for each Redis call")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    return parser


def main(argv: Sequence[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.admin and not args.redis_url:
            rows = from_admin(args.admin, args.redis_timeout)
        elif args.redis_url:
            rows = from_redis(args.redis_url, args.redis_prefix, args.redis_timeout)
        else:
            parser.error("give --admin URL (a running proxy) or --redis-url URL (the fleet's counts)")
    except (OSError, ValueError, RedisUnavailable, ReplyError) as exc:
        sys.stderr.write(f"dprl status: error: {exc}\n")
        return 2
    parents = from_admin(args.admin, args.redis_timeout, "parents") if args.admin and not args.redis_url else []
    if args.json:
        shown: object = {"hosts": rows, "parents": parents} if parents else rows
        sys.stdout.write(json.dumps(shown, indent=1) + "\n")
    else:
        sys.stdout.write(table(rows) + (parents_table(parents) if parents else ""))
    return 0


def from_admin(url: str, timeout: float, what: str = "hosts") -> list[dict]:
    """A proxy's /hosts rows (or its /parents)."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/" + what, timeout=timeout) as response:
            document = json.load(response)
    except urllib.error.URLError as exc:
        raise OSError(f"cannot read {url}/{what}: {exc.reason}") from None
    return document[what]


def from_redis(url: str, prefix: str, timeout: float) -> list[dict]:
    """Every host with keys under ``prefix``, with its count of live leases."""
    topology = open_topology(url, prefix, timeout, "dprl-status")
    try:
        rows = []
        for shard in topology.shards():
            for name in scan(shard, glob_escape(prefix) + ":{*}:counts"):
                match = _COUNTS_KEY.match(name)
                if match is None or match["prefix"] != prefix or match["host"].startswith("shared:"):
                    continue
                host = match["host"]
                total = shard.runner.run(COUNT, (name, f"{prefix}:{{{host}}}:leases"), ())
                if total:
                    rows.append({"host": host, "fleet_open": int(total)})
    finally:
        topology.close()
    rows.sort(key=lambda r: (-int(r["fleet_open"]), str(r["host"])))
    return rows


def parents_table(parents: list[dict]) -> str:
    """Each parent proxy: up or ejected (probed again in), in use (fleet-wide if known) and cap, failures."""
    lines = [["PARENT", "STATE", "IN USE", "MAX", "FAILURES"]]
    for p in parents:
        state = p["state"] if p["state"] == "up" else f"ejected (probe in {p['probe_in']:.1f}s)"
        in_use = p["fleet_in_use"] if p.get("fleet_in_use") is not None else p["in_use"]
        failures = sum(p["failures_total"].values())
        lines.append(
            [p["parent"], state, str(in_use), str(p["max"] or "none"), f"{failures} ({p['failures']} in a row)"]
        )
    return "\n" + _aligned(lines)


def table(rows: list[dict]) -> str:
    """Aligned columns for people; ``use`` is the share of the limit taken (fleet-wide if known)."""
    if not rows:
        return "no host has a limit of its own or an open connection\n"
    fleet = any("fleet_open" in r for r in rows)
    here = any("open" in r for r in rows)
    waits = any(r.get("waiting") for r in rows)
    header = ["HOST"] + (["OPEN"] if here else []) + (["WAITING"] if waits else []) + (["FLEET"] if fleet else [])
    header += ["LIMIT", "USE", "REFUSED/MIN"] if "limit" in rows[0] else []
    rated = any("rate" in r for r in rows)
    header += ["RATE", "NEXT TOKEN"] if rated else []
    lines = [header]
    for r in sorted(rows, key=lambda r: (-max(r.get("open", 0), r.get("fleet_open", 0)), r["host"])):
        line = [r["host"]] + ([str(r.get("open", 0))] if here else [])
        line += ([str(r.get("waiting", 0))] if waits else []) + ([str(r.get("fleet_open", 0))] if fleet else [])
        if "limit" in r:
            used = r.get("fleet_open", r.get("open", 0))
            limit = r["limit"]
            line += [str(limit) if limit else "none", f"{100 * used / limit:.0f}%" if limit else "-"]
            line.append(str(r.get("refused_last_minute", 0)))
        if rated:
            token = r.get("next_token_in")
            line += [r.get("rate", "none"), "-" if token is None else "now" if not token else f"{token:.2f}s"]
        lines.append(line)
    return _aligned(lines)


def _aligned(lines: list[list[str]]) -> str:
    """Columns padded to their widest cell: the first left-aligned, the others right."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = []
    for line in lines:
        pairs = enumerate(zip(line, widths, strict=True))
        cells = [cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in pairs]
        out.append("  ".join(cells).rstrip() + "\n")
    return "".join(out)
