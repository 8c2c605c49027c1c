"""Command line: flags > env vars > INI file > defaults, into one Config.

The flags, env vars and INI keys are built from the option table (``Config``'s fields),
so ``--help``, the INI parser and the table in docs/configuration.md cannot drift from it. A bad value
ends the process with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import configparser
import gc
import logging
import resource
import signal
import sys
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import IO, Any, NoReturn

import configargparse
import gevent

from .config import Config, flag, grouped_options, options, parser_for
from .errors import ConfigError, ListenError
from .library import ProxyRateLimiter
from .logs import setup_logging
from .version import __version__
from .workers.cpus import CpuCount, usable_cpus
from .workers.seat import Seat, follow_supervisor, tell_ready
from .workers.supervisor import Supervisor

YOUNG_OBJECTS = 10_000  # gc threshold of the youngest generation in python -m dprl (see main)
_INI_KEYS = {flag(spec)[2:] for spec in options()}


# INI sections of one option each, one 'KEY = VALUE' line per entry, and how its list joins them
_SECTIONS = {
    "host-limits": ",",
    "host-rates": ",",
    "shared-limits": ";",
    "shared-rates": ",",
    "tenant-shares": ",",
    "parent-pools": ";",
    "routes": ",",
}


class IniConfigFileParser(configargparse.ConfigFileParser):
    """``[dprl]`` holds options by flag name; ``[host-limits]`` holds ``host = N`` lines."""

    def get_syntax_description(self) -> str:
        return (
            "The config file is INI: a [dprl] section with options by their long flag name "
            "(port = 8080), a [host-limits] section with one 'host = N' line per host, a [host-rates] "
            "section with one 'host = RATE' line per host, [shared-limits], [shared-rates], [tenant-shares], "
            "[parent-pools] ('name = URL, URL') and [routes] ('pattern = pool', in order) sections."
        )

    def parse(self, stream: IO[str]) -> OrderedDict:
        ini = configparser.ConfigParser(interpolation=None, delimiters=("=",))
        ini.optionxform = str  # type: ignore[assignment,method-assign]  # keep keys as written (configparser's documented way)
        try:
            ini.read_file(stream)
        except configparser.Error as exc:
            message = str(exc).replace("\n", " ")
            raise configargparse.ConfigFileParserException(f"config file: {message}") from None
        items: OrderedDict = OrderedDict()
        for section in ini.sections():
            if section in _SECTIONS:  # one line per entry: the option's list, joined
                items[section] = _SECTIONS[section].join(f"{key}={value}" for key, value in ini.items(section))
            elif section == "dprl":
                for key, value in ini.items(section):
                    if key not in _INI_KEYS:
                        raise configargparse.ConfigFileParserException(f"config file: unknown option {key!r} in [dprl]")
                    items[key] = value
            else:
                expected = ", ".join(f"[{name}]" for name in ("dprl", *_SECTIONS))
                raise configargparse.ConfigFileParserException(
                    f"config file: unknown section [{section}] (expected {expected})"
                )
        return items


class _Parser(configargparse.ArgParser):
    raise_errors = False  # a reload (SIGHUP) reports a bad file instead of exiting

    def error(self, message: str) -> NoReturn:
        if self.raise_errors:
            raise ConfigError(message)
        fail(message)


def fail(message: str) -> NoReturn:
    sys.stderr.write(f"dprl: error: {message}\n")
    sys.exit(2)


def _converter(spec: Any) -> Callable[[str], object]:
    """argparse's ``type=``: the option's parser, with its errors as argparse errors."""
    parse = parser_for(spec)

    def convert(text: str) -> object:
        try:
            return parse(text)
        except ConfigError as exc:
            raise configargparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = spec.type if isinstance(spec.type, str) else "value"
    return convert


def build_parser() -> configargparse.ArgParser:
    parser = _Parser(
        prog="dprl",
        description="HTTP(S) forward proxy that caps concurrent upstream connections per host. "
        "'dprl status --help': the table of hosts of a running proxy, or of a fleet in Redis; "
        "'dprl limits --help': the fleet's limits stored in Redis.",
        config_file_parser_class=IniConfigFileParser,
        formatter_class=configargparse.ArgumentDefaultsHelpFormatter,
        add_env_var_help=True,
        ignore_unknown_config_file_keys=False,
    )
    parser.add_argument("--version", action="version", version=f"dprl {__version__}")
    parser.add_argument(
        "--config", env_var="DPRL_CONFIG", is_config_file=True, help="INI file with any of these options"
    )
    for title, specs in grouped_options():
        group = parser.add_argument_group(title)
        for spec in specs:
            _add_option(group, spec)
    return parser


def _add_option(group: argparse._ArgumentGroup, spec: Any) -> None:
    meta = spec.metadata
    default = spec.default if not callable(spec.default_factory) else ""
    group.add_argument(
        flag(spec),
        env_var=meta["env"],
        type=_converter(spec),
        default=default,
        metavar=meta["metavar"],
        help=meta["help"].replace("%", "%%"),  # argparse formats help with %
    )
    if meta["repeat_flag"] is not None:
        repeat, metavar, text = meta["repeat_flag"]
        group.add_argument(repeat, action="append", default=[], metavar=metavar, help=text.replace("%", "%%"))


def parse_config(argv: Sequence[str] | None = None, reloading: bool = False) -> Config:
    """The configuration from flags, env and INI; a bad value exits (or raises ConfigError
    when ``reloading``: the running proxy keeps its settings)."""
    parser = build_parser()
    parser.raise_errors = reloading
    try:
        args = parser.parse_args(argv)
    except configargparse.ConfigFileParserException as exc:
        if not reloading:
            raise
        raise ConfigError(str(exc)) from None
    values = {spec.name: getattr(args, spec.name) for spec in options()}
    try:
        for spec in options():  # a repeatable flag adds single entries to its option's mapping
            if spec.metadata["repeat_flag"] is not None:
                parse = parser_for(spec)
                given = getattr(args, spec.metadata["repeat_flag"][0][2:].replace("-", "_"))
                merged = values[spec.name] if isinstance(values[spec.name], dict) else {}
                values[spec.name] = {**merged, **{k: v for item in given for k, v in parse(item).items()}}
        return Config(**values)
    except ConfigError as exc:
        if reloading:
            raise
        fail(str(exc))


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
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["status"]:
        from .ops.status import main as status_main

        return status_main(args[1:])
    if args[:1] == ["limits"]:
        from .ops.limits_cli import main as limits_main

        return limits_main(args[1:])
    config = parse_config(args)
    # The process is dprl's own: no greenlet needs to know which one spawned it, and
    # recording that (a walk of the spawner's stack) costs every client connection ~3 us.
    # (Embedded, dprl leaves the host program's gevent settings alone.)
    gevent.config.track_greenlet_tree = False
    # The young objects of a few dozen open connections (sessions, endpoints, slots) hover
    # around CPython's default of 700: a collection every few connections, each walking
    # all of them (5 us per tunnel at 50 concurrent ones, measured). Cycles are rare here
    # (the pipe breaks its own), so collect young objects only after 10,000 more.
    gc.set_threshold(YOUNG_OBJECTS, *gc.get_threshold()[1:])
    identity = Seat.from_env()
    workers = _worker_count(config) if identity is None else None
    if workers is not None and workers.count > 1:
        return _supervise(config, args, workers)
    name = "dprl" if identity is None else f"dprl.w{identity.index}"
    log = setup_logging(config.log_level, config.log_format, name)
    if workers is not None and config.workers == "auto":
        log.info("--workers auto: %d worker(s), from %s", workers.count, workers.source)
    raise_open_files_limit(log)
    if identity is None:
        proxy = ProxyRateLimiter(config=config, logger=log)
    else:
        proxy = ProxyRateLimiter(config=config, logger=log, seat=identity)
    # Handlers first: a signal that arrives as soon as "listening" is logged must find them.
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, _stop_on_signal, proxy, log, signum)
    gevent.signal_handler(signal.SIGUSR1, _log_status, proxy, log)
    gevent.signal_handler(signal.SIGHUP, _reload, proxy, log, args)
    if identity is not None:
        follow_supervisor(identity)
    try:
        if identity is not None:
            proxy.listen()
            tell_ready(identity.ready_fd)
        proxy.serve_forever()
    except ListenError as exc:
        sys.stderr.write(f"dprl: error: {exc.strerror}\n")
        return 2
    return 0


def _worker_count(config: Config) -> CpuCount:
    """How many worker processes, and why (``auto``: the CPUs this process may use)."""
    if config.workers == "auto":
        return usable_cpus()
    return CpuCount(int(config.workers), "--workers")


def _supervise(config: Config, argv: list[str], workers: CpuCount) -> int:
    log = setup_logging(config.log_level, config.log_format, "dprl.supervisor")
    if config.workers == "auto":
        log.info("--workers auto: %d worker(s), from %s", workers.count, workers.source)
    try:
        return Supervisor(config, argv, log, workers.count).run()
    except ConfigError as exc:
        fail(str(exc))


def _log_status(proxy: ProxyRateLimiter, log: logging.Logger) -> None:
    status = proxy.status()
    held = ",".join(f"{host}={n}" for host, n in sorted(status["slots"].items())) or "none"
    log.warning("status: clients=%s slots-held=%s mode=%s", status["clients"], held, status["mode"])


def _reload(proxy: ProxyRateLimiter, log: logging.Logger, argv: list[str]) -> None:
    """SIGHUP: read flags, env and the INI file again; apply limits, patterns, shared caps,
    queueing and the log level. A bad file changes nothing and is reported in one line."""
    try:
        config = parse_config(argv, reloading=True)
    except ConfigError as exc:
        log.error("SIGHUP: configuration not reloaded, the running one is kept: %s", exc)
        return
    proxy.reload(config)
    log.setLevel({"warn": "WARNING"}.get(config.log_level, config.log_level.upper()))
    log.warning(
        "SIGHUP: configuration reloaded: max-connections=%s host-limits=%d shared-limits=%d max-rate=%s "
        "host-rates=%d log-level=%s",
        config.max_connections or "unlimited",
        len(config.host_limits),
        len(config.shared_limits),
        config.max_rate or "none",
        len(config.host_rates),
        config.log_level,
    )


def _stop_on_signal(proxy: ProxyRateLimiter, log: logging.Logger, signum: int) -> None:
    log.info("received %s: stopping", signal.Signals(signum).name)
    proxy.stop()
