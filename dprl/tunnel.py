"""Opaque byte pipe between two sockets (CONNECT tunnels, upgraded connections).

Two copy loops, one per direction. End of stream on one side is passed on as a
half-close (shutdown of writes on the other), so request/response protocols that signal
"done sending" with EOF keep working; the pipe ends when both directions have ended. A
reset or write error ends both directions at once.
"""

from __future__ import annotations

import contextlib
import socket

import gevent

COPY_SIZE = 65536


def pipe(
    client: socket.socket,
    upstream: socket.socket,
    to_upstream: bytes = b"",
    to_client: bytes = b"",
) -> tuple[int, int]:
    """Copy until both directions end; returns (bytes client->upstream, upstream->client).

    ``to_upstream``/``to_client`` are bytes already read past a message head, sent first.
    """
    down = gevent.spawn(_copy, upstream, client, to_client)
    try:
        up = _copy(client, upstream, to_upstream)
        return up, down.get()
    finally:
        down.kill()


def _copy(src: socket.socket, dst: socket.socket, pending: bytes) -> int:
    total = 0
    try:
        if pending:
            dst.sendall(pending)
            total += len(pending)
        while True:
            data = src.recv(COPY_SIZE)
            if not data:
                break
            dst.sendall(data)
            total += len(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        # Reset or broken pipe: wake the other direction too, whatever it is blocked on.
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
    return total
