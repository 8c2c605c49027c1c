"""``python -m dprl`` as a subprocess, with its log lines collected as they arrive."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading


class ProxyProcess:
    def __init__(self, *args: str, env: dict[str, str] | None = None, preexec_fn=None, cwd: str | None = None) -> None:
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dprl", "--bind", "127.0.0.1", "--port", "0", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=full_env,
            preexec_fn=preexec_fn,
            cwd=cwd,  # python -m puts the working directory first on sys.path
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        match = self.wait_line(r"listening on 127\.0\.0\.1:(\d+)")
        self.port = int(match[1])
        self.url = f"http://127.0.0.1:{self.port}"

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.lines.append("<eof>")
            self._changed.notify_all()

    def wait_line(self, pattern: str, timeout: float = 15.0, start: int = 0) -> re.Match:
        """The first log line at index >= ``start`` matching ``pattern``; waits for it."""
        regex = re.compile(pattern)
        with self._changed:
            seen = start
            while True:
                for line in self.lines[seen:]:
                    match = regex.search(line)
                    if match:
                        return match
                    if line == "<eof>":
                        raise AssertionError(f"dprl exited before logging {pattern!r}:\n" + "\n".join(self.lines))
                seen = len(self.lines)
                if not self._changed.wait(timeout):
                    raise AssertionError(f"no log line matched {pattern!r}:\n" + "\n".join(self.lines))

    def matching(self, pattern: str) -> list[str]:
        with self._changed:
            return [line for line in self.lines if re.search(pattern, line)]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def rss_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")


def run_dprl(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m dprl ARGS`` to its end (a subcommand: ``status``, ``limits``), output captured."""
    return subprocess.run([sys.executable, "-m", "dprl", *args], capture_output=True, text=True, timeout=30)
