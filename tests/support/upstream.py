"""Test upstreams: real servers on loopback that count their concurrent connections.

``CountingUpstream`` is an HTTP/1.1 server (optionally TLS) whose ``/hold`` requests wait
until ``release()``, so a test can fill the cap and check it at the upstream itself.
``EchoServer`` is a raw TCP server for tunnels: it reads until EOF, then answers.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from .network import wait_for

BLOCK = b"x" * 65536


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # head and body leave in separate writes
    server: CountingUpstream

    def log_message(self, *args: object) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    return bytes(data)
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def handle_one_request(self) -> None:
        self.raw_requestline = self.rfile.readline(65537)
        if not self.raw_requestline:
            self.close_connection = True
            return
        if not self.parse_request():
            return
        self.server.requests.append((self.command, self.path, dict(self.headers.items())))
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        path = url.path
        if path == "/sink":  # count a body of any size without keeping it
            remaining = int(self.headers.get("Content-Length") or 0)
            total = 0
            while remaining:
                piece = self.rfile.read(min(remaining, 1 << 20))
                if not piece:
                    break
                remaining -= len(piece)
                total += len(piece)
            self._reply(200, str(total).encode())
            self.wfile.flush()
            return
        body = self._body()
        if path == "/hold":
            self.server.gate.wait(30)
            self._reply(200, b"held")
        elif path == "/echo":
            lines = [f"{k}: {v}" for k, v in self.headers.items()]
            reply = (f"{self.command} {self.path}\n" + "\n".join(lines) + "\n\n").encode() + body
            self._reply(200, reply)
        elif path == "/bytes":
            total = int(query.get("n", "0"))
            self.send_response(200)
            self.send_header("Content-Length", str(total))
            self.end_headers()
            while total and self.command != "HEAD":
                piece = BLOCK[: min(total, len(BLOCK))]
                self.wfile.write(piece)
                total -= len(piece)
        elif path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(int(query.get("count", "3"))):
                piece = f"chunk-{i};".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\nX-Trailer: done\r\n\r\n")
        elif path == "/close":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"until-close body")
            self.close_connection = True
        elif path == "/no-content":
            self.send_response(204)
            self.end_headers()
        elif path == "/reset":
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"partial")
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            self.connection.close()
            self.close_connection = True
        elif path == "/idle-close":  # answer as keep-alive, then close the idle connection
            self._reply(200, b"bye")
            self.close_connection = True
        elif path == "/drop":  # close without answering
            self.connection.close()
            self.close_connection = True
        else:
            self._reply(200, b"ok:" + path.encode())
        self.wfile.flush()


class CountingUpstream(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, tls: ssl.SSLContext | None = None, host: str = "127.0.0.1") -> None:
        super().__init__((host, 0), _Handler)
        self.tls = tls
        self.gate = threading.Event()
        self.requests: list[tuple[str, str, dict]] = []
        self._lock = threading.Lock()
        self.active = 0
        self.max_active = 0
        self.connections = 0
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def start(self) -> CountingUpstream:
        self._thread.start()
        return self

    def release(self) -> None:
        self.gate.set()

    def wait_active(self, count: int, timeout: float = 10.0) -> None:
        """Until at least ``count`` connections are open here."""
        wait_for(lambda: self.active >= count, timeout, f"{count} connections at the upstream (it has {self.active})")

    def process_request_thread(self, request: socket.socket, client_address: tuple) -> None:
        with self._lock:
            self.active += 1
            self.connections += 1
            self.max_active = max(self.max_active, self.active)
        try:
            if self.tls is not None:
                try:
                    request = self.tls.wrap_socket(request, server_side=True)
                except (ssl.SSLError, OSError):
                    return
            super().process_request_thread(request, client_address)
        finally:
            with self._lock:
                self.active -= 1

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # resets and aborts are what the tests provoke; no traceback for each

    def stop(self) -> None:
        self.gate.set()
        self.shutdown()
        self.server_close()


class RawOrigin:
    """A TCP origin that runs ``handler(conn, index)`` (or ``serve``) per connection, in a thread.

    For scripted behaviour a real HTTP server would not produce on demand: answering
    before reading the body, closing without answering, odd framing, raw echo.
    """

    def __init__(self, handler: Callable[[socket.socket, int], None] | None = None, host: str = "127.0.0.1") -> None:
        self.handler = handler or self.serve
        ipv6 = ":" in host
        self.sock = socket.create_server((host, 0), family=socket.AF_INET6 if ipv6 else socket.AF_INET)
        self.port = self.sock.getsockname()[1]
        self.authority = f"[{host}]:{self.port}" if ipv6 else f"{host}:{self.port}"
        self.connections = 0
        self.received: list[bytes] = []  # what handlers chose to record
        threading.Thread(target=self._accept, daemon=True).start()

    def serve(self, conn: socket.socket, index: int) -> None:
        raise NotImplementedError

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn, self.connections - 1), daemon=True).start()

    def _serve(self, conn: socket.socket, index: int) -> None:
        with conn, contextlib.suppress(OSError):
            self.handler(conn, index)

    def close(self) -> None:
        self.sock.close()

    stop = close


class EchoServer(RawOrigin):
    """Raw TCP: reads until the client half-closes, then sends ``reply + data`` and closes."""

    def __init__(self, reply: bytes = b"echo:") -> None:
        self.reply = reply
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()
        super().__init__()

    def serve(self, conn: socket.socket, index: int) -> None:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            data = bytearray()
            while chunk := conn.recv(65536):
                data += chunk
            conn.sendall(self.reply + bytes(data))
        finally:
            with self._lock:
                self.active -= 1


def read_request_head(conn: socket.socket) -> bytes:
    """Bytes up to and including the blank line, one recv at a time (nothing read beyond)."""
    data = b""
    while not data.endswith(b"\r\n\r\n"):
        byte = conn.recv(1)
        if not byte:
            return data
        data += byte
    return data


class HoldingServer(RawOrigin):
    """Holds each connection until the client closes it; records how many were open, and when.

    The measuring stick of the fault tests: ``max_active`` is what the upstream saw at
    worst, ``time_above(cap)`` how long it saw more than ``cap``.
    """

    def __init__(self) -> None:
        self.active = 0
        self.max_active = 0
        self.events: list[tuple[float, int]] = []  # (monotonic time, open connections after)
        self.first_bytes: dict[int, bytes] = {}  # accept order -> the first bytes it received
        self._lock = threading.Lock()
        super().__init__()

    def serve(self, conn: socket.socket, index: int) -> None:
        self._change(+1)
        try:
            data = conn.recv(65536)
            if data:
                self.first_bytes[index] = data
            while data:
                data = conn.recv(65536)
        finally:
            self._change(-1)

    def _change(self, delta: int) -> None:
        with self._lock:
            self.active += delta
            self.max_active = max(self.max_active, self.active)
            self.events.append((time.monotonic(), self.active))

    def time_above(self, cap: int) -> float:
        """Seconds during which more than ``cap`` connections were open (so far)."""
        with self._lock:
            events = list(self.events)
        total, since = 0.0, None
        for moment, active in events:
            if active > cap and since is None:
                since = moment
            elif active <= cap and since is not None:
                total, since = total + moment - since, None
        if since is not None:
            total += time.monotonic() - since
        return total

    def wait_active(self, count: int, timeout: float = 10.0) -> None:
        """Until exactly ``count`` connections are open here."""
        wait_for(lambda: self.active == count, timeout, f"exactly {count} connections at the upstream", interval=0.01)


class ArrivalUpstream(RawOrigin):
    """An HTTP/1.1 origin that timestamps every request as its head arrives (monotonic
    clock) and answers ``200 ok`` on keep-alive connections: a rate is measured here,
    where it matters. ``paths`` holds request paths in arrival order."""

    def __init__(self) -> None:
        self.arrivals: list[float] = []
        self.paths: list[str] = []
        self._lock = threading.Lock()
        super().__init__()

    def serve(self, conn: socket.socket, index: int) -> None:
        while True:
            try:
                head = read_request_head(conn)
            except OSError:
                return
            if not head:
                return
            with self._lock:
                self.arrivals.append(time.monotonic())
                self.paths.append(head.split(b" ", 2)[1].decode())
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def most_in_any_window(self, width: float) -> int:
        """The most arrivals within any interval of ``width`` seconds (closed)."""
        return self.most_in(self.arrivals, width)

    @staticmethod
    def most_in(arrivals: list[float], width: float) -> int:
        times = sorted(arrivals)
        most, start = 0, 0
        for end, moment in enumerate(times):
            while moment - times[start] > width:
                start += 1
            most = max(most, end - start + 1)
        return most


if __name__ == "__main__":  # python -m tests.support.upstream: serve until stdin closes (soak tests)
    import sys

    server = CountingUpstream().start()
    print(server.port, flush=True)
    sys.stdin.read()
    server.stop()
