"""Which dprl modules and objects one plain keep-alive GET passes through, in the proxy.

Starts a proxy in this process (its own hub thread), sends one warm-up GET, then traces
a GET on a new client connection, from accept to the release of its slot: every dprl
function that runs (and the class of every dprl object whose method runs) is recorded. The counts are a measure of
how far a request travels through the code, for comparing two layouts of it.

Usage: scripts/trace-get [--keep-alive] [--verbose]

--keep-alive traces the second request of a keep-alive connection instead (what a busy client does).
"""

from __future__ import annotations

import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from dprl import ProxyRateLimiter

ROOT = Path(__file__).resolve().parent.parent

PACKAGE = str(ROOT / "dprl")


class Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


def read_response(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"ok"):
        data += sock.recv(65536)
    return data


def main() -> int:
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    proxy = ProxyRateLimiter(0, 10).start()
    target = f"127.0.0.1:{upstream.server_address[1]}"
    request = f"GET http://{target}/x HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()
    modules: set[str] = set()
    classes: set[str] = set()
    functions: list[str] = []
    edges: set[tuple[str, str]] = set()

    def tracer(frame, event, arg):  # type: ignore[no-untyped-def]
        if event != "call":
            return None
        code = frame.f_code
        if not code.co_filename.startswith(PACKAGE):
            return None
        module = code.co_filename[len(PACKAGE) - 4 :]
        modules.add(module)
        owner = frame.f_locals.get("self")
        if owner is not None and type(owner).__module__.startswith("dprl"):
            classes.add(f"{type(owner).__module__}.{type(owner).__qualname__}")
        functions.append(f"{module}:{code.co_qualname}")
        caller = frame.f_back
        if caller is not None and caller.f_code.co_filename.startswith(PACKAGE):
            source = caller.f_code.co_filename[len(PACKAGE) - 4 :]
            if source != module:
                edges.add((source, module))
        return None

    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.sendall(request)
        read_response(sock)  # warm-up: imports, caches, the first-use paths
    _wait_released(proxy)
    if "--keep-alive" in sys.argv:  # traced: the second request of a keep-alive connection
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
            sock.sendall(request)
            read_response(sock)
            _trace_in_hub(proxy, tracer)
            sock.sendall(request)
            read_response(sock)
            _trace_in_hub(proxy, None)
    else:
        _trace_in_hub(proxy, tracer)
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:  # traced: accept to release
            sock.sendall(request)
            read_response(sock)
        _wait_released(proxy)
        _trace_in_hub(proxy, None)
    proxy.stop()
    upstream.shutdown()
    print(
        f"modules: {len(modules)}  objects (classes whose methods ran): {len(classes)}  "
        f"calls: {len(functions)}  module-to-module call edges: {len(edges)}"
    )
    if "--verbose" in sys.argv:
        print("\n".join(sorted(modules)))
        print("\n".join(sorted(classes)))
        print("\n".join(f"{a} -> {b}" for a, b in sorted(edges)))
        print("\n".join(dict.fromkeys(functions)))
    return 0


def _wait_released(proxy: ProxyRateLimiter) -> None:
    import time

    deadline = time.monotonic() + 5
    while proxy.active_connections_for_host("127.0.0.1") or proxy.limiter.process_counts():
        if time.monotonic() > deadline:
            raise SystemExit("slots not released")
        time.sleep(0.01)
    time.sleep(0.05)  # the session's last steps after the release


def _trace_in_hub(proxy: ProxyRateLimiter, tracer) -> None:  # type: ignore[no-untyped-def]
    """Install ``tracer`` in the proxy's hub thread (sys.settrace is per thread)."""
    done = threading.Event()
    hub = proxy._hub  # a private attribute: this script measures internals on purpose

    def install() -> None:
        sys.settrace(tracer)
        import greenlet

        greenlet.settrace(lambda event, args: sys.settrace(tracer))
        done.set()

    hub.loop.run_callback_threadsafe(install)
    done.wait(5)


if __name__ == "__main__":
    sys.exit(main())
