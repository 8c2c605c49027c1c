"""Plain HTTP through the proxy: rewriting, bodies in every framing, keep-alive."""

from __future__ import annotations

import http.client
import socket

import requests

from ..support.network import assert_no_slots, raw_request, wait_for


def _session(proxy) -> requests.Session:
    session = requests.Session()
    session.proxies = {"http": proxy.proxy_url}
    return session


def test_request_is_rewritten_to_origin_form_without_hop_by_hop_fields(proxy, upstream):
    target = f"127.0.0.1:{upstream.port}"
    request = (
        f"GET http://{target}/echo?q=1 HTTP/1.1\r\n"
        "Host: wrong.example\r\n"
        "Connection: close, X-Hop\r\n"
        "X-Hop: secret\r\n"
        "Keep-Alive: timeout=5\r\n"
        "Proxy-Connection: keep-alive\r\n"
        "Proxy-Authorization: Basic Zm9vOmJhcg==\r\n"
        "TE: trailers\r\n"
        "X-End-To-End: kept\r\n\r\n"
    ).encode()
    reply = raw_request(proxy.port, request)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert b"\r\nVia: 1.0 dprl" in head + b"\r\n" or b"\r\nVia: 1.1 dprl" in head
    text = body.decode().lower()
    assert text.startswith("get /echo?q=1\n"), text
    assert f"host: {target}\n" in text
    assert "x-end-to-end: kept" in text
    assert "via: 1.1 dprl" in text
    for hop in ("x-hop", "keep-alive", "proxy-connection", "proxy-authorization", "te:"):
        assert hop not in text, f"{hop} was forwarded:\n{text}"


def test_post_bodies_with_content_length_and_chunked(proxy, upstream):
    with _session(proxy) as session:
        url = f"http://127.0.0.1:{upstream.port}/echo"
        payload = b"z" * 300_000
        response = session.post(url, data=payload)
        assert response.status_code == 200 and response.content.endswith(payload)
        chunked = session.post(url, data=iter([b"abc", b"defg", b"h" * 70000]))
        assert chunked.status_code == 200
        assert chunked.content.endswith(b"abcdefg" + b"h" * 70000)
        assert b"transfer-encoding: chunked" in chunked.content.lower()


def test_chunked_response_is_relayed_with_trailers(proxy, upstream):
    target = f"127.0.0.1:{upstream.port}"
    reply = raw_request(
        proxy.port,
        f"GET http://{target}/chunked?count=4 HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n".encode(),
    )
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert body.endswith(b"0\r\nX-Trailer: done\r\n\r\n"), body
    assert body.count(b"chunk-") == 4


def test_chunked_response_is_dechunked_for_http10_clients(proxy, upstream):
    target = f"127.0.0.1:{upstream.port}"
    reply = raw_request(proxy.port, f"GET http://{target}/chunked?count=2 HTTP/1.0\r\n\r\n".encode())
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding" not in head and b"Connection: close" in head, head
    assert body == b"chunk-0;chunk-1;"


def test_until_close_response_and_no_body_statuses(proxy, upstream):
    with _session(proxy) as session:
        base = f"http://127.0.0.1:{upstream.port}"
        assert session.get(f"{base}/close").content == b"until-close body"
        assert session.get(f"{base}/no-content").status_code == 204
        head = session.head(f"{base}/bytes?n=1000")
        assert head.headers["Content-Length"] == "1000" and head.content == b""
        assert session.get(f"{base}/after").text == "ok:/after"


def test_keep_alive_reuses_one_upstream_connection_per_client_connection(proxy, upstream):
    with _session(proxy) as session:
        for i in range(5):
            assert session.get(f"http://127.0.0.1:{upstream.port}/n{i}").text == f"ok:/n{i}"
        assert upstream.connections == 1, f"upstream saw {upstream.connections} connections"
        assert proxy.active_connections_for_host(f"127.0.0.1:{upstream.port}") == 1


def test_request_to_another_host_releases_the_previous_slot(proxy, upstream):
    with _session(proxy) as session:
        assert session.get(f"http://127.0.0.1:{upstream.port}/a").status_code == 200
        assert session.get(f"http://localhost:{upstream.port}/b").status_code == 200
        assert proxy.limiter.process_counts() == {f"localhost:{upstream.port}": 1}


def test_large_download_is_streamed(proxy, upstream):
    size = 64 * 1024 * 1024
    with _session(proxy) as session:
        response = session.get(f"http://127.0.0.1:{upstream.port}/bytes?n={size}", stream=True)
        received = sum(len(chunk) for chunk in response.iter_content(1 << 20))
    assert received == size


def test_http_client_through_proxy(proxy, upstream):
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    conn.request("PUT", f"http://127.0.0.1:{upstream.port}/echo", body=b"put-body")
    response = conn.getresponse()
    assert response.status == 200 and response.read().endswith(b"put-body")
    conn.close()


def test_stale_keep_alive_upstream_is_replaced_transparently(proxy, upstream):
    with _session(proxy) as session:
        base = f"http://127.0.0.1:{upstream.port}"
        assert session.get(f"{base}/idle-close").text == "bye"
        wait_for(lambda: upstream.active == 0, what="upstream to close its idle connection")
        assert session.get(f"{base}/x").text == "ok:/x"
        assert upstream.connections == 2


def test_client_abort_mid_body_releases_the_slot(proxy, upstream):
    target = f"127.0.0.1:{upstream.port}"
    sock = socket.create_connection(("127.0.0.1", proxy.port))
    sock.sendall(f"POST http://{target}/echo HTTP/1.1\r\nHost: {target}\r\nContent-Length: 100000\r\n\r\nabc".encode())
    upstream.wait_active(1)
    sock.close()
    assert_no_slots(proxy)


def test_upstream_reset_mid_response_releases_the_slot(proxy, upstream):
    target = f"127.0.0.1:{upstream.port}"
    reply = raw_request(proxy.port, f"GET http://{target}/reset HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    assert reply.startswith(b"HTTP/1.1 200")  # head was sent; then a clean close
    assert len(reply.partition(b"\r\n\r\n")[2]) < 100000
    assert_no_slots(proxy)


def test_upstream_closing_before_the_head_is_502(proxy, upstream):
    target = f"127.0.0.1:{upstream.port}"
    reply = raw_request(proxy.port, f"GET http://{target}/drop HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    assert reply.startswith(b"HTTP/1.1 502"), reply
