"""The CLI's logging: text lines for people, or one JSON object a line for log pipelines.

Only the ``python -m dprl`` process configures logging (the library adds no handler to
any logger). JSON field names are stable: ``ts``, ``level``, ``logger``, ``msg``,
``worker``, then whichever of ``host``, ``client``, ``status``, ``requests``,
``duration_ms``, ``bytes_in``, ``bytes_out`` the line carries, and ``exc`` for a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# what a record may carry (``extra=``) besides its message, in output order
FIELDS = ("host", "client", "status", "requests", "duration_ms", "bytes_in", "bytes_out")


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._hostname = socket.gethostname()

    def format(self, record: logging.LogRecord) -> str:
        seconds = int(record.created)
        line: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "worker": f"{self._hostname}:{os.getpid()}",  # a Redis worker id begins with it
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def setup_logging(level: str, fmt: str = "text", name: str = "dprl") -> logging.Logger:
    """The ``dprl`` logger writing to stderr, at ``level`` (debug, info, warn, error)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    log = logging.getLogger(name)
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel({"warn": "WARNING"}.get(level, level.upper()))
    return log
