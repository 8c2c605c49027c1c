"""Real parent proxies on loopback for tests: tinyproxy (HTTP) and dante (SOCKS5), both from
Debian, run from config files of the test's own; and a relay in front of a parent that
counts what reaches it and records what each connection carried (to tell which parent a
client's tunnel went through, it sends a token of its own).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest

from .network import free_port, proxy_connect, wait_for
from .upstream import RawOrigin


def _wait_listening(port: int, proc: subprocess.Popen, what: str) -> None:
    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
        return False

    wait_for(up, 10, f"{what} listening on {port}")


class ParentProcess:
    """A parent proxy process on a port of its own; ``kill`` and ``start`` again keep the port."""

    program = ""
    scheme = ""

    def __init__(self, directory: Path, username: str = "", password: str = "") -> None:
        if shutil.which(self.program) is None:
            pytest.skip(f"{self.program} is not installed (scripts/test installs it)")
        self.directory = directory
        self.port = free_port()
        self.username, self.password = username, password
        self.proc: subprocess.Popen | None = None
        self.log = directory / f"{self.program}-{self.port}.log"
        self.start()

    @property
    def url(self) -> str:
        auth = f"{self.username}:{self.password}@" if self.username else ""
        return f"{self.scheme}://{auth}127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        _wait_listening(self.port, self.proc, self.program)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class TinyProxy(ParentProcess):
    program = "tinyproxy"
    scheme = "http"

    def command(self) -> list[str]:
        conf = self.directory / f"tinyproxy-{self.port}.conf"
        lines = [
            f"Port {self.port}",
            "Listen 127.0.0.1",
            "Timeout 60",
            "MaxClients 200",
            "Allow 127.0.0.1",
            "LogLevel Info",
            "DisableViaHeader Yes",
        ]
        if self.username:
            lines.append(f"BasicAuth {self.username} {self.password}")
        conf.write_text("\n".join(lines) + "\n")
        return ["tinyproxy", "-d", "-c", str(conf)]


class Dante(ParentProcess):
    program = "danted"
    scheme = "socks5"

    def command(self) -> list[str]:
        conf = self.directory / f"danted-{self.port}.conf"
        conf.write_text(
            "logoutput: stderr\n"
            f"internal: 127.0.0.1 port = {self.port}\n"
            "external: 127.0.0.1\n"
            "socksmethod: none\n"
            "clientmethod: none\n"
            "user.privileged: root\n"
            "user.unprivileged: nobody\n"
            "client pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }\n"
            "socks pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }\n"
        )
        return ["danted", "-f", str(conf), "-N", "1"]


class CountingRelay(RawOrigin):
    """A TCP relay to ``target_port`` (a parent): its ``url`` stands for the parent. Counts
    connections open now, at most, and in all, and keeps the first 4 KiB each client sent."""

    def __init__(self, target_port: int, scheme: str = "http") -> None:
        self.target_port, self.scheme = target_port, scheme
        self.active = self.max_active = self.accepted = 0
        self.seen: list[bytearray] = []  # what each connection's client sent first
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        super().__init__()

    def url(self, query: str = "", userinfo: str = "") -> str:
        """The parent's URL; ``userinfo`` (``user:password``) goes before its address."""
        auth = f"{userinfo}@" if userinfo else ""
        return f"{self.scheme}://{auth}127.0.0.1:{self.port}{query}"

    def carried(self, token: bytes) -> bool:
        """Whether a connection through here carried ``token``."""
        with self._lock:
            return any(token in seen for seen in self.seen)

    def serve(self, conn: socket.socket, index: int) -> None:
        """Both directions until each has ended (a half-close is passed on)."""
        with socket.create_connection(("127.0.0.1", self.target_port)) as server:
            seen = bytearray()
            with self._lock:
                self.accepted += 1
                self.active += 1
                self.max_active = max(self.max_active, self.active)
                self.seen.append(seen)
                self._socks |= {conn, server}
            back = threading.Thread(target=_carry, args=(server, conn, None), daemon=True)
            back.start()
            _carry(conn, server, seen)
            back.join()
            with self._lock:
                self.active -= 1
                self._socks -= {conn, server}

    def close(self) -> None:
        super().close()
        with self._lock:
            socks = list(self._socks)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.close()


def _carry(src: socket.socket, dst: socket.socket, record: bytearray | None) -> None:
    """Bytes from ``src`` to ``dst`` until ``src`` ends; the first 4 KiB into ``record``."""
    with contextlib.suppress(OSError):
        while data := src.recv(65536):
            if record is not None and len(record) < 4096:
                record += data
            dst.sendall(data)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


def connect_through(port: int, target: str, token: bytes = b"") -> tuple[socket.socket, bytes]:
    """CONNECT ``target`` through the proxy on ``port``: the socket and the answer (a refusal
    with its body); once the tunnel is up, ``token`` goes first (the relay records it)."""
    sock, head = proxy_connect(port, target)
    if not head.startswith(b"HTTP/1.1 200"):
        with contextlib.suppress(OSError):
            while data := sock.recv(65536):
                head += data
    elif token:
        sock.sendall(token)
    return sock, head


class TlsFront(CountingRelay):
    """An HTTPS parent: TLS (a ``trustme`` certificate for 127.0.0.1) in front of a plain
    HTTP parent on ``target_port``, as a TLS-terminating load balancer would put it."""

    def __init__(self, target_port: int, context: ssl.SSLContext) -> None:
        self.context = context
        super().__init__(target_port, "https")

    def serve(self, conn: socket.socket, index: int) -> None:
        conn.settimeout(10)
        with self.context.wrap_socket(conn, server_side=True) as wrapped:  # a failed handshake: OSError
            wrapped.settimeout(None)
            super().serve(wrapped, index)
