"""Resource exhaustion: descriptors run out, the accept loop survives and recovers."""

from __future__ import annotations

import resource
import socket

from ..support.network import raw_request
from ..support.proxy_process import ProxyProcess


def _low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))


def test_startup_raises_the_open_files_soft_limit():
    def lower_soft() -> None:
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    proc = ProxyProcess(preexec_fn=lower_soft)
    try:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        line = proc.matching("open-files limit")[0]
        assert f"open-files limit {hard} " in line, line
    finally:
        proc.stop()


def test_emfile_pauses_accept_logs_once_and_recovers(upstream):
    proc = ProxyProcess(preexec_fn=_low_nofile)
    clients = []
    try:
        for _ in range(80):  # more clients than the proxy has descriptors, each mid-request
            sock = socket.create_connection(("127.0.0.1", proc.port), timeout=5)
            sock.sendall(b"GET ")  # (deferred accept hands over connections that sent something)
            clients.append(sock)
        proc.wait_line("cannot accept connections: Too many open files")
        for sock in clients:
            sock.close()
        clients.clear()
        # descriptors free up as the proxy sees the clients go; then it serves again
        reply = raw_request(proc.port, f"GET http://127.0.0.1:{upstream.port}/back HTTP/1.0\r\n\r\n".encode(), 15)
        assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"ok:/back"), reply
        proc.wait_line("accepting connections again")
        assert len(proc.matching("cannot accept connections")) == 1, proc.matching("cannot accept")
    finally:
        for sock in clients:
            sock.close()
        assert proc.stop() == 0
