"""Bodies are streamed: a GiB passes through the proxy with flat memory."""

from __future__ import annotations

import socket

from ..support.proxy_process import ProxyProcess

GIB = 1 << 30


def _peak_rss_kib(proc: ProxyProcess) -> int:
    with open(f"/proc/{proc.proc.pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def _read_response(sock: socket.socket) -> tuple[bytes, int]:
    """Read a head, then count body bytes to the Content-Length without keeping them."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    received = len(rest)
    buf = bytearray(1 << 20)
    while received < length:
        n = sock.recv_into(buf)
        assert n, f"connection closed after {received} of {length} bytes"
        received += n
    return head, received


def test_one_gib_download_and_256_mib_upload_with_flat_memory(upstream):
    proc = ProxyProcess()
    try:
        target = f"127.0.0.1:{upstream.port}"
        with socket.create_connection(("127.0.0.1", proc.port)) as sock:
            # warm-up request, then the baseline
            sock.sendall(f"GET http://{target}/bytes?n=1000000 HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            _read_response(sock)
            baseline = proc.rss_kib()
            sock.sendall(f"GET http://{target}/bytes?n={GIB} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            head, received = _read_response(sock)
            assert head.startswith(b"HTTP/1.1 200") and received == GIB
            upload = 256 << 20
            sock.sendall(
                f"POST http://{target}/sink HTTP/1.1\r\nHost: {target}\r\nContent-Length: {upload}\r\n\r\n".encode()
            )
            block = b"u" * (1 << 20)
            for _ in range(upload // len(block)):
                sock.sendall(block)
            reply = b""
            while not reply.endswith(str(upload).encode()) and len(reply) < 4096:
                reply += sock.recv(65536)
            assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(str(upload).encode()), reply
        growth = _peak_rss_kib(proc) - baseline
        assert growth < 20 * 1024, f"proxy peak RSS grew by {growth} KiB while relaying 1.25 GiB"
    finally:
        proc.stop()
