"""One client connection: read a request head, authorise, dispatch, decide keep-alive.

Code reads top to bottom like blocking code; gevent makes it cooperative. The session
owns the client endpoint and at most one upstream connection (and so at most one slot)
at a time, and closes it in ``finally``: whatever ends the session, the slot is released
there or earlier. Plain requests go to a ``ForwardExchange``, CONNECT and 101 upgrades to
``tunnel``; both report back, neither touches the session.

The common CONNECT (a first request, authorised, under its host's cap) is one straight
path through ``_read_request``, ``_handle`` and ``_serve_connect``: the rare cases
(waiting, refusals, errors, keep-alive) branch off it.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from dataclasses import dataclass
from typing import NamedTuple

import gevent
import gevent.event

from ..config import Config
from ..errors import (
    AccessDenied,
    ConnectionLost,
    LimiterUnavailable,
    LimitExceeded,
    ProxyError,
    QueueTimeout,
    RateExceeded,
    Reason,
    TenantShareExceeded,
)
from ..http import rewrite
from ..http.errors import ProtocolError
from ..http.framing import BodyFraming, request_framing
from ..http.head import RequestHead, check_host_field, head_finder, parse_connect_head, parse_request_head
from ..http.target import Target, connect_target, forward_target
from ..limits.hosts import host_key
from ..limits.limiter import Limiter
from ..net.endpoint import Endpoint, peer_text
from ..stats import ProxyStats
from .access import REALM, AccessPolicy
from .forward import ForwardExchange
from .refusals import RefusalLog
from .tenancy import BY_HEADER, TenantOf
from .tunnel import tunnel
from .upstream import Dialer, UpstreamConnection


class ServerState:
    """What sessions read of their server while it runs."""

    __slots__ = ("stopping",)

    def __init__(self) -> None:
        self.stopping = False  # set once: sessions finish what they do and take no new request


class Upstream(NamedTuple):
    connection: UpstreamConnection
    reused: bool  # kept alive from an earlier request of this client


@dataclass(frozen=True, slots=True)
class SessionContext:
    """What every session of a server shares."""

    settings: Config
    access: AccessPolicy
    refusals: RefusalLog
    limiter: Limiter
    dialer: Dialer
    log: logging.Logger
    state: ServerState
    stats: ProxyStats
    tenant_of: TenantOf


class ClientSession:
    __slots__ = (
        "_authorization",
        "_find_head",
        "_peer_address",
        "_response_timer",
        "client",
        "context",
        "greenlet",
        "idle",
        "key",
        "peer",
        "tenant",
        "upstream",
    )

    def __init__(self, context: SessionContext, sock: socket.socket, address: tuple) -> None:
        settings = context.settings
        self.context = context
        # body reads, answers and waits between requests: a dead client cannot stall us
        self.client = Endpoint(sock, "client", settings.idle_timeout)
        self._find_head = head_finder(settings.max_request_line, settings.max_header_size, requests=True)
        self._response_timer: gevent.Timeout | None = None  # made at the first plain request
        self.peer = address[0]  # the client's IP, as the policy and the refusal log see it
        self._peer_address = address
        self.upstream: UpstreamConnection | None = None
        self.key: str | None = None  # the host key of the request being served, once known
        self.tenant = ""  # the tenant of the request being served (tenants configured), once known
        self._authorization = ""  # its Proxy-Authorization, for a parent (--parent-auth passthrough)
        self.idle = True  # waiting for a request head: safe to close at shutdown
        self.greenlet = gevent.getcurrent()

    @property
    def address(self) -> str:
        """The client's address as logs show it (made only when a log line needs it)."""
        return peer_text(self._peer_address)

    def run(self) -> None:
        first = True
        try:
            while not self.context.state.stopping:
                self.idle = True
                request = self._read_request(first)
                self.idle = False
                if request is None:
                    return
                first = False
                if not self._handle(request):
                    return
        except ConnectionLost as exc:
            self.context.log.debug("client %s: %s", self.address, exc)
        finally:
            self.close_upstream()

    def _read_request(self, first: bool) -> RequestHead | None:
        """The next request head, or None when the client leaves (or idles) between requests.

        A client that started a head must finish it within --header-timeout (408).
        """
        settings, client = self.context.settings, self.client
        if not client.buf:
            # a first request within --header-timeout; the next ones within --idle-timeout
            # (the socket's own timeout)
            try:
                arrived = client.fill_ready() if first else None
                if arrived is None:
                    arrived = client.fill(time.monotonic() + settings.header_timeout if first else None)
                if not arrived:
                    return None
            except ConnectionLost:
                return None  # silent or gone before its first byte: an idle close
        try:
            head = client.read_until(self._find_head, time.monotonic() + settings.header_timeout)
            if head.startswith(b"CONNECT "):
                return parse_connect_head(head, settings.max_header_count)  # Host checked too
            return parse_request_head(head, settings.max_header_count)
        except ProtocolError as exc:
            self._answer(exc.status, str(exc), keep=False)
        except ConnectionLost as exc:
            if not exc.timed_out:
                raise
            self._answer(408, "timed out reading the request head", keep=False)
        return None

    def _handle(self, request: RequestHead) -> bool:
        """Serve one request; True if the client connection can carry another."""
        mark = self.client.bytes_out
        has_body = False
        self.key = None
        self.tenant = ""
        try:
            if request.method != "CONNECT":  # a CONNECT's Host was checked as it was parsed
                check_host_field(request)
            framing = request_framing(request)
            has_body = framing.has_body
            if not self._authorised(request):
                extra = [("Proxy-Authenticate", f'Basic realm="{REALM}"')]
                keep = self._keep(request, has_body)  # the client retries on it with credentials
                return self._answer(407, "proxy authentication required", keep, extra, has_body, Reason.AUTH)
            if self.context.dialer.passthrough:  # the parent sees the client's credentials
                values = request.raw_values("proxy-authorization")
                self._authorization = values[0] if values else ""
            tenants = self.context.limiter.tenants
            if tenants.enabled:
                self.tenant = tenants.tenant(self.context.tenant_of(request, self.peer))
            if request.method == "CONNECT":
                if has_body:
                    raise ProtocolError(400, "CONNECT request with a body")
                self._serve_connect(request)
                return False
            return self._forward(request, framing)
        except (LimitExceeded, LimiterUnavailable) as exc:
            return self._refuse(exc, self._keep_after_refusal(request, has_body), has_body)
        except (ProtocolError, ProxyError) as exc:
            self.close_upstream()
            if self.client.bytes_out != mark:  # part of an answer is out: only a close is left
                return False
            keep = self._keep_after_refusal(request, has_body) and not isinstance(exc, ProtocolError)
            proxy_error = isinstance(exc, ProxyError)
            return self._answer(
                exc.status,
                str(exc),
                keep,
                list(exc.fields) if proxy_error and exc.fields else None,  # type: ignore[union-attr]
                unread_body=has_body,
                reason=exc.reason if proxy_error else None,  # type: ignore[union-attr]
            )
        except ConnectionLost:
            raise
        except Exception:
            # A bug must cost one connection, never the proxy; the slot goes back in run().
            self.context.log.exception("client %s: internal error", self.address)
            if self.client.bytes_out == mark:
                self.client.out.clear()
                self._answer(500, "internal error", keep=False, unread_body=has_body, reason=Reason.INTERNAL)
            return False

    def _keep(self, request: RequestHead, has_body: bool) -> bool:
        """After an answer of ours the connection is reusable only if no request body is left unread."""
        return (
            not has_body
            and request.version == "HTTP/1.1"
            and rewrite.wants_keep_alive(request)
            and not self.context.state.stopping
        )

    def _keep_after_refusal(self, request: RequestHead, has_body: bool) -> bool:
        """As ``_keep``, but never after a refused CONNECT: what the client pipelined behind it
        (a TLS hello) must not be parsed as a request."""
        return request.method != "CONNECT" and self._keep(request, has_body)

    def _authorised(self, request: RequestHead) -> bool:
        access = self.context.access
        values = request.raw_values("proxy-authorization")
        if not access.auth_required or access.authorized(values):
            return True
        if values:
            self.context.refusals.record(f"from {self.peer}: bad proxy credentials")
        return False

    # plain HTTP ----------------------------------------------------------------------------
    def _forward(self, request: RequestHead, framing: BodyFraming) -> bool:
        upgrade = rewrite.is_upgrade(request)
        target = forward_target(request, upgrade)
        key = self.key = host_key(target.host, target.port)
        settings = self.context.settings
        if settings.tenant_by == BY_HEADER:  # it names the tenant to dprl alone
            rewrite.drop_field(request, settings.tenant_header.lower())
        if self._response_timer is None and settings.upstream_timeout:
            self._response_timer = gevent.Timeout(settings.upstream_timeout)
        for _ in range(2):
            upstream, reused = self._upstream_for(target, key)
            if reused:  # a request on a kept-alive connection takes a token of its own
                self.context.limiter.pace(key, tenant=self.tenant)
            via = upstream.via
            exchange = ForwardExchange(
                self.client,
                upstream.endpoint,
                request,
                target,
                framing,
                reused=reused,
                response_timer=self._response_timer,
                log=self.context.log,
                label=key,
                parent_authorization=via.authorization if via is not None and via.absolute_form else None,
            )
            outcome = exchange.run()
            upstream.status = exchange.status
            upstream.requests += 1
            if not outcome.retry:
                break
            self.close_upstream()  # it closed unanswered: a safe request goes once more, on a new one
        if outcome.upgrade:
            self._tunnel(upstream, b"")
            return False
        if outcome.keep_upstream:
            upstream.last_used = time.monotonic()
        else:
            self.close_upstream()
        if outcome.linger:
            self.client.linger()
        return outcome.keep_client

    def _upstream_for(self, target: Target, key: str) -> Upstream:
        """Make ``self.upstream`` a connection to ``target`` (the one kept alive, if it serves it)."""
        up = self.upstream
        if up is not None:
            if up.serves(target):
                return Upstream(up, reused=True)
            self.close_upstream()
        up = self.upstream = self._open_upstream(target, key, authorization=self._authorization)
        return Upstream(up, reused=False)

    # CONNECT -------------------------------------------------------------------------------
    def _serve_connect(self, request: RequestHead) -> None:
        target = connect_target(request)
        if not self.context.access.port_allowed(target.port):
            raise AccessDenied(f"CONNECT to port {target.port} is not allowed by --connect-ports")
        key = self.key = host_key(target.host, target.port)
        if self.upstream is not None:
            self.close_upstream()
        upstream = self.upstream = self._open_upstream(target, key, True, self._authorization)
        upstream.status, upstream.requests = 200, 1
        self._tunnel(upstream, rewrite.CONNECTION_ESTABLISHED)

    def _tunnel(self, upstream: UpstreamConnection, announce: bytes) -> None:
        context = self.context
        result = tunnel(
            self.client, upstream.endpoint, announce, context.settings.tunnel_idle_timeout, context.log, upstream.key
        )
        context.stats.tunnelled(result.a_to_b, result.b_to_a)

    # upstream ------------------------------------------------------------------------------
    def _open_upstream(
        self, target: Target, key: str, tunnel: bool = False, authorization: str = ""
    ) -> UpstreamConnection:
        context = self.context
        watch = self.client.watch_gone if context.limiter.waiting.policy.timeout else None
        upstream = UpstreamConnection.open(
            *(context.limiter, context.dialer, target, key, self._peer_address, context.log, watch, tunnel),
            tenant=self.tenant,
            authorization=authorization,
        )
        if context.settings.access_log:
            upstream.access_level = logging.INFO
        context.stats.opened(key, upstream.connect_seconds)
        return upstream

    def close_upstream(self) -> None:
        up, self.upstream = self.upstream, None
        if up is not None:
            up.close()

    # answers -------------------------------------------------------------------------------
    def _refuse(self, exc: LimitExceeded | LimiterUnavailable, keep: bool, unread_body: bool) -> bool:
        """At the cap: --reject-status, with Retry-After when --retry-after asks for it."""
        context, settings = self.context, self.context.settings
        if self.tenant:
            reason = exc.reason if isinstance(exc, LimitExceeded) else Reason.LIMITER_UNAVAILABLE
            context.stats.tenant_refused(self.tenant, reason)
        if isinstance(exc, RateExceeded):
            context.refusals.record(f"to {exc.key}: rate {exc.rate} reached")
            context.stats.refused(exc.key, exc.reason)
            detail = f"; {exc.detail}" if exc.detail else ""
            message = f"request rate reached for {exc.key} ({exc.rate}): next token in {exc.wait:.2f}s{detail}"
            token = [("Retry-After", str(exc.retry_after))]  # the token's time, whatever --retry-after says
            return self._send_answer(settings.reject_status, message, keep, token, unread_body)
        if isinstance(exc, LimitExceeded):
            detail = f": {exc.detail}" if isinstance(exc, (QueueTimeout, TenantShareExceeded)) else ""
            if isinstance(exc, TenantShareExceeded):  # the log line without the counts: one per tenant
                context.refusals.record(f"to {exc.key}: tenant {exc.tenant}'s share reached")
            else:
                context.refusals.record(f"to {exc.key}: limit {exc.limit} reached{detail.split(' (')[0]}")
            context.stats.refused(exc.key, exc.reason)
            shared = f" shared by the hosts of {exc.shared}" if exc.shared else ""
            message = f"connection limit reached for {exc.key} ({exc.limit} concurrent connections{shared}){detail}"
            extra = [("Retry-After", str(settings.retry_after))] if settings.retry_after else None
            return self._send_answer(settings.reject_status, message, keep, extra, unread_body)
        context.refusals.record("while the limiter is unavailable")
        context.stats.refused(self.key, Reason.LIMITER_UNAVAILABLE)
        return self._send_answer(500, f"connection limiter unavailable: {exc}", keep, unread_body=unread_body)

    def _answer(
        self,
        status: int,
        message: str,
        keep: bool,
        extra: list | None = None,
        unread_body: bool = False,
        reason: Reason | None = None,
    ) -> bool:
        """An error answer of ours. Counted per interval at warning level; the details of
        each only at debug, so a flood of bad requests cannot flood the log."""
        if status != 407:
            self.context.refusals.record(f"with status {status}")
        self.context.stats.refused(self.key, reason or Reason.for_status(status))
        self.context.log.debug("client %s: %d %s", self.address, status, message)
        return self._send_answer(status, message, keep, extra, unread_body)

    def _send_answer(
        self, status: int, message: str, keep: bool, extra: list | None = None, unread_body: bool = False
    ) -> bool:
        with contextlib.suppress(ConnectionLost):
            self.client.send(rewrite.error_response(status, f"dprl: {message}", close=not keep, extra=extra))
        if not keep and unread_body:
            self.client.linger()  # the unread body must not turn our answer into a reset
        return keep
