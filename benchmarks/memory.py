"""Memory: RSS per idle tunnel, and with many distinct hosts."""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import threading
import time
from pathlib import Path

from tests.support.network import free_port, wait_port

from .harness import PYTHON, ROOT, TREES, dprl, rss_kib


def _rss_per_tunnel(count: int, tree: Path = ROOT) -> float:
    """Bytes of proxy RSS per idle CONNECT tunnel, with ``count`` tunnels held open."""
    import selectors
    from concurrent.futures import ThreadPoolExecutor

    listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
    listener.setblocking(False)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept_loop() -> None:
        selector = selectors.DefaultSelector()
        selector.register(listener, selectors.EVENT_READ)
        while not stop.is_set():
            for _ in selector.select(0.05):
                with contextlib.suppress(BlockingIOError):
                    while True:
                        held.append(listener.accept()[0])

    acceptor = threading.Thread(target=accept_loop, daemon=True)
    acceptor.start()
    port = free_port()
    proc = subprocess.Popen(
        [PYTHON, "-m", "dprl", "--bind", "127.0.0.1", "--port", str(port), "--log-level", "warn"],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
    )
    clients: list[socket.socket] = []
    try:
        wait_port(port)
        target = listener.getsockname()[1]
        warm = socket.create_connection(("127.0.0.1", port))  # one tunnel first: imports and pools settle
        warm.sendall(f"CONNECT 127.0.0.1:{target} HTTP/1.1\r\n\r\n".encode())
        warm.recv(100)
        time.sleep(0.5)
        before = rss_kib(proc.pid)

        def open_tunnel(_: int) -> None:
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            clients.append(sock)
            sock.sendall(f"CONNECT 127.0.0.1:{target} HTTP/1.1\r\n\r\n".encode())
            if not sock.recv(100).startswith(b"HTTP/1.1 200"):
                raise RuntimeError("tunnel refused")

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(open_tunnel, range(count)))
        time.sleep(0.5)
        after = rss_kib(proc.pid)
        warm.close()
        return (after - before) * 1024 / count
    finally:
        for sock in clients:
            sock.close()
        proc.terminate()
        proc.wait(30)
        stop.set()
        acceptor.join()
        for sock in held:
            sock.close()
        listener.close()


def figure_rss(args: argparse.Namespace, workdir: Path) -> list[dict]:
    """Proxy RSS per idle CONNECT tunnel, with 1,000 and with 5,000 tunnels open."""
    rows = []
    for count in (1000, 5000):
        row: dict = {"figure": f"RSS per idle tunnel, {count} tunnels (bytes)", "direct": None}
        for name, tree in TREES.items():
            runs = [_rss_per_tunnel(count, tree) for _ in range(args.repeat)]
            row[name] = statistics.median(runs)
            row[f"runs_{name}"] = runs
        rows.append(row)
    return rows


def figure_hosts_rss(args: argparse.Namespace, workdir: Path) -> dict:
    """Proxy RSS after requests to 50,000 distinct hosts, against after the first 10,000."""

    total, warm = 50_000, 10_000  # past the 4,096 entries of the address caches (dial, access)
    with dprl("--admin-port", str(free_port())) as proxy:
        sizes = {}
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
            reader = sock.makefile("rb")

            def send(first: int, last: int) -> None:
                for i in range(first, last):
                    a, b = divmod(i, 250)
                    sock.sendall(f"GET http://127.1.{a}.{b + 1}:9/ HTTP/1.1\r\nHost: x\r\n\r\n".encode())

            for first, last in ((0, warm), (warm, total)):
                sender = threading.Thread(target=send, args=(first, last))
                sender.start()
                for _ in range(first, last):
                    length = 0
                    assert reader.readline().startswith(b"HTTP/1.1 502")
                    while (line := reader.readline()) != b"\r\n":
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":")[1])
                    reader.read(length)
                sender.join()
                sizes[last] = rss_kib(proxy.pid)
    line = (
        f"RSS after {warm:,} distinct hosts {sizes[warm]:,} KiB, after {total:,} {sizes[total]:,} KiB "
        f"({(sizes[total] - sizes[warm]) / sizes[warm] * 100:+.1f}%)"
    )
    return {"figure": "RSS, distinct hosts", "direct": None, "custom": True, "rss_kib": sizes, "lines": [line]}
