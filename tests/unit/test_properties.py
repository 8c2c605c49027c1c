"""Property-based tests (hypothesis) of the head parser and host normalisation."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dprl.http.errors import ProtocolError
from dprl.http.framing import chunk_line, parse_chunk_line, request_framing, response_framing
from dprl.http.head import parse_request_head, parse_response_head
from dprl.http.target import parse_host, split_authority
from dprl.limits.hosts import normalize_host_spec

TOKENS = st.sampled_from(["GET", "POST", "CONNECT", "HEAD", "G\x00T", "", "PUT ", "OPTIONS"])
TARGETS = st.one_of(
    st.sampled_from(["http://a.example/", "http://[::1]:80/x", "127.0.0.1:443", "/", "*", "http://a b/"]),
    st.text(min_size=0, max_size=40),
)
FIELD_NAMES = st.sampled_from(
    ["Host", "Content-Length", "Transfer-Encoding", "Connection", "X", "X Y", "", "Ä", "Te"]
) | st.text(max_size=10)
FIELD_VALUES = st.sampled_from(["chunked", "5", "5, 5", "-1", "gzip, chunked", "", "close", "a\rb"]) | st.text(
    max_size=20
)


@st.composite
def request_heads(draw) -> bytes:
    line = f"{draw(TOKENS)} {draw(TARGETS)} {draw(st.sampled_from(['HTTP/1.1', 'HTTP/1.0', 'HTTP/2.0', 'http/1.1']))}"
    fields = draw(st.lists(st.tuples(FIELD_NAMES, FIELD_VALUES), max_size=6))
    text = line + "\r\n" + "".join(f"{n}: {v}\r\n" for n, v in fields) + "\r\n"
    return text.encode("utf-8", "surrogatepass")


@settings(max_examples=400, deadline=None)
@given(st.one_of(request_heads(), st.binary(max_size=300).map(lambda b: b + b"\r\n\r\n")))
def test_request_parsing_raises_only_protocol_errors(data: bytes):
    try:
        head = parse_request_head(data)
        request_framing(head)
    except ProtocolError as exc:
        assert 400 <= exc.status < 600 and str(exc)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300).map(lambda b: b"HTTP/1.1 " + b + b"\r\n\r\n"), st.sampled_from(["GET", "HEAD"]))
def test_response_parsing_raises_only_upstream_errors(data: bytes, method: str):
    try:
        response_framing(parse_response_head(data), method)
    except ProtocolError as exc:
        assert 400 <= exc.status < 600 and str(exc)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=40), st.from_regex(rb"\A[0-9a-fA-F]{1,20}([ \t]*;[ \t]*[a-z]{1,3}(=[a-z0-9]{1,3})?)*\Z")
    )
)
def test_chunk_lines_are_read_as_their_hex_size_and_rewritten_canonically(data: bytes):
    try:
        size = parse_chunk_line(data)
    except ProtocolError as exc:
        assert exc.status == 400
        digits = data.split(b";", 1)[0].rstrip(b" \t")
        # refused only what is outside the grammar: not 1-16 hex digits, or a bad extension
        assert not (1 <= len(digits) <= 16 and all(c in b"0123456789abcdefABCDEF" for c in digits)) or b";" in data
        return
    digits = data.split(b";", 1)[0].rstrip(b" \t")
    assert size == int(digits, 16) and 1 <= len(digits) <= 16
    canonical = chunk_line(size)
    assert canonical == b"%x\r\n" % size and parse_chunk_line(canonical[:-2]) == size


HOSTISH = st.one_of(
    st.text(alphabet="abcXYZ019-_.:[]%@ é", max_size=30),
    st.from_regex(r"[a-zA-Z0-9]{1,10}(\.[a-zA-Z0-9-]{1,10}){0,3}\.?(:[0-9]{1,5})?", fullmatch=True),
    st.ip_addresses().map(lambda ip: f"[{ip}]" if ip.version == 6 else str(ip)),
    st.tuples(st.ip_addresses(v=6), st.integers(0, 70000)).map(lambda t: f"[{t[0]}]:{t[1]}"),
)


@settings(max_examples=500, deadline=None)
@given(HOSTISH)
def test_normalisation_is_idempotent_and_fails_only_with_value_error(spec: str):
    try:
        key = normalize_host_spec(spec)
    except ValueError:
        return
    assert normalize_host_spec(key) == key
    assert key == key.lower() and not key.endswith(".")


@settings(max_examples=500, deadline=None)
@given(HOSTISH)
def test_split_authority_returns_normalised_hosts(authority: str):
    try:
        host, port = split_authority(authority, 80)
    except ValueError:
        return
    assert parse_host(host) == host and 0 < port < 65536


# The properties above accept a refusal as an answer; these show that what is valid is
# accepted (a parser that refused everything would pass the ones above).
LABEL = st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,8}[a-zA-Z0-9])?", fullmatch=True)
REG_NAMES = st.lists(LABEL, min_size=1, max_size=4).map(".".join)
VALID_HOSTS = st.one_of(
    REG_NAMES,
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda ip: f"[{ip}]"),
)
PORTS = st.integers(1, 65535)


@settings(max_examples=300, deadline=None)
@given(VALID_HOSTS, st.booleans(), PORTS)
def test_valid_hosts_are_accepted(host: str, trailing_dot: bool, port: int):
    dotted = host + "." if trailing_dot and not host.startswith("[") and not host[-1].isdigit() else host
    key = normalize_host_spec(f"{dotted}:{port}")
    expected = host.lower()  # IPv6 literals come canonical from str(ip) already
    assert key == (expected if port in (80, 443) else f"{expected}:{port}")
    assert normalize_host_spec(key) == key
    assert split_authority(f"{dotted}:{port}", 80) == (parse_host(dotted), port)


VALID_FIELDS = st.lists(
    st.tuples(
        st.from_regex(r"X-[A-Za-z0-9-]{1,10}", fullmatch=True),
        st.from_regex(r"[!-~]([ !-~]{0,20}[!-~])?", fullmatch=True),
    ),
    max_size=5,
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"]),
    REG_NAMES,
    PORTS,
    st.from_regex(r"/[A-Za-z0-9._~/-]{0,20}", fullmatch=True),
    VALID_FIELDS,
    st.sampled_from(["HTTP/1.1", "HTTP/1.0"]),
)
def test_valid_requests_are_accepted(method, host, port, path, fields, version):
    text = f"{method} http://{host}:{port}{path} {version}\r\nHost: {host}:{port}\r\n"
    text += "".join(f"{name}: {value}\r\n" for name, value in fields) + "\r\n"
    head = parse_request_head(text.encode())
    assert (head.method, head.target, head.version) == (method, f"http://{host}:{port}{path}", version)
    assert [(n, v) for n, v in head.fields if n.startswith("X-")] == fields
    assert not request_framing(head).has_body
