"""Parent proxies: destinations reached through pools of real parents on loopback (tinyproxy,
dante, a second dprl), spread, capped, failed over and healed, with the destination's cap
still counted once at a counting upstream.
"""

from __future__ import annotations

import collections
import json
import logging
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
import trustme

from dprl import DistributedProxyRateLimiter, ProxyRateLimiter

from ..support.network import free_port, read_head, wait_for
from ..support.parents import CountingRelay, Dante, TinyProxy, TlsFront, connect_through
from ..support.proxy_process import ProxyProcess, run_dprl
from ..support.redis_server import RedisServer
from ..support.upstream import CountingUpstream, EchoServer, HoldingServer

CREDENTIALS = "scraper:s3cret"  # the tinyproxy fixture's


@pytest.fixture
def tinyproxy(tmp_path: Path) -> Iterator[TinyProxy]:
    parent = TinyProxy(tmp_path, *CREDENTIALS.split(":"))
    yield parent
    parent.stop()


@pytest.fixture
def relays() -> Iterator[Callable[..., CountingRelay]]:
    made: list[CountingRelay] = []

    def make(target_port: int, scheme: str = "http") -> CountingRelay:
        relay = CountingRelay(target_port, scheme)
        made.append(relay)
        return relay

    yield make
    for relay in made:
        relay.close()


def _plain_get(proxy: ProxyRateLimiter, url: str) -> requests.Response:
    return requests.get(url, proxies={"http": proxy.proxy_url}, timeout=10)


