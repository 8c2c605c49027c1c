"""Property-based tests (hypothesis) of the head parser and host normalisation."""

from __future__ import annotations

import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st

from dprl.errors import ClientProtocolError, UpstreamError
from dprl.hosts import normalize_host_spec, parse_host, split_authority
from dprl.http_head import (
    parse_chunk_line,
    parse_request_head,
    parse_response_head,
    request_framing,
    response_framing,
)

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
    except ClientProtocolError as exc:
        assert 400 <= exc.status < 600 and str(exc)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300).map(lambda b: b"HTTP/1.1 " + b + b"\r\n\r\n"), st.sampled_from(["GET", "HEAD"]))
def test_response_parsing_raises_only_upstream_errors(data: bytes, method: str):
    try:
        response_framing(parse_response_head(data), method)
    except UpstreamError as exc:
        assert exc.status == 502


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40))
def test_chunk_lines(data: bytes):
    with contextlib.suppress(ClientProtocolError):
        assert parse_chunk_line(data, ClientProtocolError) >= 0


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
