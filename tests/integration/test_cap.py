"""The cap, measured where it matters: at an upstream that counts its connections."""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor

import requests

from ..support.network import assert_no_slots, proxy_connect, read_head, wait_for


def _get(proxy_url: str, url: str) -> requests.Response:
    # Connection: close, so that the proxy connection (and its slot) ends with the response
    # instead of waiting in requests' pool until garbage collection.
    return requests.get(url, proxies={"http": proxy_url}, headers={"Connection": "close"}, timeout=30)


def test_cap_holds_at_upstream_for_plain_http(make_proxy, upstream):
    proxy = make_proxy(max_connections_per_host=3)
    url = f"http://127.0.0.1:{upstream.port}/hold"
    with ThreadPoolExecutor(20) as pool:
        futures = [pool.submit(_get, proxy.proxy_url, url) for _ in range(20)]
        upstream.wait_active(3)
        wait_for(lambda: sum(f.done() for f in futures) == 17, what="17 refusals")
        assert proxy.active_connections_for_host(f"127.0.0.1:{upstream.port}") == 3
        upstream.release()
        results = [f.result() for f in futures]
    statuses = sorted(r.status_code for r in results)
    assert statuses == [200] * 3 + [500] * 17, statuses
    assert upstream.max_active == 3, f"upstream saw {upstream.max_active} concurrent connections, cap is 3"
    refusal = next(r for r in results if r.status_code == 500)
    assert f"127.0.0.1:{upstream.port}" in refusal.text and "3" in refusal.text
    assert_no_slots(proxy)


def test_cap_holds_at_upstream_for_connect_tunnels(make_proxy, upstream):
    proxy = make_proxy(max_connections_per_host=3)
    target = f"127.0.0.1:{upstream.port}"
    opened = [proxy_connect(proxy, target) for _ in range(20)]
    statuses = [head.split(b" ")[1] for _, head in opened]
    assert statuses.count(b"200") == 3 and statuses.count(b"500") == 17, statuses
    tunnels = [sock for sock, head in opened if b" 200 " in head]
    for sock in tunnels:
        sock.sendall(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
    upstream.wait_active(3)
    assert proxy.active_connections_for_host(target) == 3
    upstream.release()
    for sock in tunnels:
        assert read_head(sock).startswith(b"HTTP/1.1 200")
    for sock, _ in opened:
        sock.close()
    assert upstream.max_active == 3
    assert_no_slots(proxy)


def test_plain_http_and_connect_share_one_hosts_slots(make_proxy, upstream):
    proxy = make_proxy(max_connections_per_host=1)
    tunnel, head = proxy_connect(proxy, f"127.0.0.1:{upstream.port}")
    assert b" 200 " in head
    response = _get(proxy.proxy_url, f"http://127.0.0.1:{upstream.port}/x")
    assert response.status_code == 500
    tunnel.close()
    assert_no_slots(proxy)
    assert _get(proxy.proxy_url, f"http://127.0.0.1:{upstream.port}/x").status_code == 200


def test_host_limit_overrides_default_and_hosts_are_independent(make_proxy, upstream):
    proxy = make_proxy(max_connections_per_host=5)
    proxy.set_host_limit(f"127.0.0.1:{upstream.port}", 1)
    first, head = proxy_connect(proxy, f"127.0.0.1:{upstream.port}")
    assert b" 200 " in head
    second, head = proxy_connect(proxy, f"127.0.0.1:{upstream.port}")
    assert b" 500 " in head, head
    other, head = proxy_connect(proxy, f"localhost:{upstream.port}")  # a different host key
    assert b" 200 " in head, head
    for sock in (first, second, other):
        sock.close()


def test_limit_changes_take_effect_for_the_next_connection(make_proxy, upstream):
    proxy = make_proxy(max_connections_per_host=1)
    target = f"127.0.0.1:{upstream.port}"
    first, head = proxy_connect(proxy, target)
    assert b" 200 " in head
    proxy.set_host_limit(target, 2)
    second, head = proxy_connect(proxy, target)
    assert b" 200 " in head
    proxy.remove_host_limit(target)  # back to the default of 1, and two are open
    third, head = proxy_connect(proxy, target)
    assert b" 500 " in head
    proxy.set_default_max_connections_per_host(0)  # unlimited
    fourth, head = proxy_connect(proxy, target)
    assert b" 200 " in head
    proxy.set_host_limits({target: 1})
    fifth, head = proxy_connect(proxy, target)
    assert b" 500 " in head
    for sock in (first, second, third, fourth, fifth):
        sock.close()


def test_host_normalisation_meets_configured_limits(make_proxy, upstream):
    proxy = make_proxy()
    proxy.set_host_limit("LOCALHOST.", 1)  # port 80/443 dropped, case and trailing dot too
    assert proxy.limits.limit_for("localhost") == 1
    proxy.set_host_limit(f"LocalHost.:{upstream.port}", 1)
    first, head = proxy_connect(proxy, f"localhost:{upstream.port}")
    assert b" 200 " in head
    second, head = proxy_connect(proxy, f"LOCALHOST.:{upstream.port}")
    assert b" 500 " in head, head
    assert proxy.active_connections_for_host(f"localhost.:{upstream.port}") == 1
    first.close()
    second.close()


def test_refused_plain_request_keeps_the_client_connection_usable(make_proxy, upstream):
    proxy = make_proxy(max_connections_per_host=1)
    target = f"127.0.0.1:{upstream.port}"
    holder, _head = proxy_connect(proxy, target)
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        request = f"GET http://{target}/a HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()
        sock.sendall(request)
        refused = read_head(sock)
        assert refused.startswith(b"HTTP/1.1 500"), refused
        length = int(refused.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        body = sock.recv(length, socket.MSG_WAITALL)
        assert b"limit reached" in body
        holder.close()
        assert_no_slots(proxy)
        sock.sendall(request)
        assert read_head(sock).startswith(b"HTTP/1.1 200")
