"""The agent's logging: redaction, JSON-lines files, a human stderr form, and shipping.

Every handler the agent installs carries ``RedactFilter``, so API keys, passwords, tokens
and URL credentials are removed before a line is written anywhere or shipped. Job log
lines carry ``jobId``: from ``extra={"jobId": ...}`` or the ``current_job`` context
variable the runner sets. ``ShipBuffer`` is a bounded buffer of lines waiting to go to the
relay as ``agent.logs.v1``; when it is full the oldest lines are dropped and counted (the
local file still has them: ``agent/logship`` catches up from it). Every line carries a
stable ``id`` (``logship.StampFilter``), in the file and in the buffer alike. The relay may
raise the shipped level for a while (``agent.config.v1``): ``ShipBuffer.setLevel`` then
lowers the root logger's level too, while the file and stderr keep theirs.
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

from .logship import LineIds, StampFilter, newest_id

current_job: contextvars.ContextVar[str | None] = contextvars.ContextVar("mc_job", default=None)

class RedactFilter(logging.Filter):
    """Rewrites a record's message (and exception text) with secrets removed."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "mc_redacted", False):
            return True  # every handler carries this filter; the first one did the work
        record.mc_redacted = True
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


def _record_timestamp(record: logging.LogRecord) -> str:
    """The record's ISO timestamp, made once for the file and the shipping buffer."""
    stamp = getattr(record, "mc_timestamp", None)
    if stamp is None:
        stamp = record.mc_timestamp = _timestamp(record.created)
    return stamp


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": _record_timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        job = getattr(record, "jobId", None)
        if job:
            line["jobId"] = job
        if getattr(record, "lineId", None) is not None:
            line["id"] = record.lineId
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

    def __init__(
        self, capacity: int = 5000, level: int = logging.INFO, *,
        log_file: Path | None = None, ids: LineIds | None = None, base_level: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__(level)
        self._lines: collections.deque[dict[str, Any]] = collections.deque(maxlen=capacity)
        self._mutex = threading.Lock()
        self.dropped = 0
        self.log_file = log_file  # where catch-up reads from (None: no local file)
        self.base_level = base_level  # the root level when nothing is raised
        self.ids = ids or LineIds()
        self.addFilter(StampFilter(self.ids))
        self.addFilter(RedactFilter())

    def setLevel(self, level: int | str) -> None:
        """The shipped level; the root logger follows it down (and back) so a raised
        level's records exist at all."""
        old = self.level
        super().setLevel(level)
        base = getattr(self, "base_level", None)
        if base is None or self.level == old:
            return
        logging.getLogger().setLevel(min(base, self.level))
        logging.getLogger("agent.logs").info(
            "shipping %s and above to the relay", logging.getLevelName(self.level)
        )

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("websockets"):
            return  # the transport's own chatter is not the connector's log
        if record.levelno < logging.INFO and not record.name.startswith(("agent", "shared")):
            return  # a raised level is for our own debug lines, not every library's
        line = {
            "timestamp": _record_timestamp(record),
            "level": record.levelname if record.levelname in _LEVELS else "INFO",
            "message": record.getMessage()[:16_000],
            "logger": record.name[:200],
            "jobId": getattr(record, "jobId", None),
            "id": getattr(record, "lineId", None),
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
    ids = LineIds()
    stamp = StampFilter(ids)  # first on every handler: one id per line, wherever it goes
    redactor = RedactFilter()
    if stderr:
        err = logging.StreamHandler(sys.stderr)
        err.setLevel(level)  # a raised shipped level lowers the root, not this
        err.setFormatter(HumanFormatter())
        err.addFilter(stamp)
        err.addFilter(redactor)
        root.addHandler(err)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        ids.seed(newest_id(log_file))  # ids keep growing across restarts
        fh = logging.handlers.RotatingFileHandler(
            log_file, maxBytes=10 << 20, backupCount=5, encoding="utf-8"
        )
        fh.setLevel(level)
        fh.setFormatter(JsonFormatter())
        fh.addFilter(stamp)
        fh.addFilter(redactor)
        root.addHandler(fh)
    ship = ShipBuffer(log_file=log_file, ids=ids, base_level=level)
    root.addHandler(ship)
    logging.getLogger("websockets").setLevel(logging.WARNING)
    return ship
