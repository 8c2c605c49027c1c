from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable, Iterator

import pytest
import trustme
from hypothesis import settings

from dprl import ProxyRateLimiter

from .support.network import assert_no_slots, wait_for
from .support.redis_server import RedisServer, leftover_keys
from .support.upstream import CountingUpstream, EchoServer, HoldingServer, RawOrigin

# The same examples on every run: a test suite that passes once passes again (set
# DPRL_HYPOTHESIS_RANDOM=1 to explore new inputs while developing).
settings.register_profile("deterministic", derandomize=True)
settings.register_profile("explore", derandomize=False, max_examples=2000)
settings.load_profile("explore" if os.environ.get("DPRL_HYPOTHESIS_RANDOM") else "deterministic")

KINDS = ("unit", "integration", "faults", "soak")  # tests/KIND/: pytest -m KIND runs one kind


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test is marked with its kind, the folder it lives in."""
    for item in items:
        kind = item.path.parent.name
        if kind in KINDS:
            item.add_marker(kind)


@pytest.fixture
def upstream() -> Iterator[CountingUpstream]:
    server = CountingUpstream().start()
    yield server
    server.stop()


@pytest.fixture
def holding() -> Iterator[HoldingServer]:
    """A raw origin that holds each connection open until its client closes it, and
    records how many it held at every moment."""
    server = HoldingServer()
    yield server
    server.close()


@pytest.fixture
def echo_server() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.stop()


@pytest.fixture
def make_origin() -> Iterator[Callable[..., RawOrigin]]:
    """Scripted raw origins (``handler(conn, index)``), closed after the test."""
    origins: list[RawOrigin] = []

    def make(handler: Callable[[socket.socket, int], None], host: str = "127.0.0.1") -> RawOrigin:
        origins.append(RawOrigin(handler, host))
        return origins[-1]

    yield make
    for origin in origins:
        origin.close()


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_upstream(ca: trustme.CA) -> Iterator[CountingUpstream]:
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    server = CountingUpstream(tls=context).start()
    yield server
    server.stop()


@pytest.fixture
def make_proxy() -> Iterator[Callable[..., ProxyRateLimiter]]:
    """Start proxies in this process (background-thread mode); leak-check each one after."""
    started: list[ProxyRateLimiter] = []

    def make(max_connections_per_host: int = 0, **settings: object) -> ProxyRateLimiter:
        settings.setdefault("connect_timeout", 2.0)
        settings.setdefault("shutdown_timeout", 2.0)
        proxy = ProxyRateLimiter(0, max_connections_per_host, logging.getLogger("dprl.test"), **settings)
        started.append(proxy.start())
        return proxy

    yield make
    try:
        for proxy in started:
            assert_no_slots(proxy)
    finally:
        for proxy in started:
            proxy.stop(timeout=2)
    for proxy in started:
        assert not proxy.limiter.process_counts(), f"slots left after stop: {proxy.limiter.process_counts()}"


@pytest.fixture
def proxy(make_proxy: Callable[..., ProxyRateLimiter]) -> ProxyRateLimiter:
    return make_proxy()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture
def redis_prefix(redis_server: RedisServer) -> Iterator[str]:
    """A key prefix of this test's own; after the test, no key may remain under it."""
    prefix = f"dprl_test_{uuid.uuid4().hex[:10]}"
    yield prefix
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    client = redis_server.client()
    try:
        wait_for(lambda: not leftover_keys(client, prefix), timeout=10, what=f"no Redis keys left under {prefix}")
    finally:
        client.close()
