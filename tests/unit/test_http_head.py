"""The strict head parser and the framing it derives (RFC 9112)."""

from __future__ import annotations

import pytest

from dprl.http.errors import ProtocolError
from dprl.http.framing import BodyFraming, Framing, parse_chunk_line, request_framing, response_framing
from dprl.http.head import find_head_end, parse_connect_head, parse_request_head, parse_response_head


def test_request_head_fields_keep_case_and_strip_ows():
    head = parse_request_head(b"GET http://a/ HTTP/1.1\r\nX-Case:  value with  spaces \t\r\nEmpty:\r\n\r\n")
    assert head.method == "GET" and head.target == "http://a/" and head.version == "HTTP/1.1"
    assert head.fields == [("X-Case", "value with  spaces"), ("Empty", "")]


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET http://a/ HTTP/1.1\r\nX : y\r\n\r\n", 400),
        (b"GET  http://a/ HTTP/1.1\r\n\r\n", 400),
        (b"GET http://a/ HTTP/3.0\r\n\r\n", 505),
        (b"get\x01 http://a/ HTTP/1.1\r\n\r\n", 400),
        (b"GET http://a/ HTTP/1.1\r\nX: \xff\x00\r\n\r\n", 400),
    ],
)
def test_bad_request_heads(head, status):
    with pytest.raises(ProtocolError) as info:
        parse_request_head(head)
    assert info.value.status == status


def test_request_framing_rules():
    def framing(fields: bytes, version: bytes = b"1.1"):
        return request_framing(parse_request_head(b"POST http://a/ HTTP/" + version + b"\r\n" + fields + b"\r\n"))

    assert framing(b"") == BodyFraming(Framing.NONE)
    assert framing(b"Content-Length: 5\r\n") == BodyFraming(Framing.LENGTH, 5)
    assert framing(b"Content-Length: 5\r\nContent-Length: 5\r\n") == BodyFraming(Framing.LENGTH, 5)
    assert framing(b"Content-Length: 5, 5\r\n") == BodyFraming(Framing.LENGTH, 5)
    assert framing(b"Content-Length: 010\r\n") == BodyFraming(Framing.LENGTH, 10)
    assert not framing(b"Content-Length: 0\r\n").has_body
    assert framing(b"Transfer-Encoding: ,Chunked\r\n") == BodyFraming(Framing.CHUNKED, codings=("chunked",))
    with pytest.raises(ProtocolError) as info:
        framing(b"Transfer-Encoding: gzip, chunked\r\n")
    assert info.value.status == 501
    for bad in (
        b"Content-Length: 5\r\nContent-Length: 6\r\n",
        b"Content-Length: +5\r\n",
        b"Content-Length: 0x5\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        b"Transfer-Encoding: chunked, gzip\r\n",
        b"Transfer-Encoding:\r\n",
    ):
        with pytest.raises(ProtocolError):
            framing(bad)
    with pytest.raises(ProtocolError):
        framing(b"Transfer-Encoding: chunked\r\n", b"1.0")


def test_response_framing_rules():
    def framing(status: int, fields: bytes, method: str = "GET"):
        head = parse_response_head(b"HTTP/1.1 %d X\r\n" % status + fields + b"\r\n")
        return response_framing(head, method)

    assert framing(200, b"Content-Length: 3\r\n") == BodyFraming(Framing.LENGTH, 3)
    assert framing(200, b"Content-Length: 3\r\n", "HEAD") == BodyFraming(Framing.NONE)
    assert framing(204, b"") == BodyFraming(Framing.NONE)
    assert framing(304, b"Content-Length: 3\r\n") == BodyFraming(Framing.NONE)
    assert framing(200, b"") == BodyFraming(Framing.CLOSE)
    assert framing(200, b"Transfer-Encoding: chunked\r\n") == BodyFraming(Framing.CHUNKED, codings=("chunked",))
    assert framing(200, b"Transfer-Encoding: gzip\r\n") == BodyFraming(Framing.CLOSE, codings=("gzip",))
    assert framing(200, b"Transfer-Encoding: gzip, chunked\r\n").codings == ("gzip", "chunked")
    with pytest.raises(ProtocolError):
        framing(200, b"Content-Length: 3\r\nContent-Length: 4\r\n")
    with pytest.raises(ProtocolError):
        parse_response_head(b"HTTP/1.1 2000 OK\r\n\r\n")
    assert parse_response_head(b"HTTP/1.1 200\r\n\r\n").reason == ""


def test_chunk_lines():
    assert parse_chunk_line(b"1a") == 26
    assert parse_chunk_line(b'A;name=value;q="x y"') == 10
    for bad in (b"", b"g", b"-1", b"1 2", b"1;", b'1;a="unterminated', b"0" * 17):
        with pytest.raises(ProtocolError):
            parse_chunk_line(bad)


@pytest.mark.parametrize(
    ("data", "end", "status"),
    [
        (b"GET http://a/ HTTP/1.1\r\nX: y\r\n\r\nrest", 32, None),
        (b"GET http://a/ HTTP/1.1\r\nX: y\r\n", -1, None),  # not complete yet
        (b"GET http://a/ HTTP/1.1\nX: y\n\n", None, 400),  # bare LF: refused at once
        (b"GET /" + b"a" * 100, None, 414),  # first line over the limit, still arriving
        (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 40, None, 431),  # head over the limit
    ],
)
def test_head_delimiting_and_its_limits(data, end, status):
    if status is None:
        assert find_head_end(data, max_line=64, max_head=200) == end
    else:
        with pytest.raises(ProtocolError) as info:
            find_head_end(data, max_line=64, max_head=200)
        assert info.value.status == status


def test_connect_heads_are_parsed_once_and_refused_every_time() -> None:
    head = b"CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com:443\r\n\r\n"
    first = parse_connect_head(head, 100)
    assert (first.method, first.target, first.raw_values("host")) == (
        "CONNECT",
        "api.example.com:443",
        ["api.example.com:443"],
    )
    assert parse_connect_head(head, 100) is first  # the same bytes: the same parse
    twice = b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\nHost: b.example:443\r\n\r\n"
    for _ in range(2):  # the check is part of the parse, and a refusal is not kept
        with pytest.raises(ProtocolError, match="more than one Host"):
            parse_connect_head(twice, 100)