@pytest.mark.parametrize("kind", ["tinyproxy", "dante-socks5", "dante-socks5h", "dprl"])
def test_each_kind_of_parent_carries_connect_and_plain_http(
    kind: str, tmp_path: Path, make_proxy: Callable[..., ProxyRateLimiter], upstream: CountingUpstream
) -> None:
    """Plain HTTP and a CONNECT tunnel through a real parent of each kind; the parent's
    credentials come from its URL, and the client's never reach the destination."""
    parents: list[TinyProxy | Dante] = []
    if kind == "tinyproxy":
        parents.append(TinyProxy(tmp_path, *CREDENTIALS.split(":")))
        url = parents[0].url
    elif kind.startswith("dante"):
        parents.append(Dante(tmp_path))
        url = parents[0].url.replace("socks5://", kind.removeprefix("dante-") + "://")
    else:
        url = make_proxy(10).proxy_url  # another dprl as the parent
    try:
        proxy = make_proxy(10, parent_pools={"pool": url}, routes={"*": "pool"}, access_log=True)
        response = _plain_get(proxy, f"http://127.0.0.1:{upstream.port}/echo")
        assert response.status_code == 200 and response.text.startswith("GET /echo")
        assert "proxy-authorization" not in response.text.lower()
        target = f"127.0.0.1:{upstream.port}"
        sock, head = connect_through(proxy.port, target)
        assert head.startswith(b"HTTP/1.1 200"), head
        sock.sendall(f"GET /tunnelled HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        assert read_head(sock).startswith(b"HTTP/1.1 200")
        sock.close()
        (state,) = proxy.parent_states()
        assert state["state"] == "up" and state["failures"] == 0 and "s3cret" not in repr(state)
    finally:
        for parent in parents:
            parent.stop()


def test_round_robin_spreads_evenly_and_destination_hash_sticks(
    tinyproxy: TinyProxy, relays: Callable[..., CountingRelay], make_proxy: Callable[..., ProxyRateLimiter]
) -> None:
    """Three parents (relays in front of one tinyproxy): 30 tunnels one after another go
    10 ± 1 to each; with destination-hash each of 6 destinations keeps one parent."""
    origins = [EchoServer() for _ in range(6)]
    try:
        spread = [relays(tinyproxy.port) for _ in range(3)]
        urls = ",".join(r.url(userinfo=CREDENTIALS) for r in spread)
        proxy = make_proxy(10, parent_pools={"rr": urls}, routes={"*": "rr"})
        for i in range(30):
            sock, head = connect_through(proxy.port, f"127.0.0.1:{origins[0].port}", f"rr-{i};".encode())
            assert head.startswith(b"HTTP/1.1 200"), head
            sock.close()
        wait_for(lambda: sum(r.accepted for r in spread) == 30, 5, "30 tunnels at the parents")
        assert all(9 <= r.accepted <= 11 for r in spread), [r.accepted for r in spread]

        sticky = [relays(tinyproxy.port) for _ in range(3)]
        urls = ",".join(r.url(userinfo=CREDENTIALS) for r in sticky) + ",select=destination-hash"
        proxy.set_parent_pool("rr", urls)
        for round_ in range(4):
            for n, origin in enumerate(origins):
                sock, head = connect_through(proxy.port, f"127.0.0.1:{origin.port}", f"d{n}-r{round_};".encode())
                assert head.startswith(b"HTTP/1.1 200"), head
                sock.close()
        wait_for(lambda: sum(r.accepted for r in sticky) == 24, 5, "24 tunnels at the parents")
        for n in range(len(origins)):
            homes = {i for i, relay in enumerate(sticky) for r in range(4) if relay.carried(f"d{n}-r{r};".encode())}
            assert len(homes) == 1, f"destination {n} went through parents {homes}"
        assert sum(1 for r in sticky if r.accepted) >= 2, "six destinations all hashed to one parent"
    finally:
        for origin in origins:
            origin.stop()


def test_least_connections_sends_new_tunnels_to_the_parent_with_fewest_open(
    tinyproxy: TinyProxy, relays: Callable[..., CountingRelay], make_proxy: Callable[..., ProxyRateLimiter]
) -> None:
    holding = HoldingServer()
    try:
        a, b = relays(tinyproxy.port), relays(tinyproxy.port)
        urls = ",".join(r.url(userinfo=CREDENTIALS) for r in (a, b)) + ",select=least-connections"
        proxy = make_proxy(20, parent_pools={"lc": urls}, routes={"*": "lc"})
        target = f"127.0.0.1:{holding.port}"
        held = {f"h{i};": connect_through(proxy.port, target, f"h{i};".encode())[0] for i in range(6)}
        wait_for(lambda: a.active + b.active == 6, 5, "six tunnels held")
        assert a.active == b.active == 3  # fewest first: they alternate
        for token, sock in list(held.items()):  # the tunnels of a end: a holds none, b three
            if a.carried(token.encode()):
                sock.close()
                del held[token]
        wait_for(lambda: a.active == 0, 5, "a's tunnels closed")
        fresh = [connect_through(proxy.port, target, f"n{i};".encode())[0] for i in range(4)]
        wait_for(lambda: a.active + b.active == 7, 5, "the new tunnels open")
        on_a = sum(1 for i in range(4) if a.carried(f"n{i};".encode()))
        assert on_a == 3, f"{on_a} of 4 new tunnels went to the idle parent (expected 3, then a tie)"
        for sock in [*held.values(), *fresh]:
            sock.close()
    finally:
        holding.close()


def test_a_parents_cap_holds_fleet_wide_over_three_redis_workers(
    tinyproxy: TinyProxy, relays: Callable[..., CountingRelay], redis_server: RedisServer, redis_prefix: str
) -> None:
    """Two parents capped at 2 each (?max=2), three workers: at most 2 at each parent
    whatever the workers do; with both at their cap a fifth tunnel is refused, naming the pool."""
    holding = HoldingServer()
    a, b = relays(tinyproxy.port), relays(tinyproxy.port)
    urls = ",".join(r.url("?max=2", CREDENTIALS) for r in (a, b))
    workers = [
        DistributedProxyRateLimiter(
            port=0,
            max_connections_per_host=50,
            redis_url=redis_server.url,
            redis_prefix=redis_prefix,
            parent_pools={"provider": urls},
            routes={"*": "provider"},
            connect_timeout=2.0,
            shutdown_timeout=2.0,
        ).start()
        for _ in range(3)
    ]
    try:
        target = f"127.0.0.1:{holding.port}"
        answers = [connect_through(workers[i % 3].port, target) for i in range(6)]
        statuses = sorted(int(head.split(b" ")[1]) for _, head in answers)
        assert statuses == [200] * 4 + [500] * 2, statuses
        refusal = next(head for _, head in answers if head.startswith(b"HTTP/1.1 500"))
        assert b"parent pool provider" in refusal
        holding.wait_active(4)
        assert a.max_active <= 2 and b.max_active <= 2, (a.max_active, b.max_active)
        for sock, _ in answers:
            sock.close()
        wait_for(lambda: all(not w.limiter.process_counts() for w in workers), 5, "every slot back")
    finally:
        for worker in workers:
            worker.stop(timeout=2)
        holding.close()


def test_a_killed_parent_is_failed_over_ejected_and_back_after_its_restart(
    tmp_path: Path, make_proxy: Callable[..., ProxyRateLimiter], upstream: CountingUpstream
) -> None:
    """Two tinyproxies under load (6 clients opening short tunnels in a loop); one is
    SIGKILLed: no connect that had not started sees an error (each fails over to the live
    parent), the dead parent is ejected after 3 failures, and a probe brings it back within
    the back-off once it listens again."""
    first, second = TinyProxy(tmp_path), TinyProxy(tmp_path)
    stop = threading.Event()
    outcomes: list[str] = []  # per tunnel: "ok", "refused" (its CONNECT failed) or "cut" (it died once up)
    try:
        proxy = make_proxy(50, parent_pools={"pool": f"{first.url},{second.url}"}, routes={"*": "pool"})
        target = f"127.0.0.1:{upstream.port}"

        def client() -> None:
            while not stop.is_set():
                sock, head = connect_through(proxy.port, target)
                with sock:
                    if not head.startswith(b"HTTP/1.1 200"):
                        outcomes.append("refused")
                        continue
                    try:  # one request through the tunnel (tinyproxy ends a tunnel at a half-close)
                        sock.sendall(f"GET /x HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
                        outcomes.append("ok" if read_head(sock).startswith(b"HTTP/1.1 200") else "cut")
                    except (OSError, AssertionError):
                        outcomes.append("cut")

        threads = [threading.Thread(target=client, daemon=True) for _ in range(6)]
        for thread in threads:
            thread.start()
        wait_for(lambda: outcomes.count("ok") >= 30, 10, "tunnels through both parents")
        first.kill()
        killed = time.monotonic()
        wait_for(lambda: len(outcomes) >= 100, 20, "tunnels after the kill")
        dead = f"pool/127.0.0.1:{first.port}"
        states = {s["parent"]: s for s in proxy.parent_states()}
        # ejected at its 3rd failure in a row; connects to it already under way then (one per client
        # at most) fail over as well
        assert states[dead]["state"] == "ejected", states[dead]
        failed = sum(states[dead]["failures_total"].values())  # refused connects, or handshakes cut by the kill
        assert 3 <= failed <= 3 + len(threads) - 1, states[dead]
        first.start()
        restarted = time.monotonic()
        wait_for(lambda: {s["parent"]: s for s in proxy.parent_states()}[dead]["state"] == "up", 8, "it is back")
        back = time.monotonic() - restarted
        stop.set()
        for thread in threads:
            thread.join(10)
        down = restarted - killed
        print(f"back {back:.2f}s after the restart ({down:.2f}s down); {collections.Counter(outcomes)}")
        assert "refused" not in outcomes, collections.Counter(outcomes)
        assert back <= 2 * 1.2 + 0.5  # the first back-off, doubled at most once, jittered
    finally:
        stop.set()
        first.stop()
        second.stop()


def test_every_parent_down_gives_502_at_once_naming_the_pool(
    make_proxy: Callable[..., ProxyRateLimiter], upstream: CountingUpstream
) -> None:
    dead = [socket.socket() for _ in range(2)]
    for sock in dead:  # bound, never listening: a connect is refused
        sock.bind(("127.0.0.1", 0))
    try:
        urls = ",".join(f"http://127.0.0.1:{s.getsockname()[1]}" for s in dead)
        proxy = make_proxy(10, parent_pools={"egress": urls}, routes={"*": "egress"}, parent_failures=1)
        started = time.monotonic()
        response = _plain_get(proxy, f"http://127.0.0.1:{upstream.port}/x")
        assert response.status_code == 502 and "no parent of pool egress could connect" in response.text
        response = _plain_get(proxy, f"http://127.0.0.1:{upstream.port}/x")  # both ejected now
        assert response.status_code == 502 and "every parent of pool egress is down" in response.text
        assert time.monotonic() - started < 2.0
        assert not upstream.requests
    finally:
        for sock in dead:
            sock.close()


def test_passthrough_auth_reaches_the_parent_and_own_auth_never_leaks_the_clients(
    tinyproxy: TinyProxy, make_proxy: Callable[..., ProxyRateLimiter], upstream: CountingUpstream
) -> None:
    bare = f"http://127.0.0.1:{tinyproxy.port}"
    url = f"http://127.0.0.1:{upstream.port}/echo"
    passthrough = make_proxy(10, parent_pools={"p": bare}, routes={"*": "p"}, parent_auth="passthrough")
    with_client_credentials = {"http": passthrough.proxy_url.replace("://", "://scraper:s3cret@")}
    assert requests.get(url, proxies=with_client_credentials, timeout=10).status_code == 200
    sock = socket.create_connection(("127.0.0.1", passthrough.port))
    sock.sendall(
        b"CONNECT %s HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic c2NyYXBlcjpzM2NyZXQ=\r\n\r\n"
        % (f"127.0.0.1:{upstream.port}".encode())
    )
    assert read_head(sock).startswith(b"HTTP/1.1 200")
    sock.close()
    # own credentials (the default): the client's header is dprl's alone; the parent asks for its own
    own = make_proxy(10, parent_pools={"p": bare}, routes={"*": "p"})
    answer = requests.get(url, proxies={"http": own.proxy_url.replace("://", "://scraper:s3cret@")}, timeout=10)
    assert answer.status_code == 407  # tinyproxy's own answer: the client's credentials never reached it
    sock, head = connect_through(own.port, f"127.0.0.1:{upstream.port}")
    sock.close()
    assert head.startswith(b"HTTP/1.1 407") and b"asks for credentials (put them in its URL)" in head


def test_the_destination_cap_holds_while_connections_fail_over(
    tinyproxy: TinyProxy, make_proxy: Callable[..., ProxyRateLimiter]
) -> None:
    """Cap 2 at the destination; the pool's first parent is dead: each connection that tries
    it fails over on the same destination slot, counted once, given back once."""
    holding = HoldingServer()
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    try:
        urls = f"http://127.0.0.1:{dead.getsockname()[1]},{tinyproxy.url}"
        proxy = make_proxy(2, parent_pools={"p": urls}, routes={"*": "p"}, parent_failures=100)
        target = f"127.0.0.1:{holding.port}"
        for _ in range(3):
            opened = [connect_through(proxy.port, target) for _ in range(3)]
            assert sorted(int(head.split(b" ")[1]) for _, head in opened) == [200, 200, 500]
            holding.wait_active(2)
            assert proxy.limiter.process_counts() == {target: 2}
            for sock, _ in opened:
                sock.close()
            wait_for(lambda: not proxy.limiter.process_counts(), 5, "the destination's slots back")
        assert holding.max_active == 2
        (dead_state, _) = proxy.parent_states()
        assert dead_state["failures"] >= 3  # it was tried, and failed over from
    finally:
        dead.close()
        holding.close()


def test_operations_show_each_parent_and_never_its_credentials(
    tinyproxy: TinyProxy,
    make_proxy: Callable[..., ProxyRateLimiter],
    upstream: CountingUpstream,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """/parents, the metrics, `dprl status` and the access log name each parent as
    POOL/HOST:PORT; its password appears nowhere, not even when it is ejected."""
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_url = f"http://scraper:s3cret@127.0.0.1:{dead.getsockname()[1]}?max=4"
    try:
        caplog.set_level(logging.DEBUG, logger="dprl.test")
        proxy = make_proxy(
            10,
            parent_pools={"scrape": f"{tinyproxy.url}?max=5,{dead_url}"},
            routes={"*": "scrape"},
            admin_port=free_port(),
            access_log=True,
        )
        for _ in range(6):  # through the live one: every other one fails over from the dead one
            assert _plain_get(proxy, f"http://127.0.0.1:{upstream.port}/x").status_code == 200
        live, gone = f"scrape/127.0.0.1:{tinyproxy.port}", f"scrape/127.0.0.1:{dead.getsockname()[1]}"
        parents = {p["parent"]: p for p in requests.get(f"{proxy.admin_url}/parents", timeout=5).json()["parents"]}
        assert parents[live]["state"] == "up" and parents[live]["max"] == 5
        assert parents[gone]["state"] == "ejected" and parents[gone]["failures_total"] == {"connect": 3}
        metrics = requests.get(f"{proxy.admin_url}/metrics", timeout=5).text
        assert f'dprl_parent_up{{parent="{live}"}} 1.0' in metrics
        assert f'dprl_parent_up{{parent="{gone}"}} 0.0' in metrics
        assert f'dprl_parent_failures_total{{parent="{gone}",reason="connect"}} 3.0' in metrics
        assert f'dprl_parent_connections{{parent="{live}"}} 0.0' in metrics
        hosts = requests.get(f"{proxy.admin_url}/hosts", timeout=5).text
        status = run_dprl("status", "--admin", proxy.admin_url)
        assert status.returncode == 0, status.stderr
        assert any(line.split()[:2] == [gone, "ejected"] for line in status.stdout.splitlines()), status.stdout
        closes = [r.getMessage() for r in caplog.records if "upstream close" in r.getMessage()]
        assert closes and all(f"parent={live}" in line for line in closes)
        shown = [metrics, hosts, status.stdout, status.stderr, json.dumps(parents), caplog.text, repr(proxy.config)]
        assert not [text for text in shown if "s3cret" in text]
        assert "parent:" not in hosts  # a parent's own count is on /parents, not among the destinations
    finally:
        dead.close()


def test_an_https_parent_carries_a_tunnel_and_plain_http_over_verified_tls(
    tinyproxy: TinyProxy,
    make_proxy: Callable[..., ProxyRateLimiter],
    tls_upstream: CountingUpstream,
    ca: trustme.CA,
    tmp_path: Path,
) -> None:
    """The parent speaks TLS (its certificate from a test CA given by --parent-ca-file): a
    CONNECT tunnel carries real TLS to the destination inside it, plain HTTP goes in
    absolute-form; without the CA the parent is not trusted and counts as failed."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    front = TlsFront(tinyproxy.port, context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    try:
        url = front.url(userinfo=CREDENTIALS)
        proxy = make_proxy(10, parent_pools={"tls": url}, routes={"*": "tls"}, parent_ca_file=str(ca_file))
        with requests.Session() as session:
            session.proxies = {"https": proxy.proxy_url}
            # TLS end to end inside the tunnel: the destination's certificate is from the same CA
            answer = session.get(f"https://127.0.0.1:{tls_upstream.port}/echo", timeout=10, verify=str(ca_file))
        assert answer.status_code == 200 and answer.text.startswith("GET /echo")
        plain = make_proxy(10, parent_pools={"tls": url}, routes={"*": "tls"}, parent_ca_file=str(ca_file))
        origin = CountingUpstream().start()
        try:
            assert _plain_get(plain, f"http://127.0.0.1:{origin.port}/x").status_code == 200
        finally:
            origin.stop()
        untrusted = make_proxy(10, parent_pools={"tls": url}, routes={"*": "tls"})
        sock, head = connect_through(untrusted.port, f"127.0.0.1:{tls_upstream.port}")
        sock.close()
        assert head.startswith(b"HTTP/1.1 502") and b"TLS handshake failed" in head
        (state,) = untrusted.parent_states()
        assert set(state["failures_total"]) == {"tls"}
    finally:
        front.close()


def test_workers_share_a_parents_cap_and_sighup_reroutes(
    tinyproxy: TinyProxy, relays: Callable[..., CountingRelay], tmp_path: Path
) -> None:
    """`--workers 2` in local mode, pools and routes from an INI file: a parent's cap of 2
    holds for the machine (its count is a line of the shared table); after the file routes
    everything direct and SIGHUP, new tunnels no longer reach the parent."""
    holding = HoldingServer()
    relay = relays(tinyproxy.port)
    ini = tmp_path / "dprl.ini"
    pool = relay.url("?max=2", CREDENTIALS)
    ini.write_text(f"[parent-pools]\np = {pool}\n[routes]\n* = p\n")
    proc = ProxyProcess("--workers", "2", "--config", str(ini), "--shutdown-timeout", "2")
    try:
        proc.wait_line("dprl supervisor listening")
        target = f"127.0.0.1:{holding.port}"
        opened = [connect_through(proc.port, target) for _ in range(4)]
        assert sorted(int(head.split(b" ")[1]) for _, head in opened) == [200, 200, 500, 500]
        assert relay.max_active <= 2
        for sock, _ in opened:
            sock.close()
        wait_for(lambda: relay.active == 0, 5, "the parent's connections closed")
        through = relay.accepted
        ini.write_text(f"[parent-pools]\np = {pool}\n[routes]\n* = direct\n")
        proc.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: len(proc.matching("SIGHUP: configuration reloaded")) >= 2, 10, "both workers reloaded")
        direct = [connect_through(proc.port, target) for _ in range(4)]
        assert all(head.startswith(b"HTTP/1.1 200") for _, head in direct)
        assert relay.accepted == through  # dialled directly now
        for sock, _ in direct:
            sock.close()
    finally:
        assert proc.stop() == 0
        holding.close()
    assert not proc.matching("Traceback")
