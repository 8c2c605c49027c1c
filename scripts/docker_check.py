#!/usr/bin/env python3
"""Checks a running dprl container from the host (stdlib only; used by scripts/test-docker).

docker_check.py PORT           one proxy capped at 1: a request passes, a 2nd tunnel gets 500
docker_check.py PORT PORT2     two proxies sharing Redis, cap 1: a tunnel through the first
                               makes the second refuse (the cap is fleet-wide)
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Hello(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b"hello from upstream"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"FAIL: nothing listening on {port} after {timeout}s") from None
            time.sleep(0.2)


def connect(port: int, target: str) -> tuple[socket.socket, str]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return sock, head.split(b"\r\n")[0].decode()


def get(port: int, url: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data.decode(errors="replace")


def expect(condition: bool, message: str) -> None:
    print(("ok   " if condition else "FAIL ") + message)
    if not condition:
        raise SystemExit(1)


def main(ports: list[int]) -> None:
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    target = f"127.0.0.1:{upstream.server_address[1]}"
    for port in ports:
        wait_port(port)
    reply = get(ports[0], f"http://{target}/")
    expect(reply.startswith("HTTP/1.1 200") and reply.endswith("hello from upstream"), "plain GET through the proxy")
    holder, status = connect(ports[0], target)
    expect(" 200 " in status + " ", f"first tunnel admitted ({status})")
    second, status = connect(ports[-1], target)
    where = "the same proxy" if len(ports) == 1 else "another proxy of the fleet"
    expect(" 500 " in status + " ", f"second tunnel through {where} refused at the cap ({status})")
    second.close()
    holder.close()
    deadline = time.monotonic() + 10
    while True:
        sock, status = connect(ports[-1], target)
        sock.close()
        if " 200 " in status + " ":
            break
        if time.monotonic() > deadline:
            expect(False, "slot released after the first tunnel closed")
        time.sleep(0.1)
    expect(True, "slot released after the first tunnel closed")


if __name__ == "__main__":
    main([int(p) for p in sys.argv[1:]])
