"""Command line: flags > env vars > INI file > defaults, into one validated Config.

Every option is declared once in OPTIONS; ``--help`` shows each with its env var. A bad
value ends the process with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import configparser
import logging
import resource
import signal
import sys
from collections import OrderedDict
from collections.abc import Sequence
from typing import IO, NoReturn

import configargparse
import gevent

from .config import Config, parse_host_limit, parse_host_limits
from .errors import ConfigError
from .proxy import ProxyRateLimiter

_DEFAULTS = Config()

# (flag, env var, type, default, help); the INI key is the flag without its dashes.
OPTIONS: list[tuple[str, str, type, object, str]] = [
    ("--port", "DPRL_PORT", int, _DEFAULTS.port, "port to listen on (0 picks a free one)"),
    ("--bind", "DPRL_BIND", str, _DEFAULTS.bind, "address to listen on"),
    (
        "--max-connections",
        "DPRL_MAX_CONNECTIONS",
        int,
        _DEFAULTS.max_connections,
        "default cap on concurrent upstream connections per host (0 = unlimited)",
    ),
    (
        "--host-limits",
        "DPRL_HOST_LIMITS",
        str,
        "",
        "per-host caps as HOST=N,HOST=N (INI: a [host-limits] section)",
    ),
    ("--log-level", "LOG_LEVEL", str, _DEFAULTS.log_level, "debug, info, warn or error"),
    ("--redis-addr", "REDIS_ADDR", str, _DEFAULTS.redis_addr, "Redis host:port; empty = local mode"),
    ("--redis-password", "REDIS_PASSWORD", str, _DEFAULTS.redis_password, "Redis password"),
    ("--redis-db", "REDIS_DB", int, _DEFAULTS.redis_db, "Redis database number"),
    (
        "--redis-url",
        "REDIS_URL",
        str,
        _DEFAULTS.redis_url,
        "Redis URL (redis://, rediss:// for TLS, unix://), instead of --redis-addr",
    ),
    ("--redis-prefix", "DPRL_REDIS_PREFIX", str, _DEFAULTS.redis_prefix, "prefix of every Redis key"),
    (
        "--redis-timeout",
        "DPRL_REDIS_TIMEOUT",
        float,
        _DEFAULTS.redis_timeout,
        "seconds to connect to Redis and for each call",
    ),
    (
        "--lease-ttl",
        "DPRL_LEASE_TTL",
        float,
        _DEFAULTS.lease_ttl,
        "seconds after which a dead worker's slots are free again (refreshed every third of it)",
    ),
    (
        "--on-redis-error",
        "DPRL_ON_REDIS_ERROR",
        str,
        _DEFAULTS.on_redis_error,
        "when Redis is unreachable: reject (500), allow (fail open) or local (per-process caps)",
    ),
    (
        "--connect-timeout",
        "DPRL_CONNECT_TIMEOUT",
        float,
        _DEFAULTS.connect_timeout,
        "seconds to resolve and connect to an upstream (then 504)",
    ),
    (
        "--header-timeout",
        "DPRL_HEADER_TIMEOUT",
        float,
        _DEFAULTS.header_timeout,
        "seconds for a client to send a whole request head (then 408)",
    ),
    (
        "--idle-timeout",
        "DPRL_IDLE_TIMEOUT",
        float,
        _DEFAULTS.idle_timeout,
        "seconds a keep-alive client connection may sit idle, or stall mid-body",
    ),
    (
        "--shutdown-timeout",
        "DPRL_SHUTDOWN_TIMEOUT",
        float,
        _DEFAULTS.shutdown_timeout,
        "seconds open connections get to finish on SIGTERM/SIGINT",
    ),
    ("--max-clients", "DPRL_MAX_CLIENTS", int, _DEFAULTS.max_clients, "concurrent client connections"),
    (
        "--tunnel-idle-timeout",
        "DPRL_TUNNEL_IDLE_TIMEOUT",
        float,
        _DEFAULTS.tunnel_idle_timeout,
        "close a tunnel that carried no byte either way for this many seconds (0 = never)",
    ),
    (
        "--max-request-line",
        "DPRL_MAX_REQUEST_LINE",
        int,
        _DEFAULTS.max_request_line,
        "longest request line, bytes (then 414)",
    ),
    (
        "--max-header-size",
        "DPRL_MAX_HEADER_SIZE",
        int,
        _DEFAULTS.max_header_size,
        "largest request head, bytes (then 431)",
    ),
    (
        "--max-header-count",
        "DPRL_MAX_HEADER_COUNT",
        int,
        _DEFAULTS.max_header_count,
        "most header fields in a request (then 431)",
    ),
    (
        "--allow-clients",
        "DPRL_ALLOW_CLIENTS",
        str,
        _DEFAULTS.allow_clients,
        "comma-separated CIDRs of clients allowed to use the proxy (others get 403)",
    ),
    (
        "--proxy-auth",
        "DPRL_PROXY_AUTH",
        str,
        _DEFAULTS.proxy_auth,
        "require Basic proxy authentication with this USER:PASSWORD (407 otherwise)",
    ),
    (
        "--proxy-auth-file",
        "DPRL_PROXY_AUTH_FILE",
        str,
        _DEFAULTS.proxy_auth_file,
        "file of USER:PASSWORD lines accepted for proxy authentication",
    ),
    (
        "--connect-ports",
        "DPRL_CONNECT_PORTS",
        str,
        _DEFAULTS.connect_ports,
        "ports CONNECT may reach, e.g. 443,8443,9000-9100 (empty = any)",
    ),
    (
        "--deny-destinations",
        "DPRL_DENY_DESTINATIONS",
        str,
        _DEFAULTS.deny_destinations,
        "comma-separated CIDRs never connected to, checked after name resolution (403)",
    ),
    (
        "--refusal-log-interval",
        "DPRL_REFUSAL_LOG_INTERVAL",
        float,
        _DEFAULTS.refusal_log_interval,
        "seconds between the aggregated 'refused N connections to HOST' warnings",
    ),
]
_INI_KEYS = {flag[2:] for flag, *_ in OPTIONS}


class IniConfigFileParser(configargparse.ConfigFileParser):
    """``[dprl]`` holds options by flag name; ``[host-limits]`` holds ``host = N`` lines."""

    def get_syntax_description(self) -> str:
        return (
            "The config file is INI: a [dprl] section with options by their long flag name "
            "(port = 8080) and a [host-limits] section with one 'host = N' line per host."
        )

    def parse(self, stream: IO[str]) -> OrderedDict:
        ini = configparser.ConfigParser(interpolation=None, delimiters=("=",))
        ini.optionxform = str  # keep keys as written; host names are normalised later
        try:
            ini.read_file(stream)
        except configparser.Error as exc:
            message = str(exc).replace("\n", " ")
            raise configargparse.ConfigFileParserException(f"config file: {message}") from None
        items: OrderedDict = OrderedDict()
        for section in ini.sections():
            if section == "host-limits":
                pairs = [f"{host}={value}" for host, value in ini.items(section)]
                items["host-limits"] = ",".join(pairs)
            elif section == "dprl":
                for key, value in ini.items(section):
                    if key not in _INI_KEYS:
                        raise configargparse.ConfigFileParserException(f"config file: unknown option {key!r} in [dprl]")
                    items[key] = value
            else:
                raise configargparse.ConfigFileParserException(
                    f"config file: unknown section [{section}] (expected [dprl] and [host-limits])"
                )
        return items


class _Parser(configargparse.ArgParser):
    def error(self, message: str) -> NoReturn:
        fail(message)


def fail(message: str) -> NoReturn:
    sys.stderr.write(f"dprl: error: {message}\n")
    sys.exit(2)


def build_parser() -> configargparse.ArgParser:
    parser = _Parser(
        prog="dprl",
        description="HTTP(S) forward proxy that caps concurrent upstream connections per host.",
        config_file_parser_class=IniConfigFileParser,
        formatter_class=configargparse.ArgumentDefaultsHelpFormatter,
        add_env_var_help=True,
        ignore_unknown_config_file_keys=False,
    )
    parser.add_argument(
        "--config", env_var="DPRL_CONFIG", is_config_file=True, help="INI file with any of these options"
    )
    for flag, env, kind, default, text in OPTIONS:
        parser.add_argument(flag, env_var=env, type=kind, default=default, help=text)
    parser.add_argument(
        "--host-limit",
        action="append",
        default=[],
        metavar="HOST=N",
        help="cap for one host (repeatable); overrides the same host in --host-limits",
    )
    return parser


def parse_config(argv: Sequence[str] | None = None) -> Config:
    args = build_parser().parse_args(argv)
    try:
        limits = parse_host_limits(args.host_limits)
        for item in args.host_limit:
            host, limit = parse_host_limit(item)
            limits[host] = limit
        values = {flag[2:].replace("-", "_"): getattr(args, flag[2:].replace("-", "_")) for flag, *_ in OPTIONS}
        values["host_limits"] = limits
        return Config(**values).validate()
    except ConfigError as exc:
        fail(str(exc))


def setup_logging(level: str) -> logging.Logger:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log = logging.getLogger("dprl")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel({"warn": "WARNING"}.get(level, level.upper()))
    return log


def raise_open_files_limit(log: logging.Logger) -> int:
    """Every client and upstream connection is a descriptor: raise the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, target, exc)
    log.info("open-files limit %s (hard limit %s)", soft, "unlimited" if hard == resource.RLIM_INFINITY else hard)
    return soft


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(argv)
    log = setup_logging(config.log_level)
    raise_open_files_limit(log)
    proxy = ProxyRateLimiter(config=config, logger=log)
    # Handlers first: a signal that arrives as soon as "listening" is logged must find them.
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, _stop_on_signal, proxy, log, signum)
    gevent.signal_handler(signal.SIGUSR1, _log_status, proxy, log)
    try:
        proxy._build_server()
    except OSError as exc:
        sys.stderr.write(f"dprl: error: cannot listen on {config.bind}:{config.port}: {exc.strerror or exc}\n")
        return 1
    proxy.serve_forever()
    return 0


def _log_status(proxy: ProxyRateLimiter, log: logging.Logger) -> None:
    status = proxy.status()
    slots = status["slots"]
    held = ",".join(f"{host}={n}" for host, n in sorted(slots.items())) or "none"  # type: ignore[union-attr]
    log.warning("status: clients=%s slots-held=%s mode=%s", status["clients"], held, status["mode"])


def _stop_on_signal(proxy: ProxyRateLimiter, log: logging.Logger, signum: int) -> None:
    log.info("received %s: stopping", signal.Signals(signum).name)
    proxy.stop()
