"""The timestamping upstream (``ArrivalUpstream``) in a process of its own.

A rate is measured by when requests reach the upstream. In the process of the test, the
upstream's clock readings wait for the GIL behind the load generator's threads (40
clients): tens of milliseconds of jitter that are the test's, not the proxy's. In a
process of its own, on CLOCK_MONOTONIC (one clock for the machine), it reads what the
proxy sent when it arrived.

``python -m tests.support.arrivals`` prints its port, serves until stdin closes, then
prints one JSON line: the arrivals and the paths.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .upstream import ArrivalUpstream

ROOT = Path(__file__).resolve().parents[2]


class ArrivalProcess:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.arrivals"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        self.authority = f"127.0.0.1:{self.port}"
        self.arrivals: list[float] = []
        self.paths: list[str] = []

    def collect(self) -> ArrivalProcess:
        """Stop serving and read what arrived (call once the load is over)."""
        if self.proc.poll() is None:
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.close()
            record = json.loads(self.proc.stdout.readline())
            self.arrivals, self.paths = record["arrivals"], record["paths"]
            self.proc.wait(10)
        return self

    def most_in_any_window(self, width: float) -> int:
        return ArrivalUpstream.most_in(self.arrivals, width)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


if __name__ == "__main__":
    server = ArrivalUpstream()
    print(server.port, flush=True)
    sys.stdin.read()
    server.close()
    print(json.dumps({"arrivals": server.arrivals, "paths": server.paths}), flush=True)
