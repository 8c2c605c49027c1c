"""``--workers N``: one supervisor, N worker processes accepting on the same port.

Each worker is ``python -m dprl`` with the same options, listening with SO_REUSEPORT (the
kernel spreads connections over the workers' sockets; the supervisor holds the port
between restarts). In local mode the workers share one slot table in shared memory
(``slot_table.py``: one cap per machine, waiters served oldest first across
workers); with ``--redis-url`` each worker is a member of the fleet with its own id. When
a worker dies the supervisor gives its slots back at once (its column of the table, or
its part of every Redis count, not after a lease) and starts a new one, with a back-off.
SIGTERM/SIGINT stop every worker gracefully (within --shutdown-timeout); SIGHUP and
SIGUSR1 are passed on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ..config import Config
from ..errors import ConfigError, RedisUnavailable
from ..redis.cleanup import forget_worker
from ..redis.protocol import ReplyError
from .admin import MachineAdmin
from .limiter import wake_all
from .seat import WORKER_ENV, Seat
from .slot_table import SlotTable

FIRST_DELAY, MAX_DELAY, HEALTHY_AFTER = 0.5, 30.0, 60.0  # restart back-off, seconds


@dataclass
class Worker:
    index: int
    generation: int = 0
    proc: subprocess.Popen | None = None
    started: float = 0.0
    delay: float = FIRST_DELAY
    restart_at: float = 0.0
    worker_id: str = ""
    admin_url: str = ""  # its private admin listener (when the supervisor serves --admin-port)
    ready_pipe: int = -1  # the worker writes one byte there once it listens
    ready: bool = False


class Supervisor:
    def __init__(self, config: Config, argv: Sequence[str], log: logging.Logger, count: int) -> None:
        self.config = config
        self.argv = list(argv)
        self.log = log
        self.count = count
        self.workers = [Worker(i) for i in range(self.count)]
        self.stopping = False
        self._kill_at = float("inf")  # workers still running then (stopping) are killed
        # Signal handlers wake the main loop through a pipe: a lock (threading.Event) taken in
        # a handler can deadlock against the same lock held by the code it interrupted.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.table: SlotTable | None = None  # local mode: the machine's counts
        self.wake_prefix = f"dprl-{os.getpid()}-{secrets.token_hex(4)}"  # the workers' wake sockets
        self.redis_url = config.effective_redis_url
        self.port = config.port
        self._port_holder: socket.socket | None = None
        self.admin: MachineAdmin | None = None

    # lifecycle -------------------------------------------------------------------------
    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop)
        for signum in (signal.SIGHUP, signal.SIGUSR1):
            signal.signal(signum, self._forward)
        signal.signal(signal.SIGCHLD, lambda *_: self._poke())
        try:
            self._hold_port()
            if not self.redis_url:
                self._make_table()
            if self.config.admin_port:
                self._start_admin()
            for worker in self.workers:
                self._spawn(worker)
            self._wait_listening()
            where = f"Redis at {self.config.redis_deployment}" if self.redis_url else "shared memory"
            self.log.info(
                "dprl supervisor listening on %s:%d with %d workers; counts shared through %s",
                self.config.bind,
                self.port,
                self.count,
                where,
            )
            while not (self.stopping and not self._running()):
                starting = {w.ready_pipe: w for w in self._running() if not w.ready and w.ready_pipe >= 0}
                readable, _, _ = select.select([self._wake_r, *starting], [], [], 0.5)
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
                for fd in readable:
                    if fd in starting:
                        self._listening(starting[fd])
                self._reap()
                self._restart_due()
        finally:
            self._shutdown()
        return 0

    def _stop(self, signum: int, _frame: object) -> None:
        if not self.stopping:
            self.log.info("received %s: stopping %d workers", signal.Signals(signum).name, self.count)
            self.stopping = True
            self._kill_at = time.monotonic() + self.config.shutdown_timeout + 5
            self._signal_all(signal.SIGTERM)
        self._poke()

    def _poke(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"!")

    def _forward(self, signum: int, _frame: object) -> None:
        self._signal_all(signum)

    def _signal_all(self, signum: int) -> None:
        for worker in self.workers:
            if worker.proc is not None and worker.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.send_signal(signum)

    def _running(self) -> list[Worker]:
        return [w for w in self.workers if w.proc is not None and w.proc.poll() is None]

    def _shutdown(self) -> None:
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self.config.shutdown_timeout + 5
        for worker in self.workers:
            if worker.proc is not None:
                try:
                    worker.proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    self.log.error("worker w%d did not stop in time: killed", worker.index)
                    worker.proc.kill()
                    worker.proc.wait()
        if self.admin is not None:
            self.admin.stop()
        if self.table is not None:
            self.table.close()
        if self._port_holder is not None:
            self._port_holder.close()
        self.log.info("dprl supervisor stopped")

    # the port --------------------------------------------------------------------------
    def _hold_port(self) -> None:
        """Bind the port with SO_REUSEPORT (not listening): picks it when --port is 0, and
        keeps it ours while a worker restarts."""
        family = socket.AF_INET6 if ":" in self.config.bind else socket.AF_INET
        holder = socket.socket(family, socket.SOCK_STREAM)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            holder.bind((self.config.bind, self.config.port))
        except OSError as exc:
            holder.close()
            raise ConfigError(f"cannot listen on {self.config.bind}:{self.config.port}: {exc.strerror}") from None
        self._port_holder = holder
        self.port = holder.getsockname()[1]

    def _wait_listening(self) -> None:
        """Until every worker listens (each writes a byte on its ready pipe then)."""
        deadline = time.monotonic() + 30
        for worker in self.workers:
            while not worker.ready:
                if worker.proc is None or worker.proc.poll() is not None:
                    raise ConfigError(f"worker w{worker.index} exited at start (see its error above)")
                if time.monotonic() > deadline:
                    raise ConfigError(f"worker w{worker.index} not listening on port {self.port} after 30 s")
                readable, _, _ = select.select([worker.ready_pipe], [], [], 0.1)
                if readable:
                    self._listening(worker)

    # the slot table (local mode) --------------------------------------------------------
    def _make_table(self) -> None:
        try:
            self.table = SlotTable.create(self.count)
        except OSError as exc:
            raise ConfigError(f"cannot make the workers' slot table: {exc.strerror}") from None

    # workers ---------------------------------------------------------------------------
    def _spawn(self, worker: Worker) -> None:
        worker.generation += 1
        worker.worker_id = f"{socket.gethostname()}:{os.getpid()}:w{worker.index}.{worker.generation}"
        args = [*self.argv, "--port", str(self.port), "--workers", "1"]
        if self.admin is not None:  # a private listener the supervisor's asks
            admin_port = _free_port()
            worker.admin_url = f"http://127.0.0.1:{admin_port}"
            args += ["--admin-port", str(admin_port), "--admin-bind", "127.0.0.1"]
        if worker.ready_pipe >= 0:
            os.close(worker.ready_pipe)
        read_end, write_end = os.pipe()
        worker.ready_pipe, worker.ready = read_end, False
        seat = Seat(worker.index, worker.worker_id, write_end, os.getpid())
        fds = [write_end]
        if self.table is not None:
            seat = Seat(worker.index, worker.worker_id, write_end, os.getpid(), self.table.shared_fd, self.wake_prefix)
            fds.append(self.table.shared_fd)
        env = {**os.environ, WORKER_ENV: seat.encode()}
        try:
            worker.proc = subprocess.Popen([sys.executable, "-m", "dprl", *args], env=env, pass_fds=fds)
        finally:
            os.close(write_end)
        worker.started = time.monotonic()
        self.log.info("worker w%d started (pid %d)", worker.index, worker.proc.pid)

    def _listening(self, worker: Worker) -> None:
        """A worker says it listens; one that restarted is given the local limit changes
        made through the admin listener since the start."""
        worker.ready = bool(os.read(worker.ready_pipe, 1))
        if worker.ready and self.admin is not None and worker.admin_url and self.admin.journal:
            self.admin.replay(worker.admin_url)

    def _start_admin(self) -> None:
        c = self.config
        try:
            self.admin = MachineAdmin(
                c.admin_bind,
                c.admin_port,
                self._admin_urls,
                lambda: self.stopping,
                c.admin_token,
                self.log,
                local=not self.redis_url,
            )
        except OSError as exc:
            raise ConfigError(f"cannot listen on admin {c.admin_bind}:{c.admin_port}: {exc.strerror}") from None
        self.admin.start()

    def _admin_urls(self) -> list[str]:
        return [w.admin_url for w in self._running() if w.admin_url]

    def _reap(self) -> None:
        for worker in self.workers:
            proc = worker.proc
            if proc is None or proc.poll() is None:
                continue
            worker.proc = None
            if self.stopping:
                continue
            forgotten = self._forget(worker)
            if time.monotonic() - worker.started > HEALTHY_AFTER:
                worker.delay = FIRST_DELAY
            worker.restart_at = time.monotonic() + worker.delay
            self.log.error(
                "worker w%d (pid %d) exited with %s; its %d slot(s) given back; restarting in %.1fs",
                worker.index,
                proc.pid,
                _exit_status(proc.returncode),
                forgotten,
                worker.delay,
            )
            worker.delay = min(MAX_DELAY, worker.delay * 2)

    def _forget(self, worker: Worker) -> int:
        if self.table is not None:
            given = self.table.forget(worker.index)
            wake_all(self.wake_prefix, self.count)  # its waiters' places are gone: others may go first now
            return given
        try:
            return forget_worker(self.redis_url, self.config.redis_prefix, worker.worker_id, self.config.redis_timeout)
        except (RedisUnavailable, ReplyError, OSError) as exc:
            self.log.error("could not remove worker w%d's counts (they expire with its lease): %s", worker.index, exc)
            return 0

    def _restart_due(self) -> None:
        now = time.monotonic()
        for worker in self.workers:
            if worker.proc is None and not self.stopping and now >= worker.restart_at:
                self._spawn(worker)
        if self.stopping and self._running() and now > self._kill_at:
            self._signal_all(signal.SIGKILL)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _exit_status(code: int) -> str:
    return f"signal {signal.Signals(-code).name}" if code < 0 else f"code {code}"
