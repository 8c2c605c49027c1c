"""Tunnels: a CONNECT, or a connection upgraded by a 101, piped as opaque bytes.

A tunnel is what makes a connection pair opaque: the ``200 Connection Established``
(sent only once the upstream is connected), the bytes either side sent past its last
message head (they go first), and the pipe until both directions end.
"""

from __future__ import annotations

import logging

from ..net.endpoint import Endpoint
from ..net.pipe import PipeResult, pipe


def tunnel(
    client: Endpoint, upstream: Endpoint, announce: bytes, idle_timeout: float, log: logging.Logger, label: str
) -> PipeResult:
    """Pipe until both directions end.

    ``announce`` goes to the client first: the ``200 Connection Established`` of a
    CONNECT whose upstream is dialled (an upgrade's 101 was sent by its exchange).
    ``label`` (the host key) names the tunnel in messages.
    """
    if announce:
        client.send(announce)
    result = pipe(client.sock, upstream.sock, client.take_buffered(), upstream.take_buffered(), idle_timeout)
    upstream.bytes_out += result.a_to_b
    upstream.bytes_in += result.b_to_a
    if result.failure is not None:
        log.error("tunnel to %s ended by an internal error", label, exc_info=result.failure)
    return result
