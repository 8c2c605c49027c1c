"""An origin that parses every byte it receives with h11 (a strict HTTP/1.1 parser).

Tests check what the upstream *received*, not only what the client saw: each complete
request (method, target, fields, body, trailers) in arrival order, the raw bytes of each
connection, and every protocol error h11 found. A request smuggled past the proxy shows
up here as a request nobody sent, or as a protocol error.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field

import h11

from .upstream import RawOrigin


@dataclass
class Received:
    connection: int
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    trailers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name.lower()]


class StrictUpstream(RawOrigin):
    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.errors: list[str] = []  # protocol errors in bytes that arrived
        self.truncated: list[str] = []  # connections closed in the middle of a message
        self.raw: list[bytearray] = []  # per connection, in the order they were accepted
        self._lock = threading.Lock()
        super().__init__()

    def serve(self, conn: socket.socket, index: int) -> None:
        parser = h11.Connection(h11.SERVER)
        current: Received | None = None
        eof = False
        with self._lock:
            while len(self.raw) <= index:
                self.raw.append(bytearray())
        while True:
            try:
                event = parser.next_event()
            except h11.RemoteProtocolError as exc:
                with self._lock:
                    (self.truncated if eof else self.errors).append(f"connection {index}: {exc}")
                if not eof:
                    self._send(conn, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            if event is h11.NEED_DATA:
                if parser.they_are_waiting_for_100_continue:
                    self._send(conn, parser.send(h11.InformationalResponse(status_code=100, headers=[])))
                try:
                    data = conn.recv(65536)
                except OSError:
                    data = b""
                eof = not data
                self.raw[index] += data
                parser.receive_data(data)
            elif isinstance(event, h11.Request):
                current = Received(
                    index,
                    event.method.decode(),
                    event.target.decode(),
                    [(k.decode(), v.decode("latin-1")) for k, v in event.headers],
                )
            elif isinstance(event, h11.Data):
                assert current is not None
                current.body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert current is not None
                current.trailers = [(k.decode(), v.decode("latin-1")) for k, v in event.headers]
                with self._lock:
                    self.requests.append(current)
                body = f"ok:{current.target}".encode()
                reply = parser.send(h11.Response(status_code=200, headers=[("Content-Length", str(len(body)))]))
                reply += parser.send(h11.Data(data=body)) + parser.send(h11.EndOfMessage())
                self._send(conn, reply)
                if parser.our_state is h11.MUST_CLOSE:
                    return
                parser.start_next_cycle()
            else:  # ConnectionClosed
                return

    @staticmethod
    def _send(conn: socket.socket, data: bytes) -> None:
        with contextlib.suppress(OSError):
            conn.sendall(data)

    def targets(self) -> list[str]:
        with self._lock:
            return [r.target for r in self.requests]


def read_responses(sock: socket.socket, timeout: float = 5.0) -> list[tuple[int, dict[str, str], bytes]]:
    """Every response the proxy sends on ``sock`` until it closes, parsed by h11 (client side)."""
    sock.settimeout(timeout)
    parser = h11.Connection(h11.CLIENT)
    # h11 must believe it sent requests to parse responses; pipelined ones are fine.
    responses: list[tuple[int, dict[str, str], bytes]] = []
    parser.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    parser.send(h11.EndOfMessage())
    status, headers, body = 0, {}, bytearray()
    while True:
        try:
            event = parser.next_event()
        except h11.RemoteProtocolError:
            return responses  # closed (or timed out) between or inside responses
        if event is h11.NEED_DATA:
            try:
                data = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                data = b""
            parser.receive_data(data)
            continue
        if isinstance(event, h11.InformationalResponse):
            continue
        if isinstance(event, h11.Response):
            status = event.status_code
            headers = {k.decode().lower(): v.decode("latin-1") for k, v in event.headers}
            body = bytearray()
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            responses.append((status, headers, bytes(body)))
            if parser.our_state is h11.MUST_CLOSE or parser.their_state is h11.MUST_CLOSE:
                return responses
            parser.start_next_cycle()
            parser.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
            parser.send(h11.EndOfMessage())
        else:
            return responses
