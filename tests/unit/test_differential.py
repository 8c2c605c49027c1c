"""dprl's request parser against h11's, on every hostile request of the corpora and generated ones.

dprl may refuse more than h11 (it is stricter on purpose). But wherever h11 accepts a
request that dprl would forward, the two must read the same message: the same method,
target and header fields, and the body must end at the same byte. A disagreement there
is how request smuggling starts.
"""

from __future__ import annotations

from dataclasses import dataclass

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dprl.http.errors import ProtocolError
from dprl.http.framing import Framing, find_line_end, parse_chunk_line, request_framing, trailer_field
from dprl.http.head import check_host_field, find_head_end, parse_request_head

from ..integration.test_corpus import CORPUS
from ..integration.test_smuggling import CASES

AUTHORITY = b"127.0.0.1:8000"
FOLLOWER = b"GET /follower HTTP/1.1\r\nHost: x\r\n\r\n"


@dataclass
class Reading:
    method: str
    target: str
    fields: list[tuple[str, str]]
    body: bytes
    rest: bytes  # what follows the message: where the body ended


def read_with_h11(data: bytes) -> Reading | None:
    """How h11 reads the first request of ``data``; None if it refuses it."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    conn.receive_data(b"")
    request, body = None, b""
    try:
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                return None  # closed before the message ended
    except h11.RemoteProtocolError:
        return None
    assert request is not None
    rest = conn.trailing_data[0]
    return Reading(
        request.method.decode(),
        request.target.decode(),
        [(k.decode(), v.decode("latin-1")) for k, v in request.headers],
        body,
        bytes(rest),
    )


def read_with_dprl(data: bytes) -> Reading | None:
    """How dprl reads the first request of ``data``; None if it would not forward it."""
    try:
        end = find_head_end(data, 8192, 65536)
        if end < 0:
            return None
        head = parse_request_head(data[:end])
        check_host_field(head)
        framing = request_framing(head)
        rest = data[end:]
        if framing.kind == Framing.LENGTH:
            if len(rest) < framing.length:
                return None
            body, rest = rest[: framing.length], rest[framing.length :]
        elif framing.kind == Framing.CHUNKED:
            body, rest = _dechunk(rest)
        else:
            body = b""
    except (ProtocolError, _Incomplete):
        return None
    fields = [(name.lower(), value) for name, value in head.fields]
    return Reading(head.method, head.target, fields, body, rest)


class _Incomplete(Exception):
    pass


def _dechunk(data: bytes) -> tuple[bytes, bytes]:
    """A chunked body as dprl's relay reads it (proxy/body.py: relay_chunked), from bytes."""
    body = b""
    while True:
        line, data = _line(data)
        size = parse_chunk_line(line)
        if size == 0:
            break
        if len(data) < size + 2:
            raise _Incomplete
        if data[size : size + 2] != b"\r\n":
            raise ProtocolError(400, "chunk data not followed by CRLF")
        body, data = body + data[:size], data[size + 2 :]
    while True:
        line, data = _line(data)
        if not line:
            return body, data
        trailer_field(line)


def _line(data: bytes) -> tuple[bytes, bytes]:
    end = find_line_end(data)
    if end < 0:
        raise _Incomplete
    return data[:end], data[end + 2 :]


def assert_agree(data: bytes) -> None:
    ours, theirs = read_with_dprl(data), read_with_h11(data)
    if ours is None or theirs is None:
        return  # refused by one of them: no message to disagree about
    assert (ours.method, ours.target) == (theirs.method, theirs.target), data
    # framing fields are compared by their effect (the body and where it ends, below): h11
    # collapses "Content-Length: 5, 5" to "5", dprl re-writes framing for the next hop anyway
    assert _end_to_end(ours.fields) == _end_to_end(theirs.fields), data
    assert ours.body == theirs.body, f"body: dprl {ours.body!r}, h11 {theirs.body!r} for {data!r}"
    assert ours.rest == theirs.rest, f"message end: dprl leaves {ours.rest!r}, h11 {theirs.rest!r} for {data!r}"


def _end_to_end(fields: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(name, value) for name, value in fields if name not in ("content-length", "transfer-encoding")]


def _corpus_requests() -> list[tuple[str, bytes]]:
    requests = [(name, data.replace(b"{t}", AUTHORITY)) for name, data, _ in CORPUS]
    requests += [(case.name, case.data.replace(b"{t}", AUTHORITY)) for case in CASES]
    return requests


@pytest.mark.parametrize(("name", "data"), _corpus_requests(), ids=[name for name, _ in _corpus_requests()])
def test_corpus_request_read_alike(name, data):
    assert_agree(data + FOLLOWER)


def test_the_comparison_has_work_to_do():
    """The corpora hold requests both parsers accept (else the test above proves nothing)."""
    both = [
        name
        for name, data in _corpus_requests()
        if read_with_dprl(data + FOLLOWER) is not None and read_with_h11(data + FOLLOWER) is not None
    ]
    assert len(both) >= 10, both


METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "G.T", "GET "])
TARGETS = st.sampled_from(
    ["http://a.example/", "http://a.example/p?q=1", "http://[::1]:8080/x", "/", "*", "http://a/%"]
)
NAMES = st.sampled_from(
    ["Host", "Content-Length", "Transfer-Encoding", "Connection", "X-A", "Expect", "TE", "Content_Length", "X A"]
)
VALUES = st.sampled_from(
    [
        "a.example",
        "0",
        "5",
        "010",
        "5, 5",
        "5,6",
        "chunked",
        "gzip, chunked",
        ",chunked",
        "chunked, gzip",
        "close",
        "content-length",
        " padded ",
        "a\tb",
        "\xa0chunked",
        "100-continue",
        "",
    ]
)
BODIES = st.sampled_from(
    [b"", b"hello", b"5\r\nhello\r\n0\r\n\r\n", b"5;x=y\r\nhello\r\n0\r\nT: v\r\n\r\n", b"0\r\n\r\n", b"01234567890"]
)


@st.composite
def requests(draw) -> bytes:
    line = f"{draw(METHODS)} {draw(TARGETS)} HTTP/1.{draw(st.sampled_from('0129'))}\r\n"
    fields = draw(st.lists(st.tuples(NAMES, VALUES), max_size=5))
    if draw(st.booleans()):
        fields.insert(0, ("Host", "a.example"))
    head = line + "".join(f"{name}: {value}\r\n" for name, value in fields) + "\r\n"
    return head.encode("latin-1") + draw(BODIES)


@settings(max_examples=600, deadline=None)
@given(requests())
def test_generated_requests_read_alike(data: bytes):
    assert_agree(data + FOLLOWER)
