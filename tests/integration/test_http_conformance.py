"""HTTP conformance of the relay (RFC 9110 / 9112), checked where it matters: at the origin.

One test per behaviour of issue 8. Each looks at what the upstream *received* (raw bytes,
parsed by h11 or by hand) or at what a real client saw, never only at dprl's intent.
"""

from __future__ import annotations

import gzip
import shutil
import socket
import subprocess
import threading

import pytest
import requests

from ..support.network import read_head, wait_for
from ..support.strict_upstream import StrictUpstream, read_responses
from ..support.upstream import read_request_head


@pytest.fixture
def origin():
    server = StrictUpstream()
    yield server
    server.close()


def _exchange(proxy, data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(data)
        return read_responses(sock, timeout=10)


def _dechunk(data: bytes) -> tuple[bytes, bytes]:
    """(body, trailer section) of a chunked body given as raw bytes."""
    body = b""
    while True:
        line, _, data = data.partition(b"\r\n")
        size = int(line, 16)
        if size == 0:
            return body, data
        body, data = body + data[:size], data[size + 2 :]


# framing per hop ---------------------------------------------------------------------
def test_response_whose_connection_names_content_length_keeps_its_length(proxy, make_origin):
    """A response with ``Connection: Content-Length`` reached clients with no length at all."""

    def serve(conn, index):
        read_request_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 5\r\n\r\nhello")
        read_request_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nsecond")

    origin = make_origin(serve)
    target = origin.authority
    one = f"GET http://{target}/1 HTTP/1.1\r\nHost: {target}\r\n\r\n"
    two = f"GET http://{target}/2 HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"
    responses = _exchange(proxy, (one + two).encode())
    assert [(status, body) for status, _, body in responses] == [(200, b"hello"), (200, b"second")]
    assert responses[0][1]["content-length"] == "5"


def test_content_length_is_forwarded_canonically(proxy, origin):
    target = origin.authority
    responses = _exchange(
        proxy,
        f"POST http://{target}/p HTTP/1.1\r\nHost: {target}\r\nContent-Length: 010\r\nConnection: close\r\n\r\n"
        "0123456789".encode(),
    )
    assert [status for status, _, _ in responses] == [200]
    head = bytes(origin.raw[0]).partition(b"\r\n\r\n")[0].lower()
    assert b"\r\ncontent-length: 10\r\n" in head + b"\r\n" and b"010" not in head, head
    assert origin.requests[0].body == b"0123456789"


def test_response_with_underscore_framing_field_is_a_502(proxy, make_origin):
    def serve(conn, index):
        read_request_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent_Length: 5\r\nContent-Length: 0\r\n\r\n")

    origin = make_origin(serve)
    target = origin.authority
    request = f"GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"
    responses = _exchange(proxy, request.encode())
    assert [status for status, _, _ in responses] == [502]


# transfer codings --------------------------------------------------------------------
@pytest.mark.parametrize(
    "fields", ["Transfer-Encoding: gzip, chunked", "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked"]
)
def test_request_codings_other_than_chunked_get_501_and_reach_nobody(proxy, origin, fields):
    target = origin.authority
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(gzip.compress(b"data")), gzip.compress(b"data"))
    responses = _exchange(
        proxy, f"POST http://{target}/p HTTP/1.1\r\nHost: {target}\r\n{fields}\r\n\r\n".encode() + body
    )
    assert [status for status, _, _ in responses] == [501]
    assert origin.requests == [] and not any(origin.raw)


def _coded_origin(make_origin, te: str, chunked_body: bool):
    payload = gzip.compress(b"compressed response " * 100)

    def serve(conn, index):
        read_request_head(conn)
        head = f"HTTP/1.1 200 OK\r\nTransfer-Encoding: {te}\r\n\r\n".encode()
        if chunked_body:
            half = len(payload) // 2
            body = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (half, payload[:half], len(payload) - half, payload[half:])
        else:
            body = payload  # until close
        conn.sendall(head + body)

    return make_origin(serve), payload


