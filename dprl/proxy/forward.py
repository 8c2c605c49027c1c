"""Plain HTTP through the proxy: one absolute-form request and its response, as an exchange.

A ``ForwardExchange`` writes one request to an upstream connection it is given, relays
the response, and returns an ``Outcome``: may the client connection carry another
request, may the upstream connection be reused, should the request be sent again on a
new connection, has it become a tunnel (101), must the client be drained before the
close. It never chooses or closes connections itself: the session does, from the outcome.

Errors are raised only while the client can still be answered (nothing of the response
written yet); after that the exchange ends the connections through its outcome. The
upstream's protocol errors become 502 in one place, ``upstream_error``.
"""

from __future__ import annotations

import logging
import time
from typing import NamedTuple

import gevent

from ..errors import ConnectionLost, UpstreamError
from ..http import rewrite
from ..http.errors import ProtocolError
from ..http.framing import BodyFraming, Framing, response_framing
from ..http.head import RequestHead, ResponseHead, head_finder, is_interim, parse_response_head
from ..http.target import Target
from ..net.endpoint import Endpoint
from .body import relay_body

MAX_RESPONSE_LINE = 8192
MAX_RESPONSE_HEAD = 65536
# RFC 9110 10.1.1: a client that sent 100-continue waits a while, then sends the body
# anyway; dprl waits as long for the origin's 100 (or its refusal) before relaying it.
CONTINUE_WAIT = 1.0
# After a write to the upstream failed, how long an answer it sent first may take to show.
EARLY_RESPONSE_WAIT = 1.0


class Outcome(NamedTuple):
    """What one exchange left behind, for the session to act on."""

    keep_client: bool  # the client connection can carry another request
    keep_upstream: bool = False  # the upstream connection can carry the next request to this host
    retry: bool = False  # the upstream closed a reused connection unanswered: send again on a new one
    upgrade: bool = False  # 101 was relayed: the two connections are a tunnel now
    linger: bool = False  # the client's body was left unread: drain it before the close


RETRY = Outcome(keep_client=True, retry=True)
UPGRADED = Outcome(keep_client=False, upgrade=True)
EARLY_ANSWERED = Outcome(keep_client=False, linger=True)
CLOSE = Outcome(keep_client=False)
KEEP_BOTH = Outcome(keep_client=True, keep_upstream=True)
KEEP_CLIENT = Outcome(keep_client=True)


class _EarlyResponse(Exception):
    """The upstream answered with an error while the request body was still being sent."""


def upstream_error(label: str, exc: ProtocolError) -> UpstreamError:
    """The one translation of an upstream's broken HTTP: the client's 502."""
    return UpstreamError(f"upstream {label}: {exc}", 502)


