"""Access control: client allow-list, proxy authentication, CONNECT ports, denied destinations."""

from __future__ import annotations

import base64
import select
import socket

import pytest
import requests

from ..support.network import assert_no_slots, proxy_connect, raw_request, read_head, wait_for
from ..support.proxy_process import ProxyProcess


def _status(reply: bytes) -> int:
    return int(reply[9:12])


def test_clients_outside_the_allow_list_get_403(make_proxy, upstream):
    proxy = make_proxy(allow_clients="10.0.0.0/8,192.168.0.0/16")
    reply = raw_request(proxy.port, f"GET http://127.0.0.1:{upstream.port}/ HTTP/1.1\r\nHost: h\r\n\r\n".encode())
    assert _status(reply) == 403 and b"not allowed" in reply
    assert upstream.connections == 0


def test_default_allow_list_admits_loopback_and_private_ranges_only():
    from dprl.config import Config
    from dprl.proxy.access import AccessPolicy

    config = Config()
    access = AccessPolicy(config.client_networks, config.credentials, config.connect_port_set, config.deny_networks)
    for ip in ("127.0.0.1", "::1", "10.1.2.3", "172.16.0.9", "192.168.1.1", "fd00::1", "::ffff:127.0.0.1"):
        assert access.client_allowed(ip), ip
    for ip in ("8.8.8.8", "2001:db8::1", "172.32.0.1", "::ffff:8.8.8.8"):
        assert not access.client_allowed(ip), ip


def test_denied_client_is_logged_in_aggregate(upstream):
    proc = ProxyProcess("--allow-clients", "10.0.0.0/8", "--refusal-log-interval", "0.3")
    try:
        for _ in range(5):
            assert _status(raw_request(proc.port, b"GET http://127.0.0.1/ HTTP/1.1\r\nHost: h\r\n\r\n")) == 403
        line = proc.wait_line(r"refused (\d+) connections from 127\.0\.0\.1: client not in --allow-clients")
        assert line[1] == "5"
    finally:
        proc.stop()


def test_proxy_authentication_required_and_never_forwarded(make_proxy, upstream, tmp_path):
    creds = tmp_path / "users"
    creds.write_text("# users\nbob:hunter2\n\ncarol:pa:ss\n")
    proxy = make_proxy(proxy_auth="alice:s3cret", proxy_auth_file=str(creds))
    url = f"http://127.0.0.1:{upstream.port}/echo"
    port = proxy.port
    reply = raw_request(port, f"GET {url} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".encode())
    assert _status(reply) == 407 and b'Proxy-Authenticate: Basic realm="dprl"' in reply
    for user, password, ok in [
        ("alice", "s3cret", True),
        ("bob", "hunter2", True),
        ("carol", "pa:ss", True),
        ("alice", "wrong", False),
        ("mallory", "s3cret", False),
    ]:
        response = requests.get(
            url, proxies={"http": f"http://{user}:{password}@127.0.0.1:{port}"}, headers={"Connection": "close"}
        )
        assert response.status_code == (200 if ok else 407), (user, response.status_code)
        if ok:
            assert "proxy-authorization" not in response.text.lower()
    token = base64.b64encode(b"alice:s3cret").decode()
    for bad in ("Basic !!!", "Bearer " + token, "Basic " + base64.b64encode(b"alice").decode()):
        reply = raw_request(
            port, f"GET {url} HTTP/1.1\r\nHost: h\r\nProxy-Authorization: {bad}\r\nConnection: close\r\n\r\n".encode()
        )
        assert _status(reply) == 407, bad


def test_proxy_auth_challenge_keeps_the_connection_for_the_retry(make_proxy, upstream):
    proxy = make_proxy(proxy_auth="alice:s3cret")
    target = f"127.0.0.1:{upstream.port}"
    token = base64.b64encode(b"alice:s3cret").decode()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\n\r\n".encode())
        head = read_head(sock)
        assert head.startswith(b"HTTP/1.1 407") and b"Connection: close" not in head
        sock.recv(int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]), socket.MSG_WAITALL)
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nProxy-Authorization: Basic {token}\r\n\r\n".encode())
        assert read_head(sock).startswith(b"HTTP/1.1 200")


