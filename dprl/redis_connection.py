"""redis-py connections whose sockets are gevent sockets, monkey-patching or not.

The library also runs inside plain threaded programs (a gevent hub in a background
thread), where redis-py's stdlib sockets would block the whole hub on every call. These
subclasses change only how the socket is made; redis-py keeps the protocol, the AUTH /
SELECT handshake and URL parsing.
"""

from __future__ import annotations

from gevent import socket as gsocket
from gevent import ssl as gssl
from redis.backoff import NoBackoff
from redis.connection import Connection, ConnectionPool, SSLConnection, UnixDomainSocketConnection
from redis.retry import Retry


def _tune(sock: gsocket.socket, connection: Connection) -> gsocket.socket:
    sock.settimeout(connection.socket_timeout)
    return sock


class GeventConnection(Connection):
    def _connect(self) -> gsocket.socket:
        error: OSError | None = None
        for family, socktype, proto, _, address in gsocket.getaddrinfo(
            self.host, self.port, self.socket_type, gsocket.SOCK_STREAM
        ):
            sock = gsocket.socket(family, socktype, proto)
            try:
                sock.setsockopt(gsocket.IPPROTO_TCP, gsocket.TCP_NODELAY, 1)
                if self.socket_keepalive:
                    sock.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_KEEPALIVE, 1)
                sock.settimeout(self.socket_connect_timeout)
                sock.connect(address)
                return _tune(sock, self)
            except OSError as exc:
                error = exc
                sock.close()
        raise error or OSError(f"no address for {self.host}")


class GeventSSLConnection(SSLConnection):
    def _connect(self) -> gsocket.socket:
        sock = GeventConnection._connect(self)  # type: ignore[arg-type]
        try:
            return self._wrap_socket_with_ssl(sock)
        except OSError:
            sock.close()
            raise

    def _wrap_socket_with_ssl(self, sock: gsocket.socket) -> gssl.SSLSocket:
        # gevent's SSLContext: ssl.create_default_context() would build the stdlib one,
        # whose sockets block the hub.
        context = gssl.SSLContext(gssl.PROTOCOL_TLS_CLIENT)
        if not (self.ca_certs or self.ca_path or self.ca_data):
            context.load_default_certs()
        context.check_hostname = bool(self.check_hostname)
        context.verify_mode = self.cert_reqs
        if self.certfile or self.keyfile:
            context.load_cert_chain(self.certfile, self.keyfile, self.certificate_password)
        if self.ca_certs or self.ca_path or self.ca_data:
            context.load_verify_locations(cafile=self.ca_certs, capath=self.ca_path, cadata=self.ca_data)
        if self.ssl_min_version is not None:
            context.minimum_version = self.ssl_min_version
        if self.ssl_ciphers:
            context.set_ciphers(self.ssl_ciphers)
        return context.wrap_socket(sock, server_hostname=self.host)


class GeventUnixConnection(UnixDomainSocketConnection):
    def _connect(self) -> gsocket.socket:
        sock = gsocket.socket(gsocket.AF_UNIX, gsocket.SOCK_STREAM)
        sock.settimeout(self.socket_connect_timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        return _tune(sock, self)


_GEVENT_CLASSES = {
    Connection: GeventConnection,
    SSLConnection: GeventSSLConnection,
    UnixDomainSocketConnection: GeventUnixConnection,
}


def connection_factory(url: str, timeout: float):
    """A function that makes one unconnected gevent-socket connection to ``url``.

    Calls have no socket read timeout: the channel reads replies in a loop and enforces
    the per-call deadline itself. Connecting has ``timeout``, and no redis-py retries
    (the limiter's failure policy decides what happens next, at once).
    """
    pool = ConnectionPool.from_url(url)
    kwargs = dict(pool.connection_kwargs)
    cls = _GEVENT_CLASSES.get(pool.connection_class)
    if cls is None:
        raise ValueError(f"unsupported Redis connection type {pool.connection_class.__name__}")
    kwargs.update(socket_timeout=None, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))
    pool.disconnect()
    return lambda: cls(**kwargs)
