"""``dprl limits``: the fleet's stored limits and rates, read and changed in Redis.

    dprl limits list                         every stored limit, rate and pattern, and the defaults
    dprl limits get HOST                     the stored limit and rate that apply to HOST
    dprl limits set HOST|*.DOMAIN N          store a limit (0 = unlimited)
    dprl limits set HOST --rate 10/s         store a rate (N/s, N/m, N/h, :burst=B)
    dprl limits rm HOST|*.DOMAIN [--rate]    remove the limit (or the rate)
    dprl limits default N|none               the fleet's default limit (none: each process's own)
    dprl limits default --rate 5/s|none      the fleet's default rate

Every worker applies a change within a second (pushed; checked every second as well).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ..errors import RedisUnavailable
from ..limits.hosts import HostLimits, normalize_limit_spec
from ..limits.rates import parse_rate
from ..redis.cleanup import open_topology
from ..redis.protocol import ReplyError
from ..redis.scripts import ScriptRunner
from ..redis.stored_limits import LIMITS_TAG, change, read


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dprl limits", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=("list", "get", "set", "rm", "default"))
    parser.add_argument("args", nargs="*")
    parser.add_argument(
        "--rate",
        nargs="?",
        const="",
        default=None,
        metavar="RATE",
        help="the host's (or default's) request rate instead of its limit: set HOST --rate 10/s, "
        "default --rate 5/s|none, rm HOST --rate",
    )
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", ""), help="the fleet's Redis")
    parser.add_argument(
        "--redis-prefix", default=os.environ.get("DPRL_REDIS_PREFIX", "proxy_rate_limiter"), help="key prefix"
    )
    parser.add_argument("--redis-timeout", type=float, default=2.0, help="seconds for each Redis call")
    return parser


def main(argv: Sequence[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    wanted = {"list": 0, "get": 1, "set": 2, "rm": 1, "default": 1}[args.command]
    if args.rate is not None and args.command in ("set", "default"):
        wanted -= 1  # the rate takes the place of the number
        if not args.rate:
            parser.error(f"{args.command} --rate takes a rate (10/s, 600/m:burst=20)")
    if len(args.args) != wanted:
        parser.error(f"{args.command} takes {wanted} argument(s)")
    if not args.redis_url:
        parser.error("give --redis-url (or REDIS_URL): the limits live in the fleet's Redis")
    try:
        print(run(args))
    except (ValueError, OSError, RedisUnavailable, ReplyError) as exc:
        sys.stderr.write(f"dprl limits: error: {exc}\n")
        return 2
    return 0


def _change_rate(runner: ScriptRunner, prefix: str, args: argparse.Namespace) -> str:
    if args.command == "set":
        host = normalize_limit_spec(args.args[0])
        version = change(runner, prefix, "setrate", host, rate=args.rate)
        return f"{host} rate = {parse_rate(args.rate)} (version {version})"
    if args.command == "rm":
        host = normalize_limit_spec(args.args[0])
        return f"{host} rate removed (version {change(runner, prefix, 'rmrate', host)})"
    if args.rate == "none":
        return f"default rate removed: each process's own applies (version {change(runner, prefix, 'rmdefaultrate')})"
    version = change(runner, prefix, "defaultrate", rate=args.rate)
    return f"default rate = {parse_rate(args.rate)} (version {version})"


def run(args: argparse.Namespace) -> str:
    topology = open_topology(args.redis_url, args.redis_prefix, args.redis_timeout, "dprl-limits")
    try:
        runner = topology.shard_for(LIMITS_TAG).runner
        prefix = args.redis_prefix
        if args.rate is not None and args.command in ("set", "rm", "default"):
            return _change_rate(runner, prefix, args)
        if args.command == "set":
            host, number = args.args
            if not number.isdigit():
                raise ValueError(f"the limit must be a whole number, got {number!r}")
            version = change(runner, prefix, "set", host, int(number))
            return f"{normalize_limit_spec(host)} = {number} (version {version})"
        if args.command == "rm":
            version = change(runner, prefix, "rm", args.args[0])
            return f"{normalize_limit_spec(args.args[0])} removed (version {version})"
        if args.command == "default":
            value = args.args[0]
            if value == "none":
                return f"default removed: each process's own applies (version {change(runner, prefix, 'rmdefault')})"
            if not value.isdigit():
                raise ValueError(f"the default must be a whole number or none, got {value!r}")
            return f"default = {value} (version {change(runner, prefix, 'default', '', int(value))})"
        stored = read(runner, prefix)
        assert stored is not None
        if args.command == "get":
            key = normalize_limit_spec(args.args[0])
            limits = HostLimits()
            limits.set_stored(stored.limits, stored.default)
            limits.set_stored_rates(stored.rates, stored.default_rate)
            if (
                key not in stored.limits
                and not any(k.startswith("*.") for k in stored.limits)
                and stored.default is None
            ):
                shown = f"{key}: no stored limit (each process's own applies)"
            else:
                shown = f"{key} = {limits.limit_for(key)}"
            rate = limits.rate_for(key)
            return shown + (f", rate {rate}" if rate is not None else "")
        lines = [f"{key} = {limit}" for key, limit in sorted(stored.limits.items())]
        lines.append(f"default = {'none (each process its own)' if stored.default is None else stored.default}")
        lines += [f"{key} rate = {rate}" for key, rate in sorted(stored.rates.items())]
        default_rate = stored.default_rate
        lines.append(f"default rate = {'none (each process its own)' if default_rate is None else default_rate}")
        return "\n".join(lines) + f"\n(version {stored.version})"
    finally:
        topology.close()
