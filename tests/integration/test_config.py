"""Configuration: flag > env > INI > default, and one clear line with exit 2 on bad input."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from dprl.cli import parse_config

ENV_NAMES = [
    "DPRL_PORT",
    "DPRL_MAX_CONNECTIONS",
    "DPRL_HOST_LIMITS",
    "DPRL_CONFIG",
    "DPRL_BIND",
    "LOG_LEVEL",
    "REDIS_ADDR",
    "REDIS_DB",
    "REDIS_PASSWORD",
    "REDIS_URL",
    "DPRL_REDIS_PREFIX",
    "DPRL_LEASE_TTL",
    "DPRL_ON_REDIS_ERROR",
    "DPRL_REDIS_TIMEOUT",
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def ini(tmp_path):
    path = tmp_path / "dprl.ini"
    path.write_text(
        textwrap.dedent(
            """
            [dprl]
            port = 7001
            max-connections = 11
            log-level = debug

            [host-limits]
            API.example.com = 5
            b.example.com:8443 = 2
            """
        )
    )
    return str(path)


def test_defaults_match_the_reference():
    config = parse_config([])
    assert (config.port, config.max_connections, config.log_level, config.redis_addr, config.redis_db) == (
        8080,
        0,
        "info",
        "",
        0,
    )
    assert config.bind == "0.0.0.0" and config.shutdown_timeout == 10


def test_ini_file_is_read(ini):
    config = parse_config(["--config", ini])
    assert config.port == 7001 and config.max_connections == 11 and config.log_level == "debug"
    assert config.host_limits == {"api.example.com": 5, "b.example.com:8443": 2}


def test_env_beats_ini_and_flag_beats_env(ini, monkeypatch):
    monkeypatch.setenv("DPRL_CONFIG", ini)
    monkeypatch.setenv("DPRL_PORT", "7002")
    monkeypatch.setenv("DPRL_HOST_LIMITS", "c.example.com=3, api.example.com:443=4")
    config = parse_config([])
    assert config.port == 7002 and config.max_connections == 11
    assert config.host_limits == {"c.example.com": 3, "api.example.com": 4}
    config = parse_config(["--port", "7003", "--host-limit", "c.example.com=9", "--host-limit", "[::1]:9000=1"])
    assert config.port == 7003
    assert config.host_limits == {"c.example.com": 9, "api.example.com": 4, "[::1]:9000": 1}


def test_reference_env_names(monkeypatch):
    monkeypatch.setenv("LOG_LEVEL", "warn")
    monkeypatch.setenv("REDIS_ADDR", "127.0.0.1:6390")
    monkeypatch.setenv("REDIS_DB", "3")
    monkeypatch.setenv("REDIS_PASSWORD", "pw")
    monkeypatch.setenv("DPRL_MAX_CONNECTIONS", "25")
    config = parse_config([])
    assert (config.log_level, config.redis_addr, config.redis_db, config.redis_password) == (
        "warn",
        "127.0.0.1:6390",
        3,
        "pw",
    )
    assert config.max_connections == 25


def _run_cli(args, env=None, tmp_path=None):
    full_env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "dprl", *args], capture_output=True, text=True, env=full_env, timeout=30
    )


@pytest.mark.parametrize(
    ("args", "env", "ini_text", "message"),
    [
        (["--port", "70000"], {}, None, "port must be 0-65535"),
        (["--port", "abc"], {}, None, "invalid int value"),
        (["--max-connections", "-1"], {}, None, "max-connections must be 0"),
        (["--host-limit", "api.example.com=abc"], {}, None, "HOST=N"),
        (["--host-limit", "bad host=1"], {}, None, "invalid host name"),
        ([], {"DPRL_PORT": "-5"}, None, "port must be 0-65535"),
        ([], {"DPRL_HOST_LIMITS": "x.example.com"}, None, "HOST=N"),
        (["--log-level", "loud"], {}, None, "log-level must be debug, info, warn or error"),
        (["--redis-addr", "127.0.0.1:notaport"], {}, None, "redis-addr"),
        (["--connect-timeout", "0"], {}, None, "connect-timeout must be more than 0"),
        (["--no-such-flag"], {}, None, "unrecognized arguments"),
        (["--redis-url", "http://127.0.0.1"], {}, None, "redis-url must start with"),
        (["--redis-url", "redis://a", "--redis-addr", "b:1"], {}, None, "either redis-url or redis-addr"),
        (["--on-redis-error", "panic"], {}, None, "on-redis-error must be reject, allow or local"),
        (["--lease-ttl", "0"], {}, None, "lease-ttl must be at least"),
        (["--redis-prefix", "a{b}"], {}, None, "redis-prefix"),
        ([], {}, "[dprl]\nno-such-key = 1\n", "unknown option 'no-such-key'"),
        ([], {}, "[other]\nport = 1\n", "unknown section [other]"),
        ([], {}, "[host-limits]\na.example.com = many\n", "HOST=N"),
        ([], {}, "not an ini file", "config file"),
        (["--config", "/nonexistent/dprl.ini"], {}, None, "dprl.ini"),
        (["--parent-pool", "p=ftp://a:21"], {}, None, "a parent URL starts with"),
        (["--parent-pool", "p=http://u:hunter2@a"], {}, None, "needs a host and a port"),
        (["--parent-pool", "p=http://a:1,select=random"], {}, None, "select= is one of"),
        (["--parent-pool", "p=http://a:1?max=x"], {}, None, "whole numbers"),
        (["--route", "*=nowhere"], {}, None, "no parent pool named 'nowhere'"),
        (["--parent-auth", "theirs"], {}, None, "parent-auth must be own or passthrough"),
        ([], {"DPRL_ROUTES": "*.a.com"}, None, "a route is PATTERN=POOL"),
        ([], {}, "[routes]\n* = missing\n", "no parent pool named 'missing'"),
    ],
)
def test_bad_configuration_exits_2_with_one_line(tmp_path, args, env, ini_text, message):
    if ini_text is not None:
        path = tmp_path / "bad.ini"
        path.write_text(ini_text)
        args = ["--config", str(path), *args]
    result = _run_cli(args, env)
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("dprl: error: ") and message in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert "hunter2" not in result.stderr  # a parent's password is never shown, even in an error


def test_help_documents_every_option_with_its_env_var():
    result = _run_cli(["--help"])
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for flag, env in [
        ("--port", "DPRL_PORT"),
        ("--max-connections", "DPRL_MAX_CONNECTIONS"),
        ("--log-level", "LOG_LEVEL"),
        ("--redis-addr", "REDIS_ADDR"),
        ("--redis-password", "REDIS_PASSWORD"),
        ("--redis-db", "REDIS_DB"),
        ("--config", "DPRL_CONFIG"),
        ("--host-limits", "DPRL_HOST_LIMITS"),
        ("--bind", "DPRL_BIND"),
        ("--shutdown-timeout", "DPRL_SHUTDOWN_TIMEOUT"),
        ("--connect-timeout", "DPRL_CONNECT_TIMEOUT"),
        ("--header-timeout", "DPRL_HEADER_TIMEOUT"),
        ("--idle-timeout", "DPRL_IDLE_TIMEOUT"),
    ]:
        assert flag in text and f"env var: {env}" in text, flag
    assert "--host-limit HOST=N" in text


def test_distributed_options_and_redis_url_from_addr(monkeypatch):
    monkeypatch.setenv("REDIS_ADDR", "10.0.0.5:6380")
    monkeypatch.setenv("REDIS_PASSWORD", "p@ss/word")
    monkeypatch.setenv("REDIS_DB", "2")
    monkeypatch.setenv("DPRL_LEASE_TTL", "6")
    monkeypatch.setenv("DPRL_ON_REDIS_ERROR", "local")
    config = parse_config(["--redis-prefix", "fleet_a", "--redis-timeout", "0.25"])
    assert config.effective_redis_url == "redis://:p%40ss%2Fword@10.0.0.5:6380/2"
    assert (config.lease_ttl, config.on_redis_error, config.redis_prefix, config.redis_timeout) == (
        6,
        "local",
        "fleet_a",
        0.25,
    )
    monkeypatch.delenv("REDIS_ADDR")
    monkeypatch.setenv("REDIS_URL", "rediss://redis.internal:6380/1")
    assert parse_config([]).effective_redis_url == "rediss://redis.internal:6380/1"
    monkeypatch.delenv("REDIS_URL")
    assert parse_config([]).effective_redis_url == ""  # local mode


def test_help_lists_every_option_with_its_env_var():
    from dprl.config import flag, options

    text = _run_cli(["--help"]).stdout
    for spec in options():
        assert flag(spec) in text and spec.metadata["env"] in text, flag(spec)


def test_library_and_cli_build_the_same_config():
    """One table, two ways in: keywords and flags reach the same, already checked, Config."""
    from dprl import ProxyRateLimiter
    from dprl.config import Config

    from_cli = parse_config(["--port", "0", "--max-connections", "7", "--host-limit", "API.example.com:443=3"])
    library = ProxyRateLimiter(0, 7, bind="0.0.0.0", host_limits={"api.example.com": 3})
    assert from_cli == library.config == Config(port=0, max_connections=7, host_limits={"api.example.com": 3})


def test_parent_pools_and_routes_from_an_ini_file_the_environment_and_flags(tmp_path, monkeypatch):
    ini = tmp_path / "parents.ini"
    ini.write_text(
        "[parent-pools]\n"
        "scrape = http://user:pw@10.0.0.1:3128?max=50, socks5h://10.0.0.2:1080?weight=2, select=destination-hash\n"
        "[routes]\n"
        "*.shop.example = scrape\n"
        "* = direct\n"
    )
    config = parse_config(["--config", str(ini)])
    pool = config.parent_pools["scrape"]
    assert pool.select == "destination-hash"
    assert [(p.scheme, p.host, p.port, p.max_connections, p.weight) for p in pool.parents] == [
        ("http", "10.0.0.1", 3128, 50, 1),
        ("socks5h", "10.0.0.2", 1080, 0, 2),
    ]
    assert pool.parents[0].username == "user" and "pw" not in repr(config)
    assert list(config.routes.items()) == [("*.shop.example", "scrape"), ("*", "direct")]
    monkeypatch.setenv("DPRL_PARENT_POOLS", "corp=http://egress:3128,max=20")
    monkeypatch.setenv("DPRL_ROUTES", "*=corp")
    config = parse_config(["--parent-pool", "extra=https://p.example:443", "--route", "api.example=extra"])
    assert config.parent_pools["corp"].parents[0].max_connections == 20  # the pool's max, for each parent
    assert set(config.parent_pools) == {"corp", "extra"}
    assert list(config.routes.items()) == [("*", "corp"), ("api.example", "extra")]
