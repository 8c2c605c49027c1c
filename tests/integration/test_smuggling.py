"""Request smuggling, differentially: what dprl decides against what a strict origin receives.

Each hostile request from a public corpus is followed, on the same client connection, by
a benign one. The origin parses every byte it receives with h11. A case passes only if
either dprl refused the hostile request (the expected status, ``Connection: close``, the
benign request never answered, nothing complete reached the origin), or dprl forwarded
it and the origin saw exactly that request, with the body dprl framed, and then the
benign one: no request nobody sent, no protocol error, no desynchronised stream.

Sources, named per case:
- PS: PortSwigger http-request-smuggler, src/burp/DesyncBox.java (permutation names)
- DP: defparam/smuggler, configs/exhaustive.py (mutation names)
- HG: HTTP Garden, TROPHIES.md ("server bug N" / "transducer bug N" payloads, made
  absolute-form and followed by the benign request)
- dprl#8: the cases of dprl's own issue 8 (found by a differential run)
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from ..support.strict_upstream import StrictUpstream, read_responses

T = b"{t}"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
CLTE_BODY = b"0\r\n\r\n" + SMUGGLED  # chunked: ends after "0"; by length: all of it
BENIGN = b"GET http://" + T + b"/benign HTTP/1.1\r\nHost: " + T + b"\r\nConnection: close\r\n\r\n"


@dataclass(frozen=True)
class Forwarded:
    """dprl forwards the request: the origin must see it with exactly this body."""

    body: bytes
    path: str = "/p"
    trailers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Case:
    name: str
    source: str
    data: bytes
    expect: int | Forwarded


def request(fields: bytes, body: bytes = b"", method: bytes = b"POST", line_end: bytes = b"\r\n") -> bytes:
    return method + b" http://" + T + b"/p HTTP/1.1" + line_end + b"Host: " + T + b"\r\n" + fields + b"\r\n" + body


def clte(te_field: bytes) -> bytes:
    """A (mutated) Transfer-Encoding field with a Content-Length that covers the whole body."""
    return request(te_field + b"\r\nContent-Length: %d\r\n" % len(CLTE_BODY), CLTE_BODY)


def chunked(body: bytes, te: bytes = b"Transfer-Encoding: chunked\r\n") -> bytes:
    return request(te, body)


CASES = [
    # PortSwigger's Transfer-Encoding permutations, CL.TE shaped: if dprl took the field
    # for Transfer-Encoding it must refuse the pair; if not, the whole body is data.
    Case("ps-vanilla", "PS vanilla", clte(b"Transfer-Encoding: chunked"), 400),
    Case("ps-underjoin1", "PS underjoin1", clte(b"Transfer_Encoding: chunked"), 400),
    Case("ps-spacejoin1", "PS spacejoin1", clte(b"Transfer Encoding: chunked"), 400),
    Case("ps-space1", "PS space1", clte(b"Transfer-Encoding : chunked"), 400),
    Case("ps-nameprefix1", "PS nameprefix1", clte(b"Foo: bar\r\n Transfer-Encoding: chunked"), 400),
    Case("ps-nameprefix2", "PS nameprefix2", clte(b"Foo: bar\r\n\tTransfer-Encoding: chunked"), 400),
    Case("ps-valueprefix1", "PS valueprefix1", clte(b"Transfer-Encoding:  chunked"), 400),
    Case("ps-nospace1", "PS nospace1", clte(b"Transfer-Encoding:chunked"), 400),
    Case("ps-linewrapped1", "PS linewrapped1", clte(b"Transfer-Encoding:\n chunked"), 400),
    Case("ps-gareth1", "PS gareth1", clte(b"Transfer-Encoding\n : chunked"), 400),
    Case("ps-badsetupCR", "PS badsetupCR", clte(b"Foo: bar\rTransfer-Encoding: chunked"), 400),
    Case("ps-badsetupLF", "PS badsetupLF", clte(b"Foo: bar\nTransfer-Encoding: chunked"), 400),
    Case("ps-vertwrap", "PS vertwrap", clte(b"Transfer-Encoding: \n\x0bchunked"), 400),
    Case("ps-tabwrap", "PS tabwrap", clte(b"Transfer-Encoding: \r\n\tchunked"), 400),
    Case("ps-multiCase", "PS multiCase", clte(b"tRANSFER-ENCODING: chunked"), 400),
    Case("ps-UPPERCASE", "PS UPPERCASE", clte(b"TRANSFER-ENCODING: chunked"), 400),
    Case("ps-0dwrap", "PS 0dwrap", clte(b"Foo: bar\r\n\rTransfer-Encoding: chunked"), 400),
    Case("ps-0dspam", "PS 0dspam", clte(b"Tra\rnsfer-Encoding: chunked"), 400),
    Case("ps-connection", "PS connection", clte(b"Connection: Transfer-Encoding\r\nTransfer-Encoding: chunked"), 400),
    Case("ps-spjunk", "PS spjunk", clte(b"Transfer-Encoding x: chunked"), 400),
    Case("ps-backslash", "PS backslash", clte(b"Transfer\\Encoding: chunked"), 400),
    Case("ps-spaceFF", "PS spaceFF", clte(b"Transfer-Encoding:\xffchunked"), 400),
    Case("ps-unispace", "PS unispace", clte(b"Transfer-Encoding:\xa0chunked"), 400),
    Case("ps-commaCow", "PS commaCow", clte(b"Transfer-Encoding: chunked, identity"), 400),
    Case("ps-cowComma", "PS cowComma", clte(b"Transfer-Encoding: identity, chunked"), 400),
    Case("ps-contentEnc", "PS contentEnc", clte(b"Content-Encoding: chunked"), Forwarded(CLTE_BODY)),
    Case("ps-quoted", "PS quoted", clte(b'Transfer-Encoding: "chunked"'), 400),
    Case("ps-aposed", "PS aposed", clte(b"Transfer-Encoding: 'chunked'"), 400),
    Case("ps-dualchunk", "PS dualchunk", clte(b"Transfer-Encoding: chunked\r\nTransfer-encoding: identity"), 400),
    Case("ps-lazygrep", "PS lazygrep", clte(b"Transfer-Encoding: chunk"), 400),
    Case("ps-0dsuffix", "PS 0dsuffix", clte(b"Transfer-Encoding: chunked\r"), 400),
    Case("ps-tabsuffix", "PS tabsuffix", clte(b"Transfer-Encoding: chunked\t"), 400),
    Case("ps-revdualchunk", "PS revdualchunk", clte(b"Transfer-Encoding: identity\r\nTransfer-Encoding: chunked"), 400),
    Case("ps-nested", "PS nested", clte(b"Transfer-Encoding: identity, chunked, identity"), 400),
    Case("ps-encode", "PS encode", clte(b"Transfer-%45ncoding: chunked"), Forwarded(CLTE_BODY)),
    Case("ps-accentTE", "PS accentTE", clte(b"Transf\x82r-Encoding: chunked"), 400),
    Case("ps-accentCH", "PS accentCH", clte(b"Transfer-Encoding: ch\x96nked"), 400),
    Case("ps-prefix1-nul", "PS prefix1:0", clte(b"Transfer-Encoding: \x00chunked"), 400),
    Case("ps-prefix1-vtab", "PS prefix1:11", clte(b"Transfer-Encoding: \x0bchunked"), 400),
    Case("ps-prefix1-ff", "PS prefix1:12", clte(b"Transfer-Encoding: \x0cchunked"), 400),
    Case("ps-suffix1-del", "PS suffix1:127", clte(b"Transfer-Encoding: chunked\x7f"), 400),
    Case("ps-spacefix1-tab", "PS spacefix1:9", clte(b"Transfer-Encoding:\tchunked"), 400),
    Case("ps-bodysplit", "PS bodysplit", clte(b"X: y\r\nFoo: barn\n\nTransfer-Encoding: chunked"), 400),
    # defparam/smuggler mutations not in PortSwigger's list
    Case("dp-smashed", "DP smashed", clte(b"Transfer Encoding:chunked"), 400),
    Case("dp-sarcasm", "DP sarcasm", clte(b"TrAnSFer-EnCODinG: cHuNkeD"), 400),
    Case("dp-x-rout", "DP x-rout", clte(b"X:X\rTransfer-Encoding: chunked"), 400),
    Case("dp-x-nout", "DP x-nout", clte(b"X:X\nTransfer-Encoding: chunked"), 400),
    Case("dp-midspace-0b", "DP midspace-0b", clte(b"Transfer-Encoding:\x0bchunked"), 400),
    Case("dp-postspace-0c", "DP postspace-0c", clte(b"Transfer-Encoding\x0c: chunked"), 400),
    Case("dp-prespace-09", "DP prespace-09", clte(b"\tTransfer-Encoding: chunked"), 400),
    Case("dp-endspace-85", "DP endspace-85", clte(b"Transfer-Encoding: chunked\x85"), 400),
    # HTTP Garden: bugs found in real servers and transducers
    Case("hg-s1-chunk-underscore", "HG server bug 1", chunked(b"0_2e\r\n\r\n" + SMUGGLED), 400),
    Case("hg-s2-nul-cr-in-value", "HG server bug 2", request(b"Header: v\x00\ralue\r\n", method=b"GET"), 400),
    Case("hg-s3-cl-space-colon", "HG server bug 3", request(b"Content-Length : 34\r\n", SMUGGLED), 400),
    Case(
        "hg-s4-first-field-tab",
        "HG server bug 4",
        b"POST http://" + T + b"/p HTTP/1.1\r\n\tContent-Length: 1\r\n\r\nX",
        400,
    ),
    Case(
        "hg-s5-version-prefix", "HG server bug 5", b"GET http://" + T + b"/p HTTP/1.32\r\nHost: " + T + b"\r\n\r\n", 400
    ),
    Case("hg-s6-method-prefix", "HG server bug 6", b'G=":<>(e),[T];?" http://' + T + b"/p HTTP/1.1\r\n\r\n", 400),
    Case("hg-s9-lf-in-request-line", "HG server bug 9", b"GET http://" + T + b"/\nHTTP/1.1\r\n\r\n", 400),
    Case("hg-s10-cl-underscore", "HG server bug 10", request(b"Content-Length: +1_0\r\n", b"0123456789"), 400),
    Case(
        "hg-s11-two-te-chunked",
        "HG server bug 11",
        chunked(b"1\r\nZ\r\n0\r\n\r\n", b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"),
        400,
    ),
    Case("hg-s12-te-nbsp", "HG server bug 12", chunked(b"0\r\n\r\n", b"Transfer-Encoding: \xa0chunked\xa0\r\n"), 400),
    Case("hg-s13-cr-in-value", "HG server bug 13", request(b"Visible: :/\rSmuggled: :)\r\n", method=b"GET"), 400),
    Case("hg-s16-empty-cl", "HG server bug 16", request(b"Content-Length: \r\n", method=b"GET"), 400),
    Case("hg-s17-empty-chunk-size", "HG server bug 17", chunked(b"\r\n\r\n"), 400),
    Case("hg-s18-empty-name", "HG server bug 18", request(b": ignored\r\n", method=b"GET"), 400),
    Case("hg-s21-comma-chunked-with-cl", "HG server bug 21", clte(b"Transfer-Encoding: ,chunked"), 400),
    Case("hg-s23-cl-1-then-0", "HG server bug 23", request(b"Content-Length: 1\r\nContent-Length: 0\r\n", b"Z"), 400),
    Case("hg-s26-negative-cl", "HG server bug 26", request(b"Content-Length: -48\r\n", method=b"GET"), 400),
    Case("hg-s27-colon-only", "HG server bug 27", request(b":\r\nI: am chopped off\r\n", method=b"GET"), 400),
    Case("hg-s28-no-colon", "HG server bug 28", request(b"Content-Length 10\r\n", b"0123456789"), 400),
    Case("hg-s29-cl-suffix", "HG server bug 29", request(b"Content-Length: 1Z\r\n", b"Z"), 400),
    Case("hg-s30-cr-line-start", "HG server bug 30", request(b"\rZGET /evil: HTTP/1.1\r\n", method=b"GET"), 400),
    Case("hg-s31-chunk-cr-cr", "HG server bug 31", chunked(b"5\r\r;ABCD\r\n34\r\nE\r\n0\r\n\r\n"), 400),
    Case(
        "hg-s32-cl-leading-zero",
        "HG server bug 32",
        request(b"Content-Length: 010\r\n", b"0123456789"),
        Forwarded(b"0123456789"),
    ),
    Case("hg-s33-cl-0-then-1", "HG server bug 33", request(b"Content-Length: 0\r\nContent-Length: 1\r\n", b"Z"), 400),
    Case("hg-s35-nul-truncation", "HG server bug 35", request(b"Test: test\x00DROPPED\r\n", method=b"GET"), 400),
    Case("hg-s37-name-continued", "HG server bug 37", clte(b"Transfer-\r\nEncoding: chunked"), 400),
    Case(
        "hg-s39-trailer-request-line",
        "HG server bug 39",
        chunked(b"0\r\nX:POST / HTTP/1.1\r\n\r\n"),
        Forwarded(b"", trailers=(("x", "POST / HTTP/1.1"),)),
    ),
    Case("hg-s40-nul-method", "HG server bug 40", b"\x00 / HTTP/............0596.7407.\r\n\r\n", 400),
    Case(
        "hg-s42-empty-cl-first",
        "HG server bug 42",
        request(b"Content-Length: \r\nContent-Length: 43\r\n", SMUGGLED),
        400,
    ),
    Case("hg-s43-trailing-nul", "HG server bug 43", request(b"Evil: evil\x00\r\n", method=b"GET"), 400),
    Case(
        "hg-s44-unknown-coding",
        "HG server bug 44",
        chunked(b"1\r\nZ\r\n0\r\n\r\n", b"Transfer-Encoding: blegh\r\n"),
        400,
    ),
    Case(
        "hg-s46-host-ff",
        "HG server bug 46",
        chunked(b"1\r\nZ\r\n0\r\n\r\n", b"Transfer-Encoding: \xffchunked\xff\r\n"),
        400,
    ),
    Case("hg-s47-invalid-chunk", "HG server bug 47", chunked(b"INVALID!!!\r\n" + SMUGGLED), 400),
    Case("hg-s48-cl-zero-pipelined", "HG server bug 48", request(b"Content-Length: 0\r\n"), Forwarded(b"")),
    Case("hg-t1-cl-0x", "HG transducer bug 1", request(b"Content-Length: 0x10\r\n", b"Z"), 400),
    Case("hg-t2-chunk-size-z", "HG transducer bug 2", chunked(b"Z\r\nZZ\r\nZZZ\r\n\r\n"), 400),
    Case("hg-t3-cr-before-semicolon", "HG transducer bug 3", chunked(b"2\r\r;a\r\n02\r\n41\r\n0\r\n\r\n"), 400),
    Case("hg-t4-cr-in-chunk-line", "HG transducer bug 4", chunked(b"1\r0\n"), 400),
    Case("hg-t6-name-nel", "HG transducer bug 6", request(b"Header\x85: value\r\n", method=b"GET"), 400),
    Case(
        "hg-t9-comma-chunked",
        "HG transducer bug 9",
        chunked(b"0\r\n\r\n", b"Transfer-Encoding: ,chunked\r\n"),
        Forwarded(b""),
    ),
    Case(
        "hg-t12-nul-in-host", "HG transducer bug 12", b"GET http://" + T + b"/p HTTP/1.1\r\nHost: a\x00.b\r\n\r\n", 400
    ),
    Case("hg-t13-lf-chunk-end", "HG transducer bug 13", chunked(b"a\r\n0123456789\n0\r\n\r\n"), 400),
    Case("hg-t14-field-without-colon", "HG transducer bug 14", request(b"Te\nst: test\r\n", method=b"GET"), 400),
    Case(
        "hg-t16-lf-only-head",
        "HG transducer bug 16",
        request(b"Connection: close\n", method=b"GET", line_end=b"\n"),
        400,
    ),
    Case(
        "hg-t17-extra-crlf",
        "HG transducer bug 17",
        chunked(b"17\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n\r\n\r\n0\r\n\r\n"),
        400,
    ),
    Case("hg-t19-chunk-minus-0x", "HG transducer bug 19", chunked(b"-0x0\r\n\r\n"), 400),
    Case("hg-t20-nul-line", "HG transducer bug 20", request(b"a:b\r\nc\x00\r\n", method=b"GET"), 400),
    Case(
        "hg-t21-get-with-body",
        "HG transducer bug 21",
        request(b"Content-Length: 10\r\n", b"1234567890", b"GET"),
        Forwarded(b"1234567890"),
    ),
    Case("hg-t24-chunk-leading-space", "HG transducer bug 24", chunked(b"           0\r\n\r\n"), 400),
    Case("hg-t36-cr-in-chunk-ext", "HG transducer bug 36", chunked(b"41;a=b\r\rXXXX\r\n0\r\n\r\n"), 400),
    # dprl issue 8: framing fields named by Connection, codings, canonical forms
    Case(
        "connection-names-cl",
        "dprl#8",
        request(b"Connection: Content-Length\r\nContent-Length: %d\r\n" % len(SMUGGLED), SMUGGLED),
        Forwarded(SMUGGLED),
    ),
    Case(
        "connection-names-cl-in-list",
        "dprl#8",
        request(b"Connection: keep-alive, content-length\r\nContent-Length: %d\r\n" % len(SMUGGLED), SMUGGLED),
        Forwarded(SMUGGLED),
    ),
    Case(
        "connection-names-te",
        "dprl#8",
        chunked(b"5\r\nhello\r\n0\r\n\r\n", b"Connection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n"),
        Forwarded(b"hello"),
    ),
    Case("te-gzip-chunked", "dprl#8", chunked(b"0\r\n\r\n", b"Transfer-Encoding: gzip, chunked\r\n"), 501),
    Case(
        "te-two-lines",
        "dprl#8",
        chunked(b"0\r\n\r\n", b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n"),
        501,
    ),
    Case(
        "chunk-ext-bws",
        "dprl#8",
        chunked(b"5 ; a = b\r\nhello\r\n5\t;a=b\r\nworld\r\n0\r\n\r\n"),
        Forwarded(b"helloworld"),
    ),
    Case("content_length-underscore", "dprl#8", request(b"Content_Length: 5\r\n", b"hello"), 400),
    Case("trailer-framing-fields", "dprl#8", chunked(b"0\r\nContent-Length: 37\r\nHost: evil\r\n\r\n"), Forwarded(b"")),
    Case("http-1-2", "dprl#8", b"GET http://" + T + b"/p HTTP/1.2\r\nHost: " + T + b"\r\n\r\n", Forwarded(b"")),
    # RFC 9112 3.2.2: an absolute-form target's Host is ignored and generated from the target
    Case("no-host", "RFC 9112 3.2.2", b"GET http://" + T + b"/p HTTP/1.1\r\n\r\n", Forwarded(b"")),
    Case("host-list", "RFC 9112 3.2.2", b"GET http://" + T + b"/p HTTP/1.1\r\nHost: a, b\r\n\r\n", Forwarded(b"")),
    Case(
        "host-twice-with-body",
        "RFC 9112 3.2.2",
        b"POST http://" + T + b"/p HTTP/1.1\r\nHost: a\r\nHost: evil\r\nContent-Length: 5\r\n\r\nhello",
        Forwarded(b"hello"),
    ),
    Case(
        "host-ipv6-unbracketed",
        "curl 7.88",
        b"GET http://" + T + b"/p HTTP/1.1\r\nHost: ::1:80\r\n\r\n",
        Forwarded(b""),
    ),
    Case("connect-two-hosts", "RFC 9112 3.2", b"CONNECT " + T + b" HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
]


def test_corpus_size_and_sources():
    names = [case.name for case in CASES]
    assert len(names) == len(set(names))
    public = [case for case in CASES if not case.source.startswith("dprl")]
    assert len(public) >= 50, f"{len(public)} cases from public corpora"


@pytest.fixture
def origin() -> Iterator[StrictUpstream]:
    server = StrictUpstream()
    yield server
    server.close()


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_request_then_benign(make_proxy, origin, case):
    proxy = make_proxy(max_connections_per_host=2, header_timeout=2)
    authority = origin.authority.encode()
    data = case.data.replace(T, authority) + BENIGN.replace(T, authority)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        with contextlib.suppress(OSError):  # refused and closed before everything was sent
            sock.sendall(data)
        responses = read_responses(sock)
    statuses = [status for status, _, _ in responses]
    assert not origin.errors, f"{case.name}: the origin could not parse what dprl sent: {origin.errors}"
    assert "/smuggled" not in origin.targets(), f"{case.name}: a smuggled request reached the origin"
    if isinstance(case.expect, int):
        assert statuses == [case.expect], f"{case.name} ({case.source}): expected only {case.expect}, got {statuses}"
        assert responses[0][1].get("connection") == "close", f"{case.name}: the connection must not be reused"
        assert origin.requests == [], f"{case.name}: refused, yet the origin received {origin.targets()}"
        if case.expect == 400 and not case.name.startswith(("no-host", "host-", "connect-two-hosts")):
            assert b"Host field" not in responses[0][2], f"{case.name}: refused for its Host, not its flaw"
    else:
        assert statuses == [200, 200], f"{case.name} ({case.source}): expected two answers, got {statuses}"
        assert origin.targets() == [case.expect.path, "/benign"], f"{case.name}: origin saw {origin.targets()}"
        first = origin.requests[0]
        assert first.body == case.expect.body, f"{case.name}: origin received body {first.body!r}"
        assert tuple(first.trailers) == case.expect.trailers, f"{case.name}: origin received trailers {first.trailers}"
        assert first.header("host") == [origin.authority]
        assert len({r.connection for r in origin.requests}) == 1, "both requests on one upstream connection"
