"""Opaque byte pipe between two sockets (CONNECT tunnels, upgraded connections).

Two copy loops, one per direction. End of stream on one side is passed on as a
half-close (shutdown of writes on the other), so request/response protocols that signal
"done sending" with EOF keep working; the pipe ends when both directions have ended. A
reset or write error ends both directions at once.
"""

from __future__ import annotations

import contextlib
import socket
import time

import gevent

COPY_SIZE = 65536


def pipe(
    client: socket.socket,
    upstream: socket.socket,
    to_upstream: bytes = b"",
    to_client: bytes = b"",
    idle_timeout: float = 0.0,
) -> tuple[int, int]:
    """Copy until both directions end; returns (bytes client->upstream, upstream->client).

    ``to_upstream``/``to_client`` are bytes already read past a message head, sent first.
    ``idle_timeout`` (0 = none) ends the tunnel once no byte moved either way for so long;
    one quiet direction alone is normal and does not count.
    """
    activity = [time.monotonic()]
    timeout = idle_timeout or None
    client.settimeout(timeout)
    upstream.settimeout(timeout)
    down = gevent.spawn(_copy, upstream, client, to_client, activity, idle_timeout)
    try:
        up = _copy(client, upstream, to_upstream, activity, idle_timeout)
        return up, down.get()
    finally:
        down.kill()


def _copy(src: socket.socket, dst: socket.socket, pending: bytes, activity: list[float], idle: float) -> int:
    total = 0
    try:
        if pending:
            dst.sendall(pending)
            total += len(pending)
        while True:
            try:
                data = src.recv(COPY_SIZE)
            except TimeoutError:
                if time.monotonic() - activity[0] < idle:
                    continue  # the other direction is busy: the tunnel is not idle
                raise
            if not data:
                break
            activity[0] = time.monotonic()
            dst.sendall(data)
            total += len(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        # Reset or broken pipe: wake the other direction too, whatever it is blocked on.
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
    return total
