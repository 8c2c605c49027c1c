"""Waiting for a slot: hand-off latency and order at a saturated cap."""

from __future__ import annotations

import argparse
import contextlib
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from .harness import dprl, percentile, redis_server


@contextlib.contextmanager
def closing_upstream() -> Iterator[int]:
    """A TCP server that holds each connection until its client closes it, then closes too."""
    import selectors

    listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
    listener.setblocking(False)
    stop = threading.Event()

    def serve() -> None:
        selector = selectors.DefaultSelector()
        selector.register(listener, selectors.EVENT_READ)
        while not stop.is_set():
            for key, _ in selector.select(0.05):
                if key.fileobj is listener:
                    with contextlib.suppress(BlockingIOError):
                        while True:
                            conn = listener.accept()[0]
                            conn.setblocking(False)
                            selector.register(conn, selectors.EVENT_READ)
                    continue
                conn = key.fileobj
                try:
                    data = conn.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    selector.unregister(conn)
                    conn.close()
        selector.close()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        server.join()
        listener.close()


def _saturate(ports: list[int], target: int, clients: int, hold: float, seconds: float, retry: float | None) -> dict:
    """``clients`` loops of CONNECT, hold, close, spread over ``ports``, for ``seconds``.
    ``retry``: on a refusal, try again after that long (queueing off); None: the proxy queues.
    Returns completed connections, each one's wait (first attempt to 200), and the
    (close, admission) times for hand-off latencies."""
    deadline = time.monotonic() + seconds
    waits: list[float] = []
    admitted_at: list[float] = []
    closed_at: list[float] = []
    attempts = [0]
    lock = threading.Lock()
    request = f"CONNECT 127.0.0.1:{target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()

    def loop(port: int) -> None:
        while time.monotonic() < deadline:
            started = time.monotonic()
            while True:
                with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
                    sock.sendall(request)
                    head = sock.recv(4096)
                    with lock:
                        attempts[0] += 1
                    if head.startswith(b"HTTP/1.1 200"):
                        now = time.monotonic()
                        time.sleep(hold)
                        closing = time.monotonic()
                        sock.close()
                        with lock:
                            waits.append(now - started)
                            admitted_at.append(now)
                            closed_at.append(closing)
                        break
                if retry is None or time.monotonic() >= deadline:
                    break
                time.sleep(retry)

    threads = [threading.Thread(target=loop, args=(ports[i % len(ports)],)) for i in range(clients)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    return {
        "completed": len(waits),
        "rate": len(waits) / elapsed,
        "attempts": attempts[0],
        "waits": waits,
        "admitted_at": sorted(admitted_at),
        "closed_at": sorted(closed_at),
    }


def _handoffs(run: dict, cap: int) -> list[float]:
    """Close of the k-th slot to the admission it made way for (the (k + cap)-th), while
    waiters are queued: the whole hand-off, as clients see it."""
    admitted, closed = run["admitted_at"], run["closed_at"]
    return [a - c for c, a in zip(closed, admitted[cap:], strict=False) if a >= c]


def _redis_calls(port: int) -> tuple[int, int]:
    """(script calls and other commands sent by clients, commands run inside scripts too)."""
    out = subprocess.run(["redis-cli", "-p", str(port), "INFO", "commandstats"], capture_output=True, text=True).stdout
    calls = {name: int(n) for name, n in re.findall(r"cmdstat_([a-z|_]+):calls=(\d+)", out)}
    sent = sum(n for name, n in calls.items() if name in ("evalsha", "eval", "ping", "subscribe", "script|load"))
    return sent, sum(calls.values())


def _handoff_probe(ports: list[int], target: int, rounds: int = 100) -> list[float]:
    """Cap 1: a holder on one worker closes; a waiter on the next worker is admitted. Only
    two clients, so the client side adds little: the close-to-200 time of each hand-off."""
    request = f"CONNECT 127.0.0.1:{target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    latencies = []
    holder = socket.create_connection(("127.0.0.1", ports[0]), timeout=30)
    holder.sendall(request)
    assert holder.recv(4096).startswith(b"HTTP/1.1 200")
    for i in range(rounds):
        waiter = socket.create_connection(("127.0.0.1", ports[(i + 1) % len(ports)]), timeout=30)
        waiter.sendall(request)
        time.sleep(0.02)  # queued by now
        closed = time.monotonic()
        holder.close()
        head = waiter.recv(4096)
        latencies.append(time.monotonic() - closed)
        assert head.startswith(b"HTTP/1.1 200"), head
        holder = waiter
    holder.close()
    return latencies


def figure_queue(args: argparse.Namespace, workdir: Path) -> list[dict]:
    """A saturated host (cap 10, 200 clients each holding 50 ms): queueing on, against
    queueing off with clients retrying every 50 ms; local and a 3-worker fleet on Redis."""
    cap, clients, hold = 10, 200, 0.05
    seconds = max(5.0, args.duration)
    rows = []
    with closing_upstream() as target:
        for mode in ("local", "fleet"):
            for queueing in (True, False):
                with contextlib.ExitStack() as stack:
                    redis_port = None
                    extra: tuple[str, ...] = ()
                    if mode == "fleet":
                        url = stack.enter_context(redis_server())
                        redis_port = int(url.rsplit(":", 1)[1].split("/")[0])
                        extra = ("--redis-url", url, "--lease-ttl", "15")
                    queue = ("--queue-timeout", "60") if queueing else ()
                    workers = [
                        stack.enter_context(dprl("--max-connections", str(cap), *queue, *extra))
                        for _ in range(1 if mode == "local" else 3)
                    ]
                    before = _redis_calls(redis_port) if redis_port else (0, 0)
                    run = _saturate(
                        [w.port for w in workers], target, clients, hold, seconds, None if queueing else hold
                    )
                    after = _redis_calls(redis_port) if redis_port else (0, 0)
                    calls, executed = after[0] - before[0], after[1] - before[1]
                handoffs = _handoffs(run, cap) if queueing else []
                name = f"saturated host, {mode}, queueing {'on' if queueing else 'off (retry every 50 ms)'}"
                p50, p99 = percentile(run["waits"], 0.5) * 1000, percentile(run["waits"], 0.99) * 1000
                line = (
                    f"{name}: {run['rate']:.1f} connections/s, wait p50 {p50:.0f} ms p99 {p99:.0f} ms, "
                    f"{run['attempts'] / max(run['completed'], 1):.2f} attempts per connection"
                )
                if redis_port:
                    done = max(run["completed"], 1)
                    line += (
                        f", Redis per admitted connection: {calls / done:.1f} calls, "
                        f"{executed / done:.1f} commands run (inside scripts included)"
                    )
                if handoffs:
                    line += (
                        f"; hand-off (a close to the next waiter's 200) p50 {percentile(handoffs, 0.5) * 1000:.1f} ms "
                        f"p99 {percentile(handoffs, 0.99) * 1000:.1f} ms"
                    )
                rows.append(
                    {
                        "figure": name,
                        "direct": None,
                        "custom": True,
                        "rate": run["rate"],
                        "wait_p99": percentile(run["waits"], 0.99),
                        "redis_calls_per_connection": calls / max(run["completed"], 1) if redis_port else None,
                        "handoff_p50": percentile(handoffs, 0.5) if handoffs else None,
                        "handoff_p99": percentile(handoffs, 0.99) if handoffs else None,
                        "lines": [line],
                    }
                )
            with contextlib.ExitStack() as stack:
                extra: tuple[str, ...] = ()
                if mode == "fleet":
                    extra = ("--redis-url", stack.enter_context(redis_server()), "--lease-ttl", "15")
                workers = [
                    stack.enter_context(dprl("--max-connections", "1", "--queue-timeout", "60", *extra))
                    for _ in range(1 if mode == "local" else 3)
                ]
                latencies = _handoff_probe([w.port for w in workers], target)
            line = (
                f"hand-off, {mode}{' (waiter on another worker)' if mode == 'fleet' else ''}, 2 clients: "
                f"p50 {percentile(latencies, 0.5) * 1000:.2f} ms, p99 {percentile(latencies, 0.99) * 1000:.2f} ms "
                "(a close to the waiter's 200)"
            )
            rows.append({"figure": f"hand-off {mode}", "direct": None, "custom": True, "lines": [line]})
    return rows
