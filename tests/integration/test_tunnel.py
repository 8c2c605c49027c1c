"""CONNECT tunnels: opaque bytes both ways, half-close kept, real TLS end to end."""

from __future__ import annotations

import http.client
import shutil
import socket
import ssl
import subprocess

import pytest
import requests

from ..support.network import assert_no_slots, proxy_connect, read_head, wait_for


def test_tunnel_keeps_half_close(proxy, echo_server):
    sock, head = proxy_connect(proxy, f"127.0.0.1:{echo_server.port}")
    assert head == b"HTTP/1.1 200 Connection Established\r\n\r\n"
    sock.sendall(b"x" * 200_000)
    sock.shutdown(socket.SHUT_WR)  # the echo server answers only after it sees our EOF
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    assert data == b"echo:" + b"x" * 200_000
    sock.close()
    assert_no_slots(proxy)


def test_bytes_sent_right_after_connect_are_delivered(proxy, echo_server):
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        target = f"127.0.0.1:{echo_server.port}"
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\nearly".encode())
        assert read_head(sock).startswith(b"HTTP/1.1 200")
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(100) == b"echo:early"


def test_https_through_connect_with_requests(proxy, tls_upstream, ca):
    with ca.cert_pem.tempfile() as ca_path:
        response = requests.get(
            f"https://localhost:{tls_upstream.port}/secure",
            proxies={"https": proxy.proxy_url},
            verify=ca_path,
            headers={"Connection": "close"},
            timeout=10,
        )
    assert response.status_code == 200 and response.text == "ok:/secure"
    assert tls_upstream.requests[-1][1] == "/secure"  # the upstream saw origin-form over TLS


def test_https_through_connect_with_http_client(proxy, tls_upstream, ca):
    context = ssl.create_default_context()
    ca.configure_trust(context)
    conn = http.client.HTTPSConnection("127.0.0.1", proxy.port, context=context, timeout=10)
    conn.set_tunnel("localhost", tls_upstream.port)
    for path in ("/one", "/two"):
        conn.request("GET", path)
        response = conn.getresponse()
        assert response.read() == f"ok:{path}".encode()
    assert proxy.active_connections_for_host(f"localhost:{tls_upstream.port}") == 1
    conn.close()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_https_through_connect_with_curl(proxy, tls_upstream, ca):
    with ca.cert_pem.tempfile() as ca_path:
        result = subprocess.run(
            ["curl", "-sS", "--cacert", ca_path, "-x", proxy.proxy_url, f"https://localhost:{tls_upstream.port}/curl"],
            capture_output=True,
            timeout=20,
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"ok:/curl"


def test_refused_dial_gets_502_and_never_200(proxy):
    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sock, head = proxy_connect(proxy, f"127.0.0.1:{port}")
    assert head.startswith(b"HTTP/1.1 502"), head
    sock.close()


def test_upstream_reset_ends_tunnel_and_releases_slot(proxy, upstream):
    sock, _head = proxy_connect(proxy, f"127.0.0.1:{upstream.port}")
    sock.sendall(b"GET /reset HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    assert data.startswith(b"HTTP/1.1 200")
    sock.close()
    assert_no_slots(proxy)


def test_client_abort_releases_tunnel_slot(proxy, upstream):
    sock, _head = proxy_connect(proxy, f"127.0.0.1:{upstream.port}")
    upstream.wait_active(1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()  # RST
    assert_no_slots(proxy)
    wait_for(lambda: upstream.active == 0, what="upstream connection closed by the proxy")


def test_an_internal_error_in_a_pipe_callback_ends_the_tunnel_and_frees_its_slot(
    make_proxy, echo_server, monkeypatch, caplog
):
    """Any exception in the hub's callbacks (a bug), not only OSError, ends the tunnel."""
    from dprl.net import pipe

    def broken_write(self, data):
        raise AssertionError("injected fault in a pipe callback")

    monkeypatch.setattr(pipe._Direction, "_write", broken_write)
    proxy = make_proxy(max_connections_per_host=1)
    sock, head = proxy_connect(proxy, f"127.0.0.1:{echo_server.port}")
    assert head.startswith(b"HTTP/1.1 200"), head
    sock.sendall(b"bytes that meet the fault")
    sock.settimeout(5)
    assert sock.recv(100) == b"", "the tunnel should end when its pipe fails"
    sock.close()
    assert_no_slots(proxy)
    errors = [r for r in caplog.records if r.levelname == "ERROR" and "internal error" in r.getMessage()]
    assert len(errors) == 1, [r.getMessage() for r in caplog.records]
    assert "injected fault" in str(errors[0].exc_info[1])
    monkeypatch.undo()
    again, head = proxy_connect(proxy, f"127.0.0.1:{echo_server.port}")  # the cap of 1 is free again
    assert head.startswith(b"HTTP/1.1 200"), head
    again.close()
