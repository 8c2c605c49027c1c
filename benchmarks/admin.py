"""The admin listener: its cost while scraped, and how long a scrape stalls the proxy."""

from __future__ import annotations

import argparse
import socket
import statistics
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.support.network import free_port

from .harness import dprl, figure_row, loadgen, measured, nginx, rotated


def _scraper(port: int, stop: threading.Event, period: float = 1.0) -> None:
    """GET /metrics every ``period`` seconds until ``stop`` (what a Prometheus server does)."""
    import urllib.request

    while not stop.wait(period):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            answer.read()


def figure_admin(args: argparse.Namespace, workdir: Path) -> dict:
    """CONNECT tunnels/s with the admin listener off, and on with /metrics scraped every second."""

    admin_port = free_port()
    with (
        nginx(workdir) as upstream,
        dprl("--max-connections", "100000") as off,
        dprl("--max-connections", "100000", "--admin-port", str(admin_port)) as on,
    ):
        off.name, on.name = "admin off", "admin on"
        for proxy in (off, on):
            loadgen(workdir, "connect", proxy.port, upstream, args.connections, 1)  # warm-up
        direct: list[float] = []
        runs: dict[str, list[tuple[float, ...]]] = {"admin off": [], "admin on": []}
        for repeat in range(args.repeat):
            direct.append(loadgen(workdir, "direct", upstream, args.connections, args.duration)[0])
            for proxy in rotated([off, on], repeat):
                load = ("connect", proxy.port, upstream, args.connections, args.duration)
                stop = threading.Event()
                scraper = threading.Thread(target=_scraper, args=(admin_port, stop)) if proxy is on else None
                if scraper is not None:
                    scraper.start()
                try:
                    runs[proxy.name].append(measured(proxy, lambda load=load: loadgen(workdir, *load)))
                finally:
                    stop.set()
                    if scraper is not None:
                        scraper.join()
    row = figure_row("CONNECT tunnels/s, local, admin listener", direct, runs, "us/tunnel")
    row["lines"] = [
        f"{row['figure']}: admin off {row['admin off']:.1f}/s ({row['admin off cpu']:.1f} us CPU/tunnel), "
        f"on and scraped every 1 s {row['admin on']:.1f}/s ({row['admin on cpu']:.1f} us CPU/tunnel): "
        f"on / off = {row['admin on'] / row['admin off']:.3f}"
    ]
    return row


def _round_trips(port: int, upstream: int, stop: threading.Event, out: list) -> None:
    """Keep-alive GETs through the proxy, one at a time; each round trip's (start, seconds)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        reader = sock.makefile("rb")
        request = f"GET http://127.0.0.1:{upstream}/small HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
        while not stop.is_set():
            started = time.monotonic()
            sock.sendall(request)
            length = 0
            assert reader.readline().startswith(b"HTTP/1.1 200")
            while (line := reader.readline()) != b"\r\n":
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            reader.read(length)
            out.append((started, time.monotonic() - started))


REFRESH = "one refresh of the console"


def _size(admin_port: int, path: str) -> int:
    """The length of an admin page's body."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}{path}", timeout=30) as answer:
        return len(answer.read())


def figure_admin_stall(args: argparse.Namespace, workdir: Path) -> list[dict]:
    """The longest stall of the proxy's loop while /metrics and /hosts of 20,000 hosts are rendered.

    20,000 hosts have limits of their own (INI), 500 have counters; a client sends keep-alive
    GETs through the proxy back to back, and the longest round trip during each scrape,
    less the median round trip, is how long the loop could not serve it.
    """

    hosts = 20_000
    ini = workdir / "hosts.ini"
    ini.write_text("[host-limits]\n" + "".join(f"host-{i}.example = 5\n" for i in range(hosts)))
    admin_port = free_port()
    rows = []
    with nginx(workdir) as upstream, dprl("--config", str(ini), "--admin-port", str(admin_port)) as proxy:
        # counters for 500 other hosts: each refused at the dial (nothing listens on port 9)
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
            for i in range(500):
                sock.sendall(f"GET http://127.2.{i // 250}.{i % 250 + 1}:9/ HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                sock.recv(4096)
        # /metrics and /hosts, then what the console asks every 2 s: its header, one page of the
        # table (sorted by use, and filtered on another page), the sparklines of that page
        console = ("/summary", "/hosts?sort=use&order=desc&offset=0&limit=100", "/hosts?sort=host&q=host-1&limit=100")
        history = "/history?hosts=" + ",".join(f"host-{i}.example" for i in range(100))
        refresh = ("/summary", console[1], "/tenants")  # what the page asks at once, every 2 s
        for path in ("/metrics", "/hosts", *console, history, REFRESH):
            trips: list[tuple[float, float]] = []
            stop = threading.Event()
            prober = threading.Thread(target=_round_trips, args=(proxy.port, upstream, stop, trips))
            prober.start()
            time.sleep(1.0)
            windows, sizes = [], []
            for _ in range(max(3, args.repeat * 3)):
                started = time.monotonic()
                if path == REFRESH:  # the page's refresh: three requests together, then the sparklines
                    with ThreadPoolExecutor(3) as pool:
                        sizes.append(sum(pool.map(lambda page: _size(admin_port, page), refresh)))
                    sizes[-1] += _size(admin_port, history)
                else:
                    sizes.append(_size(admin_port, path))
                windows.append((started, time.monotonic()))
                time.sleep(0.3)
            stop.set()
            prober.join()
            quiet = [seconds for start, seconds in trips if not any(a - 0.05 <= start <= b for a, b in windows)]
            during = [seconds for start, seconds in trips if any(a <= start <= b for a, b in windows)]
            median = statistics.median(quiet)
            worst = max(during) if during else 0.0
            scrape = statistics.median(b - a for a, b in windows)
            rows.append(
                {
                    "figure": f"loop stall during GET {path[:60]}, {hosts} hosts",
                    "direct": None,
                    "custom": True,
                    "stall_ms": (worst - median) * 1000,
                    "lines": [
                        f"GET {path[:60]} with {hosts} hosts ({statistics.median(sizes) / 1024:.0f} KiB, "
                        f"{scrape * 1000:.0f} ms each): longest proxied round trip during it {worst * 1000:.1f} ms, "
                        f"median otherwise {median * 1000:.2f} ms, longest otherwise {max(quiet) * 1000:.1f} ms: "
                        f"loop stall at most {(worst - median) * 1000:.1f} ms"
                    ],
                }
            )
    return rows