@pytest.mark.parametrize(("te", "chunked_body"), [("gzip, chunked", True), ("gzip", False)])
def test_response_transfer_codings_are_kept(proxy, make_origin, te, chunked_body):
    origin, payload = _coded_origin(make_origin, te, chunked_body)
    target = origin.authority
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(f"GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n".encode())
        head = read_head(sock)
        rest = b""
        while chunk := sock.recv(65536):
            rest += chunk
    assert f"\r\nTransfer-Encoding: {te}\r\n".encode() in head, head
    body = _dechunk(rest)[0] if chunked_body else rest
    assert body == payload, "the coded bytes arrive unchanged, under the coding that describes them"
    assert gzip.decompress(body) == b"compressed response " * 100
    if not chunked_body:
        assert b"Connection: close" in head


def test_response_coding_an_http10_client_cannot_receive_is_a_502(proxy, make_origin):
    origin, _ = _coded_origin(make_origin, "gzip, chunked", True)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(f"GET http://{origin.authority}/ HTTP/1.0\r\n\r\n".encode())
        assert read_head(sock).startswith(b"HTTP/1.1 502")


# chunks and trailers -----------------------------------------------------------------
def test_chunk_lines_and_trailers_reach_the_upstream_canonically(proxy, origin):
    target = origin.authority
    body = (
        b"5 ; a = b\r\nhello\r\n"
        b"0005\t;a=b\r\nworld\r\n"
        b'A;x="q y"\r\n0123456789\r\n'
        b"0\r\n"
        b"X-Sum:  1 \r\nHost: evil.example\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n"
        b"Authorization: Basic eA==\r\nIf-Match: *\r\n\r\n"
    )
    responses = _exchange(
        proxy,
        f"POST http://{target}/p HTTP/1.1\r\nHost: {target}\r\nTransfer-Encoding: chunked\r\n"
        "Connection: close\r\n\r\n".encode()
        + body,
    )
    assert [status for status, _, _ in responses] == [200]
    raw_body = bytes(origin.raw[0]).partition(b"\r\n\r\n")[2]
    assert raw_body == b"5\r\nhello\r\n5\r\nworld\r\na\r\n0123456789\r\n0\r\nX-Sum: 1\r\n\r\n", raw_body
    assert origin.requests[0].body == b"helloworld0123456789"
    assert origin.requests[0].trailers == [("x-sum", "1")]


def test_response_chunks_and_trailers_reach_the_client_canonically(proxy, make_origin):
    def serve(conn, index):
        read_request_head(conn)
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            b'5 ; ext = "v"\r\nhello\r\n0\r\nX-T:  v \r\nContent-Length: 9\r\nSet-Cookie: a=b\r\n\r\n'
        )

    origin = make_origin(serve)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        target = origin.authority
        sock.sendall(f"GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n".encode())
        read_head(sock)
        rest = b""
        while chunk := sock.recv(65536):
            rest += chunk
    assert rest == b"5\r\nhello\r\n0\r\nX-T: v\r\n\r\n", rest


# retries -----------------------------------------------------------------------------
def _dropping_origin(make_origin):
    """Answers the first request of the first connection, then drops that connection after
    reading the next request; later connections answer everything."""
    seen: list[str] = []

    def serve(conn, index):
        while True:
            head = read_request_head(conn)
            if not head:
                return
            request_line = head.split(b"\r\n", 1)[0].decode()
            seen.append(request_line)
            if index == 0 and len(seen) > 1:
                return  # closes without answering: the request was received
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    return make_origin(serve), seen


