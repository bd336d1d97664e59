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
import contextlib
import contextvars
import copy
import datetime as dt
import io
import logging
import math
import os
import re
import stat
import sys
import threading
from pathlib import Path
from typing import Any

import orjson

from shared.nospace import is_disk_full
from shared.protocol import LOG_LEVELS
from shared.redact import redact

from .logship import LineIds, StampFilter, newest_id

current_job: contextvars.ContextVar[str | None] = contextvars.ContextVar("mc_job", default=None)

LOG_MAX_BYTES = 10 << 20  # the local log rotates at 10 MiB ...
LOG_BACKUPS = 5  # ... keeping agent.log.1 to agent.log.5
_NEWLINE = os.linesep.encode("ascii")  # as a text-mode file writes "\n"
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")  # what would break a human log line


def _encodable(text: str) -> str:
    """``text`` with lone surrogates (a name decoded with ``surrogateescape``) written as
    ``\\udcXX``: UTF-8 and orjson refuse them, which would lose the line from the file and
    stop the shipping of every line after it."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


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
        record.msg, record.args = _encodable(redact(message)), None
        if record.exc_info:
            record.exc_text = _encodable(redact(logging.Formatter().formatException(record.exc_info)))
            record.exc_info = None
        if not getattr(record, "jobId", None):
            record.jobId = current_job.get()
        return True


_second: tuple[int, str] = (-1, "")  # the last second's "YYYY-MM-DDTHH:MM:SS." (UTC)


def _timestamp(created: float) -> str:
    """``created`` as ISO 8601 UTC with milliseconds, as ``datetime.fromtimestamp(created,
    UTC)`` gives it (microseconds rounded half-even, then cut to milliseconds); the date
    and time part is made once per second."""
    global _second
    frac, whole = math.modf(created)
    us = round(frac * 1e6)
    if us >= 1_000_000:
        whole, us = whole + 1, us - 1_000_000
    elif us < 0:
        whole, us = whole - 1, us + 1_000_000
    second = int(whole)
    cached = _second
    if cached[0] != second:
        prefix = dt.datetime.fromtimestamp(second, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        cached = _second = (second, prefix)
    return f"{cached[1]}{us // 1000:03d}Z"


def _record_timestamp(record: logging.LogRecord) -> str:
    """The record's ISO timestamp, made once for the file and the shipping buffer."""
    stamp = getattr(record, "mc_timestamp", None)
    if stamp is None:
        stamp = record.mc_timestamp = _timestamp(record.created)
    return stamp


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return orjson.dumps(self._fields(record)).decode("utf-8")

    def line(self, record: logging.LogRecord) -> bytes:
        """The record as one UTF-8 line of the file, its line end included (``format``'s
        text, encoded once by orjson)."""
        if _NEWLINE == b"\n":
            return orjson.dumps(self._fields(record), option=orjson.OPT_APPEND_NEWLINE)
        return orjson.dumps(self._fields(record)) + _NEWLINE

    @staticmethod
    def _fields(record: logging.LogRecord) -> dict[str, Any]:
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
        return line


class HumanFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        self._second: tuple[int, str | None, str] = (-1, None, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """As ``logging.Formatter.formatTime``; with a ``datefmt`` (``format`` passes
        "%H:%M:%S": whole seconds, as ``converter`` takes them) made once per second."""
        if datefmt is None:
            return super().formatTime(record, datefmt)  # with milliseconds: not cached
        second = math.floor(record.created)
        cached = self._second
        if cached[0] != second or cached[1] != datefmt:
            cached = self._second = (second, datefmt, super().formatTime(record, datefmt))
        return cached[2]

    def formatMessage(self, record: logging.LogRecord) -> str:
        # One record, one line: a line break or control character in the message (text a
        # relay sent, a job id, a source name) is escaped, never a forged line of its own.
        if not record.message.isprintable():
            record = copy.copy(record)
            record.message = _one_line(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        job = getattr(record, "jobId", None)
        return f"{text} [{_one_line(str(job))}]" if job else text


def _one_line(text: str) -> str:
    """``text`` with its control characters escaped (``\\n``, ``\\x1b``)."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """``logging.StreamHandler`` without its flush after each line when the stream is
    line-buffered (``sys.stderr`` is, since Python 3.9): writing the line end flushed it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = self.stream
            stream.write(self.format(record) + self.terminator)
            if not getattr(stream, "line_buffering", False):
                self.flush()
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - as logging.StreamHandler.emit
            self.handleError(record)


class RotatingJsonFile(logging.Handler):
    """The local JSON-lines log, rotated like ``logging.handlers.RotatingFileHandler``:
    before a line that would bring the file to ``max_bytes`` or more, ``agent.log`` becomes
    ``agent.log.1`` (``.1`` becomes ``.2`` ... up to ``backup_count``, the oldest dropped)
    and a new file is started. Cheaper per line than that class, which (CPython 3.11)
    checks the path twice with ``stat``, seeks to the end and formats every record twice:
    here each line is formatted and encoded once and written with one unbuffered write,
    and the file's size is counted as it is written (checked against the file itself only
    when the count says it is time to rotate, in case something else wrote or truncated
    it). Sizes are bytes as written. An empty file is never rotated (a single line longer
    than the limit goes into it, as newer CPythons do), nor anything that is not a regular
    file (``/dev/null``)."""

    def __init__(self, filename: Path | str, max_bytes: int, backup_count: int, *, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.baseFilename = os.path.abspath(os.fspath(filename))
        self.maxBytes = max_bytes
        self.backupCount = backup_count
        self._file: io.FileIO | None = None
        self._size = 0
        self._regular = True
        self._full = False  # writes failing for want of space (said once)
        self._open()

    def _open(self) -> io.FileIO:
        f = io.FileIO(self.baseFilename, "ab")
        st = os.fstat(f.fileno())
        self._regular = stat.S_ISREG(st.st_mode)
        self._size = st.st_size
        self._file = f
        return f

    def emit(self, record: logging.LogRecord) -> None:
        try:
            formatter = self.formatter
            if isinstance(formatter, JsonFormatter):
                data = formatter.line(record)
            else:
                data = self.format(record).encode("utf-8") + _NEWLINE
            f = self._file if self._file is not None else self._open()
            if self.maxBytes > 0 and self._size + len(data) >= self.maxBytes and self._regular:
                self._size = os.fstat(f.fileno()).st_size  # the count, checked once
                if self._size and self._size + len(data) >= self.maxBytes:
                    f = self.doRollover()
            view = memoryview(data)
            while view:
                n = f.write(view)
                if not n:
                    raise OSError("the log file took no bytes")
                view = view[n:]
            self._size += len(data)
            self._full = False
        except RecursionError:
            raise
        except OSError as exc:
            if not is_disk_full(exc):
                self.handleError(record)
            elif not self._full:  # once (stderr: the journal), not a traceback per line
                self._full = True
                with contextlib.suppress(Exception):
                    sys.stderr.write(f"mini-connector: the disk is full: cannot write {self.baseFilename}; "
                                     "lines still go to stderr and the relay until space is freed\n")  # fmt: skip
        except Exception:  # noqa: BLE001 - as logging's handlers: report, never raise
            self.handleError(record)

    def doRollover(self) -> io.FileIO:
        """Shift the backups (as ``RotatingFileHandler.doRollover``) and start a new file."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.backupCount > 0:
            for i in range(self.backupCount - 1, 0, -1):
                src, dst = f"{self.baseFilename}.{i}", f"{self.baseFilename}.{i + 1}"
                if os.path.exists(src):
                    if os.path.exists(dst):
                        os.remove(dst)
                    os.rename(src, dst)
            dst = self.baseFilename + ".1"
            if os.path.exists(dst):
                os.remove(dst)
            os.rename(self.baseFilename, dst)
        return self._open()

    def flush(self) -> None:
        """Nothing to do: every line is written unbuffered."""

    def close(self) -> None:
        self.acquire()
        try:
            if self._file is not None:
                self._file.close()
                self._file = None
        finally:
            self.release()
            super().close()


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


_LEVELS = LOG_LEVELS


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
        err = StderrHandler(sys.stderr)
        err.setLevel(level)  # a raised shipped level lowers the root, not this
        err.setFormatter(HumanFormatter())
        err.addFilter(stamp)
        err.addFilter(redactor)
        root.addHandler(err)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        ids.seed(newest_id(log_file))  # ids keep growing across restarts
        fh = RotatingJsonFile(log_file, LOG_MAX_BYTES, LOG_BACKUPS)
        fh.setLevel(level)
        fh.setFormatter(JsonFormatter())
        fh.addFilter(stamp)
        fh.addFilter(redactor)
        root.addHandler(fh)
    ship = ShipBuffer(log_file=log_file, ids=ids, base_level=level)
    root.addHandler(ship)
    logging.getLogger("websockets").setLevel(logging.WARNING)
    return ship
