"""The agent's logging: redaction, JSON-lines files, a human stderr form, and shipping.

Every handler the agent installs carries ``RedactFilter``, so API keys, passwords, tokens
and URL credentials are removed before a line is written anywhere or shipped. Job log
lines carry ``jobId``: from ``extra={"jobId": ...}`` or the ``current_job`` context
variable the runner sets. ``ShipBuffer`` is a bounded buffer of lines waiting to go to the
relay as ``agent.logs.v1``; when it is full the oldest lines are dropped and counted.
"""

from __future__ import annotations

import collections
import contextvars
import datetime as dt
import logging
import logging.handlers
import sys
import threading
from pathlib import Path
from typing import Any

import orjson

from shared.redact import redact

current_job: contextvars.ContextVar[str | None] = contextvars.ContextVar("mc_job", default=None)

class RedactFilter(logging.Filter):
    """Rewrites a record's message (and exception text) with secrets removed."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not lose the line
            message = str(record.msg)
        record.msg, record.args = redact(message), None
        if record.exc_info:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        if not getattr(record, "jobId", None):
            record.jobId = current_job.get()
        return True


def _timestamp(created: float) -> str:
    stamp = dt.datetime.fromtimestamp(created, dt.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        job = getattr(record, "jobId", None)
        if job:
            line["jobId"] = job
        if record.exc_text:
            line["exception"] = record.exc_text
        return orjson.dumps(line).decode("utf-8")


class HumanFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        job = getattr(record, "jobId", None)
        return f"{text} [{job}]" if job else text


class ShipBuffer(logging.Handler):
    """Keeps log lines for the relay in a bounded deque (thread-safe, never blocks)."""

    def __init__(self, capacity: int = 5000, level: int = logging.INFO) -> None:
        super().__init__(level)
        self._lines: collections.deque[dict[str, Any]] = collections.deque(maxlen=capacity)
        self._mutex = threading.Lock()
        self.dropped = 0
        self.addFilter(RedactFilter())

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("websockets"):
            return  # the transport's own chatter is not the connector's log
        line = {
            "timestamp": _timestamp(record.created),
            "level": record.levelname if record.levelname in _LEVELS else "INFO",
            "message": record.getMessage()[:16_000],
            "logger": record.name[:200],
            "jobId": getattr(record, "jobId", None),
        }
        with self._mutex:
            if len(self._lines) == self._lines.maxlen:
                self.dropped += 1
            self._lines.append(line)

    def take(self, limit: int = 1000) -> list[dict[str, Any]]:
        with self._mutex:
            n = min(limit, len(self._lines))
            return [self._lines.popleft() for _ in range(n)]

    def put_back(self, lines: list[dict[str, Any]]) -> None:
        """Return lines that could not be sent to the front (oldest first)."""
        with self._mutex:
            room = (self._lines.maxlen or 0) - len(self._lines)
            keep = lines[-room:] if room > 0 else []
            self.dropped += len(lines) - len(keep)
            self._lines.extendleft(reversed(keep))

    def __len__(self) -> int:
        return len(self._lines)


_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def setup_logging(
    log_file: Path | None, *, level: int = logging.INFO, stderr: bool = True
) -> ShipBuffer:
    """Install the agent's handlers on the root logger; returns the shipping buffer."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.setLevel(level)
    redactor = RedactFilter()
    if stderr:
        err = logging.StreamHandler(sys.stderr)
        err.setFormatter(HumanFormatter())
        err.addFilter(redactor)
        root.addHandler(err)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fh = logging.handlers.RotatingFileHandler(
            log_file, maxBytes=10 << 20, backupCount=5, encoding="utf-8"
        )
        fh.setFormatter(JsonFormatter())
        fh.addFilter(redactor)
        root.addHandler(fh)
    ship = ShipBuffer()
    root.addHandler(ship)
    logging.getLogger("websockets").setLevel(logging.WARNING)
    return ship
