"""One client connection: read request heads, route each one, answer failures.

Code reads top to bottom like blocking code; gevent makes it cooperative. The session
owns at most one upstream connection (and so at most one slot) at a time, and closes it
in ``finally``: whatever ends the session, the slot is released there or earlier.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from http import HTTPStatus
from typing import TYPE_CHECKING

import gevent

from .access import REALM
from .endpoint import Endpoint
from .errors import AccessDenied, ClientProtocolError, ConnectionLost, LimiterUnavailable, LimitExceeded, ProxyError
from .forward import ForwardTarget, relay_request, wants_keep_alive
from .hosts import host_key, split_authority
from .http_head import RequestHead, check_host_field, parse_request_head, request_framing
from .tunnel import pipe
from .upstream import UpstreamConnection

if TYPE_CHECKING:
    from .server import ProxyServer


class ClientSession:
    __slots__ = (
        "address",
        "client",
        "greenlet",
        "idle",
        "log",
        "request_has_body",
        "response_started",
        "server",
        "upstream",
    )

    def __init__(self, server: ProxyServer, sock: socket.socket, address: tuple) -> None:
        self.server = server
        self.client = Endpoint(sock, "client")
        self.address = f"[{address[0]}]:{address[1]}" if ":" in address[0] else f"{address[0]}:{address[1]}"
        self.upstream: UpstreamConnection | None = None
        self.idle = True  # waiting for a request head: safe to close at shutdown
        self.greenlet = gevent.getcurrent()
        self.response_started = False
        self.request_has_body = False
        self.log: logging.Logger = server.log

    def run(self) -> None:
        settings = self.server.settings
        first = True
        try:
            while not self.server.stopping:
                self.idle = True
                head = self.client.read_head(
                    settings.max_request_line,
                    settings.max_header_size,
                    first_byte_timeout=settings.header_timeout if first else settings.idle_timeout,
                    head_timeout=settings.header_timeout,
                )
                self.idle = False
                if head is None:
                    return
                first = False
                self.response_started = False
                self.request_has_body = False
                # Body reads and response writes must not stall for ever on a dead client.
                self.client.sock.settimeout(settings.idle_timeout or None)
                request = parse_request_head(head, settings.max_header_count)
                check_host_field(request)
                if not self.authorized(request):
                    if self.keep_after_error(request):
                        continue
                    return
                if request.method == "CONNECT":
                    self.close_upstream()
                    self.serve_connect(request)
                    return
                if not self.serve_forward(request):
                    return
        except ProxyError as exc:
            self.fail(exc.status, str(exc), close=True)
        except ConnectionLost as exc:
            self.log.debug("client %s: %s", self.address, exc)
        except Exception:
            # A bug must cost one connection, never the proxy; the slot goes back below.
            self.log.exception("client %s: internal error", self.address)
            if not self.response_started:
                self.send_error(500, "dprl: internal error", close=True)
        finally:
            self.close_upstream()

    # plain HTTP ------------------------------------------------------------------------
    def serve_forward(self, request: RequestHead) -> bool:
        target = ForwardTarget(request)
        try:
            return relay_request(self, request, target)
        except (LimitExceeded, LimiterUnavailable) as exc:
            keep = self.keep_after_error(request)
            self.refuse(exc, close=not keep)
            return keep
        except ProxyError as exc:
            self.close_upstream()
            if self.response_started or isinstance(exc, ClientProtocolError):
                raise
            keep = self.keep_after_error(request)
            self.fail(exc.status, str(exc), close=not keep)
            return keep

    def authorized(self, request: RequestHead) -> bool:
        """Proxy authentication, when configured; answers 407 itself when it fails."""
        access = self.server.access
        if not access.auth_required or access.authorized(request.raw_values("proxy-authorization")):
            return True
        if request.raw_values("proxy-authorization"):
            self.server.refusals.record(f"from {self.address.rsplit(':', 1)[0]}: bad proxy credentials")
        self.request_has_body = request_framing(request).has_body
        self.send_error(
            407,
            "dprl: proxy authentication required",
            close=not self.keep_after_error(request),
            extra=f'Proxy-Authenticate: Basic realm="{REALM}"\r\n',
        )
        return False

    def keep_after_error(self, request: RequestHead) -> bool:
        """After a refusal the connection is reusable only if no request body is left unread."""
        return (
            not self.request_has_body
            and request.version == "HTTP/1.1"
            and wants_keep_alive(request)
            and not self.server.stopping
        )

    def upstream_for(self, target: ForwardTarget) -> tuple[UpstreamConnection, bool]:
        """The connection to use for ``target``, and whether it is a reused one."""
        up = self.upstream
        if up is not None:
            if up.host == target.host and up.port == target.port and not up.is_stale():
                return up, True
            self.close_upstream()
        self.upstream = self.open_upstream(target.host, target.port, target.key)
        return self.upstream, False

    # CONNECT ---------------------------------------------------------------------------
    def serve_connect(self, request: RequestHead) -> None:
        try:
            host, port = split_authority(request.target, None)
        except ValueError as exc:
            raise ClientProtocolError(f"bad CONNECT target: {exc}") from None
        if request_framing(request).has_body:
            raise ClientProtocolError("CONNECT request with a body")
        if not self.server.access.port_allowed(port):
            raise AccessDenied(f"CONNECT to port {port} is not allowed by --connect-ports")
        try:
            self.upstream = self.open_upstream(host, port, host_key(host, port))
        except (LimitExceeded, LimiterUnavailable) as exc:
            self.refuse(exc, close=True)
            return
        self.client.send(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        self.response_started = True
        self.pipe_to_upstream()

    def pipe_to_upstream(self) -> None:
        """Relay raw bytes both ways until both end (CONNECT, or after a 101 upgrade).

        Bytes already read past a message head on either side go first.
        """
        client, up = self.client, self.upstream.endpoint  # type: ignore[union-attr]
        to_upstream, to_client = bytes(client.buf), bytes(up.buf)
        client.buf.clear()
        up.buf.clear()
        sent, received = pipe(client.sock, up.sock, to_upstream, to_client, self.server.settings.tunnel_idle_timeout)
        up.bytes_out += sent
        up.bytes_in += received

    # upstream --------------------------------------------------------------------------
    def open_upstream(self, host: str, port: int, key: str) -> UpstreamConnection:
        server = self.server
        return UpstreamConnection.open(
            server.limiter,
            host,
            port,
            key,
            server.settings.connect_timeout,
            self.address,
            self.log,
            server.resolve,
            server.access.destination_allowed,
        )

    def close_upstream(self) -> None:
        up, self.upstream = self.upstream, None
        if up is not None:
            up.close()

    # answers ---------------------------------------------------------------------------
    def refuse(self, exc: LimitExceeded | LimiterUnavailable, close: bool) -> None:
        if isinstance(exc, LimitExceeded):
            self.server.refusals.record(f"to {exc.host}: limit {exc.limit} reached")
            message = f"dprl: connection limit reached for {exc.host} ({exc.limit} concurrent connections)"
        else:
            self.server.refusals.record("while the limiter is unavailable")
            message = f"dprl: connection limiter unavailable: {exc}"
        self.send_error(500, message, close)

    def fail(self, status: int, message: str, close: bool) -> None:
        # Counted per interval at warning level; the details of each only at debug, so a
        # flood of bad requests cannot flood the log.
        self.server.refusals.record(f"with status {status}")
        self.log.debug("client %s: %d %s", self.address, status, message)
        if not self.response_started:
            self.send_error(status, message, close)

    def send_error(self, status: int, message: str, close: bool, extra: str = "") -> None:
        """A short text/plain answer; ``extra`` holds additional header lines, CRLF-ended."""
        body = f"{message}\n".encode()
        head = (
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\n{extra}" + ("Connection: close\r\n\r\n" if close else "\r\n")
        ).encode()
        with contextlib.suppress(ConnectionLost):
            self.client.send(head + body)
        if close and self.request_has_body:
            self.client.linger()  # the unread body must not turn our answer into a reset
