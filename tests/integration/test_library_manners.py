"""dprl as a library leaves its host program as it found it: no signal handlers, no rlimit
change, no handler on the root logger, and host names resolved by the resolver gevent is
configured with (GEVENT_RESOLVER). Each case runs in a fresh interpreter, so the state it
checks is the program's own."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

PROGRAM = textwrap.dedent(
    """
    import sys
    if sys.argv[1] == "gevent":
        from gevent import monkey
        monkey.patch_all()
    import http.client, http.server, inspect, logging, resource, signal, threading
    import gevent

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD, signal.SIGPIPE)

    def state():
        return (
            {s: signal.getsignal(s) for s in SIGNALS},
            resource.getrlimit(resource.RLIMIT_NOFILE),
            list(logging.getLogger().handlers),
            logging.getLogger().level,
        )

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"hello"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()

    resolver = gevent.config.resolver  # the class GEVENT_RESOLVER picked
    asked = []
    original = inspect.getattr_static(resolver, "getaddrinfo")  # a function, or a staticmethod
    def counting(self, host, *args, **kwargs):
        asked.append(host)
        return original.__get__(self, type(self))(host, *args, **kwargs)
    resolver.getaddrinfo = counting

    before = state()
    from dprl import ProxyRateLimiter
    proxy = ProxyRateLimiter(port=0, max_connections_per_host=2)
    proxy.start()
    during = state()
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    connection.request("GET", f"http://localhost:{upstream.server_address[1]}/")
    answer = connection.getresponse()
    assert (answer.status, answer.read()) == (200, b"hello"), answer.status
    connection.close()
    proxy.stop()
    after = state()
    assert during == before, f"changed while serving: {before} -> {during}"
    assert after == before, f"changed after stop: {before} -> {after}"
    assert asked.count("localhost") == 1, asked
    print(resolver.__module__, "ok")
    """
)


@pytest.mark.parametrize("mode", ["threaded", "gevent"])
@pytest.mark.parametrize("resolver", ["thread", "dnspython", "ares", "block"])
def test_a_library_proxy_keeps_to_its_host_programs_settings(mode: str, resolver: str) -> None:
    env = {**os.environ, "GEVENT_RESOLVER": resolver, "PYTHONPATH": os.getcwd()}
    run = subprocess.run(
        [sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == [f"gevent.resolver.{'blocking' if resolver == 'block' else resolver}", "ok"]