@pytest.mark.parametrize(
    ("method", "retried"),
    [("GET", True), ("HEAD", True), ("OPTIONS", True), ("DELETE", False), ("POST", False), ("PATCH", False)],
)
def test_only_safe_requests_are_sent_again_after_a_dropped_connection(proxy, make_origin, method, retried):
    """RFC 9112 9.3.1: a proxy must not retry non-idempotent requests automatically."""
    origin, seen = _dropping_origin(make_origin)
    target = origin.authority
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(f"GET http://{target}/first HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        assert read_head(sock).startswith(b"HTTP/1.1 200") and sock.recv(2) == b"ok"
        fields = "Content-Length: 0\r\n" if method in ("POST", "PATCH") else ""
        sock.sendall(f"{method} http://{target}/x HTTP/1.1\r\nHost: {target}\r\n{fields}\r\n".encode())
        head = read_head(sock)
    expected = b"HTTP/1.1 200" if retried else b"HTTP/1.1 502"
    assert head.startswith(expected), head
    wait_for(lambda: len(seen) >= (3 if retried else 2), what="the origin to see the request")
    assert seen.count(f"{method} /x HTTP/1.1") == (2 if retried else 1), seen


# versions, Host, ports ---------------------------------------------------------------
@pytest.mark.parametrize("version", ["HTTP/1.2", "HTTP/1.9"])
def test_higher_http1_minor_versions_are_processed_as_11(proxy, origin, version):
    target = origin.authority
    one = f"GET http://{target}/a {version}\r\nHost: {target}\r\n\r\n"  # 1.1 rules: kept alive
    two = f"GET http://{target}/b {version}\r\nHost: {target}\r\nConnection: close\r\n\r\n"
    responses = _exchange(proxy, (one + two).encode())
    assert [status for status, _, _ in responses] == [200, 200]
    assert origin.targets() == ["/a", "/b"]
    assert bytes(origin.raw[0]).startswith(b"GET /a HTTP/1.1\r\n")


def test_http2_and_other_major_versions_stay_505(proxy, origin):
    reply = _exchange(proxy, f"GET http://{origin.authority}/ HTTP/2.0\r\nHost: x\r\n\r\n".encode())
    assert [status for status, _, _ in reply] == [505]


@pytest.mark.parametrize(
    ("fields", "version"),
    [
        ("", "HTTP/1.1"),
        ("Host: a, b\r\n", "HTTP/1.1"),
        ("Host: a\r\nHost: a\r\n", "HTTP/1.1"),
        ("Host: a b\r\n", "HTTP/1.1"),
        ("Host: ::1:8080\r\n", "HTTP/1.1"),
        ("Host: [::1]:80\r\n", "HTTP/1.1"),
        ("Host: \r\n", "HTTP/1.1"),
        ("Host: evil.example\r\n", "HTTP/1.1"),
        ("", "HTTP/1.0"),
    ],
)
def test_absolute_form_ignores_the_received_host_and_sends_the_targets(proxy, origin, fields, version):
    """RFC 9112 3.2.2: a proxy MUST ignore Host for an absolute-form target and generate it."""
    request = f"GET http://{origin.authority}/p {version}\r\n{fields}Connection: close\r\n\r\n"
    assert [s for s, _, _ in _exchange(proxy, request.encode())] == [200]
    assert origin.requests[0].header("host") == [origin.authority]


@pytest.mark.parametrize(
    ("request_line", "fields"),
    [
        ("CONNECT {authority} HTTP/1.1", "Host: a\r\nHost: a\r\n"),
        ("CONNECT {authority} HTTP/1.1", "Host: a b\r\n"),
        ("CONNECT {authority} HTTP/1.1", "Host: a, b\r\n"),
        ("GET /p HTTP/1.1", "Host: a\r\nHost: a\r\n"),
        ("GET /p HTTP/1.1", ""),
    ],
)
def test_host_field_rules_still_hold_outside_absolute_form(proxy, origin, request_line, fields):
    request = f"{request_line.format(authority=origin.authority)}\r\n{fields}Connection: close\r\n\r\n"
    assert [s for s, _, _ in _exchange(proxy, request.encode())] == [400]
    assert origin.requests == []


def test_curl_reusing_a_proxy_connection_for_an_ipv6_literal(proxy, make_origin):
    """curl 7.88 sends ``Host: ::1:PORT`` (no brackets) on a reused keep-alive proxy connection."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    hosts: list[str] = []

    def serve(conn, index):
        for _ in range(2):
            hosts.append(_field(read_request_head(conn), b"host"))
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    origin = make_origin(serve, host="::1")
    url = f"http://{origin.authority}"
    command = [curl, "-sS", "--noproxy", "", "-x", f"http://127.0.0.1:{proxy.port}", f"{url}/a", f"{url}/b"]
    command += ["-o", "/dev/null", "-o", "/dev/null", "-w", "%{http_code} %{num_connects}\n"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["200", "1", "200", "0"]  # the second request reused the connection
    assert hosts == [origin.authority] * 2


def _field(head: bytes, name: bytes) -> str:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip().decode()
    return ""


def test_connect_needs_no_host_field(proxy, echo_server):
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(f"CONNECT 127.0.0.1:{echo_server.port} HTTP/1.1\r\n\r\n".encode())
        assert read_head(sock).startswith(b"HTTP/1.1 200")


def test_port_with_leading_zeros_is_the_same_port(proxy, origin):
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(f"GET http://127.0.0.1:000{origin.port}/p HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert read_head(sock).startswith(b"HTTP/1.1 200")
        assert proxy.limiter.process_counts() == {origin.authority: 1}
    assert origin.requests[0].header("host") == [origin.authority]


# answers that come before the body ---------------------------------------------------
def _refusing_origin(make_origin, close: bool = True):
    """Reads the request head only, answers 413, and closes with the body unread (a reset)
    or, with ``close=False``, keeps the connection open and reads nothing more."""
    done = threading.Event()

    def serve(conn, index):
        head = read_request_head(conn)
        origin.received.append(head)
        conn.sendall(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large")
        if not close:
            done.wait(30)

    origin = make_origin(serve)
    return origin, done


@pytest.mark.parametrize("megabytes", [5, 50])
@pytest.mark.parametrize("origin_closes", [True, False])
def test_early_413_is_relayed_not_turned_into_502(proxy, make_origin, megabytes, origin_closes):
    origin, done = _refusing_origin(make_origin, close=origin_closes)
    size = megabytes << 20
    sent = 0
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=20) as sock:
        sock.sendall(
            f"POST http://{origin.authority}/up HTTP/1.1\r\nHost: {origin.authority}\r\n"
            f"Content-Length: {size}\r\n\r\n".encode()
        )

        def upload() -> None:
            nonlocal sent
            block = b"u" * 65536
            try:
                while sent < size:
                    sent += sock.send(block[: size - sent])
            except OSError:
                pass

        uploader = threading.Thread(target=upload, daemon=True)
        uploader.start()
        head = read_head(sock)
        uploader.join(20)
    done.set()
    assert head.startswith(b"HTTP/1.1 413"), head
    assert b"Connection: close" in head


def test_early_413_reaches_a_client_that_sends_its_whole_body_first(proxy, make_origin):
    """requests (urllib3) writes the whole body before it reads: the proxy must drain it."""
    origin, _ = _refusing_origin(make_origin)
    response = requests.post(
        f"http://{origin.authority}/up", data=b"z" * (20 << 20), proxies={"http": proxy.proxy_url}, timeout=30
    )
    assert response.status_code == 413 and response.text == "too large"


def test_expect_100_continue_lets_the_origin_refuse_before_the_upload(proxy, make_origin):
    origin, _ = _refusing_origin(make_origin)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(
            f"POST http://{origin.authority}/up HTTP/1.1\r\nHost: {origin.authority}\r\n"
            f"Content-Length: {50 << 20}\r\nExpect: 100-continue\r\n\r\n".encode()
        )
        head = read_head(sock)  # no byte of the body sent
    assert head.startswith(b"HTTP/1.1 413") and b"Connection: close" in head, head
    assert b"expect: 100-continue" in origin.received[0].lower()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_upload_refused_by_the_origin_is_not_uploaded(proxy, make_origin, tmp_path):
    """curl sends Expect: 100-continue for large uploads; the origin's 413 stops it at once."""
    origin, _ = _refusing_origin(make_origin)
    upload = tmp_path / "upload.bin"
    upload.write_bytes(b"c" * (50 << 20))
    result = subprocess.run(
        [
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_upload}",
            "-x",
            proxy.proxy_url,
            "-T",
            str(upload),
            f"http://{origin.authority}/up",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    status, uploaded = result.stdout.split()
    assert status == "413", result
    assert int(uploaded) < (1 << 20), f"curl uploaded {uploaded} bytes of a refused 50 MB body"


def test_expect_100_continue_is_forwarded_and_the_origins_100_relayed(proxy, origin):
    target = origin.authority
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(
            f"POST http://{target}/echo HTTP/1.1\r\nHost: {target}\r\nContent-Length: 5\r\n"
            "Expect: 100-continue\r\nConnection: close\r\n\r\n".encode()
        )
        interim = read_head(sock)
        assert interim.startswith(b"HTTP/1.1 100 ") and b"Via: 1.1 dprl" in interim, interim
        sock.sendall(b"hello")
        assert read_head(sock).startswith(b"HTTP/1.1 200")
    assert origin.requests[0].header("expect") == ["100-continue"]
    assert origin.requests[0].body == b"hello"


def test_silent_origin_gets_the_body_after_the_continue_wait(proxy, make_origin):
    """An origin that never sends 100: the client gets dprl's 100, and the upload goes on."""

    def serve(conn, index):
        head = read_request_head(conn)
        body = b""
        while len(body) < 5:
            body += conn.recv(5 - len(body))
        origin.received.append(head + body)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    origin = make_origin(serve)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(
            f"POST http://{origin.authority}/ HTTP/1.1\r\nHost: {origin.authority}\r\nContent-Length: 5\r\n"
            "Expect: 100-continue\r\n\r\n".encode()
        )
        assert read_head(sock) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hello")
        assert read_head(sock).startswith(b"HTTP/1.1 200")
    assert origin.received[0].endswith(b"\r\n\r\nhello")


def test_expect_in_an_http10_request_is_not_forwarded(proxy, origin):
    reply = _exchange(
        proxy,
        f"POST http://{origin.authority}/p HTTP/1.0\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nhi".encode(),
    )
    assert [status for status, _, _ in reply] == [200]
    assert origin.requests[0].header("expect") == [] and origin.requests[0].body == b"hi"


# upgrades ----------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["http", "ws"])
def test_upgrade_request_is_tunnelled_after_101(proxy, make_origin, scheme):
    """WebSocket-style upgrade over plain HTTP; some clients (aiohttp) send ws:// targets."""

    def serve(conn, index):
        origin.received.append(read_request_head(conn))
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        conn.sendall(b"server-frame:" + conn.recv(100))

    origin = make_origin(serve)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(
            f"GET {scheme}://{origin.authority}/chat HTTP/1.1\r\nHost: {origin.authority}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = read_head(sock)
        assert head.startswith(b"HTTP/1.1 101") and b"Upgrade: websocket" in head, head
        sock.sendall(b"client-frame")
        data = b""
        while chunk := sock.recv(100):
            data += chunk
    assert data == b"server-frame:client-frame"
    request = origin.received[0].lower()
    assert request.startswith(b"get /chat http/1.1\r\n"), request
    assert b"upgrade: websocket" in request and b"connection: upgrade" in request
    wait_for(lambda: not proxy.limiter.process_counts(), what="the tunnel's slot to come back")


@pytest.mark.parametrize(
    ("target", "fields", "hint"),
    [
        ("ws://{a}/chat", "", b"absolute http:// URL"),
        ("wss://{a}/chat", "Upgrade: websocket\r\nConnection: Upgrade\r\n", b"CONNECT"),
    ],
)
def test_ws_targets_outside_upgrades_and_wss_targets_get_400(proxy, target, fields, hint):
    target = target.format(a="127.0.0.1:9")
    reply = _exchange(proxy, f"GET {target} HTTP/1.1\r\nHost: x\r\n{fields}\r\n".encode())
    assert [status for status, _, _ in reply] == [400]
    assert hint in reply[0][2]