def test_credentials_never_reach_the_log(upstream):
    proc = ProxyProcess("--proxy-auth", "alice:s3cret", "--log-level", "debug")
    try:
        for password in ("s3cret", "wrong-pw"):
            requests.get(
                f"http://127.0.0.1:{upstream.port}/x",
                proxies={"http": f"http://alice:{password}@127.0.0.1:{proc.port}"},
                headers={"Connection": "close"},
            )
    finally:
        proc.stop()
    text = "\n".join(proc.lines)
    for secret in ("s3cret", "wrong-pw", base64.b64encode(b"alice:s3cret").decode()):
        assert secret not in text


def test_connect_ports_restrict_tunnel_destinations(make_proxy, upstream):
    proxy = make_proxy(connect_ports="443,8443")
    sock, head = proxy_connect(proxy, f"127.0.0.1:{upstream.port}")
    assert head.startswith(b"HTTP/1.1 403"), head
    sock.close()
    proxy2 = make_proxy(connect_ports=f"443,{upstream.port - 1}-{upstream.port + 1}")
    sock, head = proxy_connect(proxy2, f"127.0.0.1:{upstream.port}")
    assert head.startswith(b"HTTP/1.1 200"), head
    sock.close()


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"CONNECT 169.254.169.254:80 HTTP/1.1\r\n\r\n",
        b"GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        b"CONNECT [::ffff:169.254.169.254]:80 HTTP/1.1\r\n\r\n",
        b"CONNECT metadata.internal:80 HTTP/1.1\r\n\r\n",  # resolves into the denied range
    ],
)
def test_metadata_range_is_denied_by_default_even_through_a_name(make_proxy, request_bytes):
    def resolve(name: str, port: int):
        assert name == "metadata.internal"
        return [(socket.AF_INET, ("169.254.169.254", port))]

    proxy = make_proxy(max_connections_per_host=1, resolver=resolve)
    reply = raw_request(proxy.port, request_bytes)
    assert _status(reply) == 403 and b"deny-destinations" in reply, reply
    assert_no_slots(proxy)


def test_deny_destinations_is_configurable(make_proxy, upstream):
    proxy = make_proxy(deny_destinations="127.0.0.0/8")
    reply = raw_request(proxy.port, f"GET http://127.0.0.1:{upstream.port}/ HTTP/1.0\r\n\r\n".encode())
    assert _status(reply) == 403
    assert upstream.connections == 0


def test_tunnel_idle_timeout_closes_only_idle_tunnels(make_proxy, echo_server):
    proxy = make_proxy(tunnel_idle_timeout=0.4)
    sock, head = proxy_connect(proxy, f"127.0.0.1:{echo_server.port}")
    assert b" 200 " in head
    # keep one direction busy for longer than the timeout: the tunnel stays
    for _ in range(8):
        sock.sendall(b"ping")
        assert not select.select([sock], [], [], 0.1)[0], "tunnel closed while carrying data"
    sock.shutdown(socket.SHUT_WR)
    assert sock.recv(100).startswith(b"echo:ping")
    sock.close()
    idle, head = proxy_connect(proxy, f"127.0.0.1:{echo_server.port}")
    assert b" 200 " in head
    idle.settimeout(5)
    assert idle.recv(10) == b"", "idle tunnel was not closed"
    idle.close()
    assert_no_slots(proxy)


def test_max_clients_bounds_concurrent_client_connections(make_proxy, upstream):
    proxy = make_proxy(max_clients=2)
    first = socket.create_connection(("127.0.0.1", proxy.port))
    second = socket.create_connection(("127.0.0.1", proxy.port))
    for sock in (first, second):
        sock.sendall(b"GET ")  # mid-request: deferred accept hands these to the proxy
    wait_for(lambda: len(proxy._server.sessions) == 2, what="two sessions")
    third = socket.create_connection(("127.0.0.1", proxy.port))
    third.sendall(f"GET http://127.0.0.1:{upstream.port}/a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".encode())
    # not accepted: it waits in the kernel's accept queue of the listening socket
    wait_for(lambda: _accept_queue(proxy.port) == 1, what="the third client queued, not accepted")
    assert len(proxy._server.sessions) == 2 and upstream.connections == 0
    first.close()
    third.settimeout(5)
    assert read_head(third).startswith(b"HTTP/1.1 200")
    for sock in (second, third):
        sock.close()


def _accept_queue(port: int) -> int:
    """Connections waiting in the accept queue of the socket listening on ``port`` (Linux)."""
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].split(":")[1], 16) == port:  # 0A: LISTEN
                return int(fields[4].split(":")[1], 16)  # rx_queue of a listener: its accept queue
    raise AssertionError(f"no listener on port {port}")
