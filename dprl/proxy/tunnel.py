"""Tunnels: a CONNECT, or a connection upgraded by a 101, piped as opaque bytes.

The tunnel owns what makes a connection pair a tunnel: the ``200 Connection
Established`` (sent only once the upstream is connected), the bytes either side sent
past its last message head (they go first), and the pipe until both directions end.
"""

from __future__ import annotations

import logging

from ..net.endpoint import Endpoint
from ..net.pipe import PipeResult, pipe


class Tunnel:
    def __init__(self, client: Endpoint, upstream: Endpoint, idle_timeout: float, log: logging.Logger, label: str):
        self.client = client
        self.upstream = upstream
        self.idle_timeout = idle_timeout
        self.log = log
        self.label = label  # the host key, for messages

    def run(self, announce: bytes = b"") -> PipeResult:
        """Pipe until both directions end.

        ``announce`` goes to the client first: the ``200 Connection Established`` of a
        CONNECT whose upstream is dialled (an upgrade's 101 was sent by its exchange).
        """
        client, up = self.client, self.upstream
        if announce:
            client.send(announce)
        to_upstream, to_client = bytes(client.buf), bytes(up.buf)
        client.buf.clear()
        up.buf.clear()
        result = pipe(client.sock, up.sock, to_upstream, to_client, self.idle_timeout)
        up.bytes_out += result.a_to_b
        up.bytes_in += result.b_to_a
        if result.failure is not None:
            self.log.error("tunnel to %s ended by an internal error", self.label, exc_info=result.failure)
        return result