class ForwardExchange:
    def __init__(
        self,
        client: Endpoint,
        upstream: Endpoint,
        request: RequestHead,
        target: Target,
        framing: BodyFraming,
        *,
        reused: bool,
        response_timer: gevent.Timeout | None,
        log: logging.Logger,
        label: str,
        parent_authorization: str | None = None,
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.request = request
        self.target = target
        self.framing = framing
        self.reused = reused
        # --upstream-timeout for each response head: one timer of the session's, restarted
        # per wait (a socket timeout would make a new timer for every wait)
        self.response_timer = response_timer
        self.log = log
        self.label = label  # the host key, for messages
        # through an HTTP parent proxy: absolute-form, with this Proxy-Authorization (None: direct)
        self.parent_authorization = parent_authorization
        self.upgrade = rewrite.is_upgrade(request)
        self.keep_client = rewrite.wants_keep_alive(request)
        self.status = 0  # of the final (or 101) response relayed, for the access log

    def run(self) -> Outcome:
        request, up = self.request, self.upstream
        expect_continue = self.framing.has_body and request.version == "HTTP/1.1" and rewrite.expects_continue(request)
        head = rewrite.request_head(
            request, self.target, self.framing, self.upgrade, self.keep_client, self.parent_authorization
        )
        try:
            up.write(head)
            if expect_continue:
                up.flush()
                refusal = self._await_continue()
                if refusal is not None:
                    return self._relay_early(refusal)
            self._send_body()
            up.flush()
            response = self._read_response()
        except _EarlyResponse:
            return self._relay_early()
        except ConnectionLost as exc:
            if exc.side != "upstream":
                raise
            # RFC 9112 9.3.1: only a request that cannot have done harm is sent again, and
            # only when the upstream closed a reused connection without answering a byte.
            if self.reused and not self.framing.has_body and request.method in rewrite.SAFE_METHODS and not up.buf:
                return RETRY
            if self.framing.has_body:
                # it broke while taking the body: it may have answered first (413, 401...)
                return self._relay_early(failure=exc)
            raise UpstreamError(f"upstream {self.label} failed: {exc}") from None
        return self._relay_response(response)

    # the request -------------------------------------------------------------------------
    def _send_body(self) -> None:
        """Relay the request body, watching for an upstream that refuses it before the end.

        RFC 9112 9.3: a client sending a body should monitor the connection for an error
        response and stop sending. Checked only while a write is blocked (the upstream
        stopped reading), so a request whose upstream keeps up costs nothing more.
        """
        if not self.framing.has_body:
            return
        up = self.upstream

        def watch() -> bool:
            if up.buf.find(b"\r\n\r\n") < 0:
                return len(up.buf) < MAX_RESPONSE_HEAD  # wait for the whole head
            status = _peek_status(up.buf)
            if status is not None and is_interim(status):
                self._relay_interim(self._read_response())
                return True
            if status is None or status >= 400:
                raise _EarlyResponse
            return False  # a success sent early (a full-duplex origin): keep sending, read it after

        up.watch = watch
        try:
            relay_body(self.client, up, self.framing)
        finally:
            up.watch = None

    def _await_continue(self) -> ResponseHead | None:
        """After a forwarded ``Expect: 100-continue``: None to send the body, or the refusal.

        The origin's 1xx answers are relayed; a final answer (417, 413, 401...) is
        returned and the body never sent. An origin silent for CONTINUE_WAIT gets the body
        anyway, and the client a 100 of ours, as RFC 9110 10.1.1 tells both sides to do.
        """
        deadline = time.monotonic() + CONTINUE_WAIT
        while (remaining := deadline - time.monotonic()) > 0 and self.upstream.wait_readable(remaining):
            response = self._read_response()
            if not is_interim(response.status):
                return response
            self._relay_interim(response)
            if response.status == 100:
                return None
        self.client.send(rewrite.CONTINUE)
        return None

    # the response ------------------------------------------------------------------------
    def _read_response(self) -> ResponseHead:
        timer = self.response_timer
        if timer is not None:
            timer.start()
        try:
            return parse_response_head(self.upstream.read_until(head_finder(MAX_RESPONSE_LINE, MAX_RESPONSE_HEAD)))
        except ProtocolError as exc:
            raise upstream_error(self.label, exc) from None
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            raise UpstreamError(f"upstream {self.label} sent no response within {timer.seconds:g}s", 504) from None
        finally:
            if timer is not None:
                timer.cancel()

    def _relay_interim(self, response: ResponseHead) -> None:
        """A 1xx answer goes to HTTP/1.1 clients only (HTTP/1.0 has none)."""
        if self.request.version == "HTTP/1.1":
            self.client.write(rewrite.interim_head(response))
            self.client.flush()

    def _relay_response(self, response: ResponseHead) -> Outcome:
        request, client, up = self.request, self.client, self.upstream
        while is_interim(response.status):
            self._relay_interim(response)
            response = self._read_response()
        self.status = response.status
        if response.status == 101:
            if not self.upgrade:
                raise UpstreamError(f"upstream {self.label} switched protocols without an upgrade request")
            client.send(rewrite.upgrade_head(response))
            return UPGRADED
        try:
            framing = response_framing(response, request.method)
            head, dechunk, keep_client = rewrite.final_head(response, request.version, framing, self.keep_client)
        except ProtocolError as exc:
            raise upstream_error(self.label, exc) from None
        keep_upstream = keep_client and framing.kind != Framing.CLOSE and rewrite.wants_keep_alive(response)
        sent_before = client.bytes_out
        client.write(head)
        try:
            try:
                relay_body(up, client, framing, dechunk)
            except ProtocolError as exc:
                raise upstream_error(self.label, exc) from None
        except UpstreamError as exc:
            if client.bytes_out == sent_before:
                client.out.clear()  # nothing of it left yet: a clean 502 is still possible
                raise
            self.log.info("upstream %s broke off a response: %s", self.label, exc)
            return CLOSE  # part of the response is out: only a close is left
        except ConnectionLost as exc:
            if exc.side != "upstream":
                raise
            self.log.info("upstream %s broke off a response: %s", self.label, exc)
            return CLOSE
        client.flush()
        if not keep_client:
            return CLOSE
        return KEEP_BOTH if keep_upstream else KEEP_CLIENT

    def _relay_early(self, response: ResponseHead | None = None, failure: ConnectionLost | None = None) -> Outcome:
        """Relay a final answer the upstream gave before it took the whole body.

        The rest of the client's body is never read, so the client connection cannot carry
        another request: the answer says ``Connection: close``, and the session drains the
        client before closing. Without such an answer, it is the 502 of a failed upload.
        """
        up, client = self.upstream, self.client
        if response is None:
            up.set_timeout(EARLY_RESPONSE_WAIT)
            try:
                response = self._read_response()
                while is_interim(response.status):
                    response = self._read_response()
            except (ConnectionLost, UpstreamError):
                reason = failure or "closed while taking the request body"
                raise UpstreamError(f"upstream {self.label} failed: {reason}") from None
        self.status = response.status
        try:
            framing = response_framing(response, self.request.method)
            final = rewrite.final_head(response, self.request.version, framing, keep_client=False)
            client.write(final.head)
            relay_body(up, client, framing, final.dechunk)
            client.flush()
        except (ConnectionLost, ProtocolError) as exc:
            self.log.debug("upstream %s: early answer %d cut off: %s", self.label, response.status, exc)
        return EARLY_ANSWERED


def _peek_status(buf: bytearray) -> int | None:
    status = bytes(buf[9:12])
    return int(status) if buf[:7] == b"HTTP/1." and status.isdigit() else None
