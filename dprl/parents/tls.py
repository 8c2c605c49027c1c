"""TLS to an ``https://`` parent, and a bridge that lets the pipe carry a tunnel through it.

The parent's certificate is verified against the system's CAs and its host name, as any
HTTPS client does (--parent-ca-file adds CAs: a corporate one, or a test's). The pipe
moves bytes between file descriptors, which TLS records are not: a tunnel through an
HTTPS parent goes through a socket pair, with two greenlets carrying the bytes between
its far end and the TLS connection.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket as stdlib_socket
import ssl
import time

import gevent
from gevent import socket
from gevent import ssl as gevent_ssl

from ..net.endpoint import Endpoint

CHUNK = 65536


class TlsFailed(Exception):
    """The TLS handshake with a parent failed: it counts against the parent."""

    reason = "tls"


@functools.lru_cache(maxsize=4)
def client_context(ca_file: str = "") -> gevent_ssl.SSLContext:
    """The system's CAs, and those of ``ca_file`` (made once per file). gevent's own context
    class: its sockets wait in the hub (the stdlib's would block it, in a thread of its own)."""
    context = gevent_ssl.SSLContext(gevent_ssl.PROTOCOL_TLS_CLIENT)  # verifies the certificate and the name
    context.load_default_certs()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


def wrap_tls(endpoint: Endpoint, server_name: str, deadline: float, ca_file: str = "") -> Endpoint:
    """TLS over the parent's connection (verified), within ``deadline``."""
    sock = endpoint.sock
    sock.settimeout(max(0.001, deadline - time.monotonic()))
    try:
        wrapped = client_context(ca_file).wrap_socket(sock, server_hostname=server_name.strip("[]"))
    except (ssl.SSLError, OSError) as exc:
        raise TlsFailed(f"TLS handshake failed: {exc}") from None
    wrapped.settimeout(None)
    tls = Endpoint(wrapped, "upstream")
    tls.bytes_out, tls.bytes_in = endpoint.bytes_out, endpoint.bytes_in
    return tls


def bridged(endpoint: Endpoint) -> Endpoint:
    """A plain socket for the pipe, whose bytes go to and come from ``endpoint``'s TLS
    connection. Closing it ends the bridge and the TLS connection."""
    near, far = socket.socketpair(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    tls = endpoint.sock
    pending = endpoint.take_buffered()

    def outward() -> None:  # what the client sends, to the parent
        with contextlib.suppress(OSError):
            while data := far.recv(CHUNK):
                tls.sendall(data)
        # the client is done: a FIN to the parent, through a second descriptor of the same
        # connection (the TLS socket's own shutdown() would drop its TLS state under inward())
        with contextlib.suppress(OSError), stdlib_socket.socket(fileno=os.dup(tls.fileno())) as same:
            same.shutdown(stdlib_socket.SHUT_WR)

    def inward() -> None:  # what the parent sends, to the client
        with contextlib.suppress(OSError):
            if pending:
                far.sendall(pending)
            while data := tls.recv(CHUNK):
                far.sendall(data)
        with contextlib.suppress(OSError):
            far.shutdown(stdlib_socket.SHUT_WR)

    carriers = [gevent.spawn(outward), gevent.spawn(inward)]

    def done(_: object) -> None:
        if all(c.dead for c in carriers):
            far.close()

    for carrier in carriers:
        carrier.link(done)
    bridge = Endpoint(near, "upstream")
    bridge.bytes_out, bridge.bytes_in = endpoint.bytes_out, endpoint.bytes_in
    return bridge
