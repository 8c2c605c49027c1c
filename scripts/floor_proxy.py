"""The least a gevent StreamServer CONNECT proxy can do, for `scripts/bench --figures floor`.

One greenlet per client reads the head, dials, answers 200 and pipes (with dprl's own
dial and pipe, and its socket options: TCP_NODELAY inherited from the listener,
TCP_DEFER_ACCEPT), and nothing else: no parsing beyond the target (an IPv4 literal), no
resolver, no limiter, no stats, no timeouts but the dial's.
Whatever makes dprl's dial or pipe cheaper makes this floor cheaper too, so dprl's own
work is what the comparison shows.
Its CPU per tunnel is the floor of the shape dprl is built on (StreamServer, gevent
sockets, a greenlet per client). Usage: floor_proxy.py PORT
"""

from __future__ import annotations

import gc
import socket
import sys

import gevent
from gevent import socket as gsocket
from gevent.server import StreamServer

from dprl.net.dial import dial
from dprl.net.pipe import pipe


def handle(client: gsocket.socket, _address: tuple) -> None:
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = client.recv(65536)
        if not data:
            return
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    host, port = head.split(b" ", 2)[1].rsplit(b":", 1)
    upstream = dial(host.decode(), int(port), 10.0, raw=True)  # an IPv4 literal: no resolver
    client.sendall(b"HTTP/1.1 200 Connection Established\r\n\r\n")
    try:
        pipe(client, upstream, rest)
    finally:
        upstream.close()


if __name__ == "__main__":
    gevent.config.track_greenlet_tree = False  # as python -m dprl: no spawn tree per client
    gc.set_threshold(10_000, *gc.get_threshold()[1:])  # as python -m dprl (dprl/cli.py: YOUNG_OBJECTS)
    listener = gsocket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by accepted sockets
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 1)  # handed over with the request
    listener.bind(("127.0.0.1", int(sys.argv[1])))
    listener.listen(4096)
    StreamServer(listener, handle).serve_forever()
