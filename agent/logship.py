"""Shipping log lines to the relay: stable line ids, catch-up from the local file, no duplicates.

Every log record gets an id when it is first handled (``StampFilter``): an integer that
only grows (microseconds since the epoch, bumped past the last one given and past the
newest id in the local log at start-up). The JSON-lines file and the ship buffer carry
the same id for the same line.

The relay's ``relay.welcome.v1`` says ``logsThrough``: the newest line id it stores for
this connector. ``ship_forever`` first catches up from the local log files (the current
one and its rotations) with every line after that id, at or above the shipped level: the
lines logged while disconnected, or dropped from the bounded buffer, or sent just before a
cut and never stored. Then it ships the buffer, skipping lines already sent. The relay
stores a line once per id, so a resend is harmless. Catch-up is bounded: at most
``CATCH_UP_LINES`` lines (the relay keeps 10,000 anyway) no older than ``CATCH_UP_AGE``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import orjson

from shared.protocol import LOG_LEVEL_NUMBERS


class ShipSource(Protocol):
    """What the shipper needs of the buffer it ships (``logs.ShipBuffer`` has this shape)."""

    log_file: Any
    level: int
    dropped: int

    def take(self, limit: int = ...) -> list[dict[str, Any]]: ...

    def put_back(self, lines: list[dict[str, Any]]) -> None: ...

CATCH_UP_LINES = 10_000
CATCH_UP_AGE = 24 * 3600.0
BATCH_LINES = 1000  # agent.logs.v1 holds at most 1000 lines
BATCH_BYTES = 512 * 1024  # well under the 1 MiB text frame
SHIP_EVERY = 1.0
LEVEL_NO = LOG_LEVEL_NUMBERS
SKIPPED_LOGGERS = ("websockets",)  # the transport's own chatter is not the connector's log
Send = Callable[[list[dict[str, Any]]], Awaitable[None]]


class LineIds:
    """Increasing integer ids, safe across threads and across restarts (see module doc)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._last = 0
        self._mutex = threading.Lock()

    def seed(self, last: int | None) -> None:
        with self._mutex:
            self._last = max(self._last, last or 0)

    def next(self) -> int:
        with self._mutex:
            self._last = max(self._last + 1, int(self._clock() * 1_000_000))
            return self._last


class StampFilter(logging.Filter):
    """Gives a record its line id the first time any handler sees it."""

    def __init__(self, ids: LineIds) -> None:
        super().__init__()
        self.ids = ids

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "lineId", None) is None:
            record.lineId = self.ids.next()
        return True


def _files(log_file: Path) -> list[Path]:
    """The log and its rotations, newest first (agent.log, agent.log.1, ...)."""
    rotated = sorted(
        (p for p in log_file.parent.glob(log_file.name + ".*") if p.suffix[1:].isdigit()),
        key=lambda p: int(p.suffix[1:]),
    )
    return [log_file, *rotated]


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        line = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None  # a line cut by a crash, or not ours
    return line if isinstance(line, dict) and isinstance(line.get("id"), int) else None


def newest_id(log_file: Path) -> int | None:
    """The id of the newest line in the current log (read from its end)."""
    try:
        with log_file.open("rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 256 * 1024))
            tail = f.read().splitlines()
    except OSError:
        return None
    for raw in reversed(tail):
        line = _parse(raw)
        if line is not None:
            return int(line["id"])
    return None


def read_since(
    log_file: Path, after: int | None, min_level: int, *,
    max_lines: int = CATCH_UP_LINES, max_age: float = CATCH_UP_AGE, now: float | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Shippable lines of the local log with an id above ``after``, oldest first, as the
    buffer would have shipped them (``ShipBuffer.emit``'s shape). Blocking: call in a thread."""
    floor_id = int(((now or time.time()) - max_age) * 1_000_000)
    after = max(after if after is not None else -1, floor_id)
    per_file: list[list[dict[str, Any]]] = []  # newest file first
    total = 0
    for path in _files(log_file):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        found, older_than_cursor = [], False
        for raw in data.splitlines():
            line = _parse(raw)
            if line is None:
                continue
            if line["id"] <= after:
                older_than_cursor = True
                continue
            if LEVEL_NO.get(line.get("level", ""), 20) < min_level:
                continue
            if str(line.get("logger", "")).startswith(SKIPPED_LOGGERS):
                continue
            found.append(_shippable(line))
        per_file.append(found)
        total += len(found)
        if older_than_cursor or total >= max_lines:
            break  # older files hold only older lines (or more than we will send)
    lines = [x for found in reversed(per_file) for x in found]
    return sorted(lines, key=lambda x: x["id"])[-max_lines:] if max_lines > 0 else []


def _shippable(line: dict[str, Any]) -> dict[str, Any]:
    level = line.get("level")
    return {
        "id": line["id"],
        "timestamp": str(line.get("timestamp", ""))[:64],
        "level": level if level in LEVEL_NO else "INFO",
        "message": str(line.get("message", ""))[:16_000],
        "logger": str(line.get("logger", ""))[:200] or None,
        "jobId": line.get("jobId"),
    }


def _batches(lines: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    out: list[list[dict[str, Any]]] = []
    batch: list[dict[str, Any]] = []
    size = 0
    for line in lines:
        n = len(line["message"]) + 200
        if batch and (len(batch) >= BATCH_LINES or size + n > BATCH_BYTES):
            out.append(batch)
            batch, size = [], 0
        batch.append(line)
        size += n
    if batch:
        out.append(batch)
    return out


async def ship_forever(send: Send, buffer: ShipSource, through: int | None) -> None:
    """Catch up from the local log after ``through``, then ship the buffer, forever.
    ``send`` raises when the connection is gone; live lines not sent go back in the buffer
    (the file has them too: the next connection's catch-up finds them)."""
    sent = through if through is not None else -1
    catch_up, dropped_seen = True, buffer.dropped
    held: list[dict[str, Any]] = []  # taken from the buffer, to merge with the next catch-up
    while True:
        if catch_up and buffer.log_file is not None:
            lines = await asyncio.to_thread(read_since, buffer.log_file, sent, buffer.level)
            if held:  # the file lacks a line shipped at a raised level (DEBUG): keep ours
                have = {x["id"] for x in lines}
                lines = sorted([*lines, *(x for x in held if x["id"] > sent and x["id"] not in have)],
                               key=lambda x: x["id"])  # fmt: skip
            try:
                for batch in _batches(lines):
                    await send(batch)
                    sent = batch[-1]["id"]
            except BaseException:
                buffer.put_back([x for x in held if x["id"] > sent])
                raise
            held = []
        catch_up = False
        taken = buffer.take(BATCH_LINES)
        if buffer.dropped != dropped_seen and buffer.log_file is not None:
            # The buffer overflowed: the lines it dropped may be older than the ones just
            # taken. Sending these would move ``sent`` past the dropped ones, so the file
            # (which has every line) supplies them, in order, merged with these.
            dropped_seen, catch_up = buffer.dropped, True
            held = [x for x in taken if x.get("id") is not None]
            continue
        live = [x for x in taken if x.get("id") is None or x["id"] > sent]
        for i, batch in enumerate(_batches(live)):
            try:
                await send(batch)
            except BaseException:
                buffer.put_back([x for b in _batches(live)[i:] for x in b])
                raise
            sent = max(sent, *(x["id"] or 0 for x in batch))
        if buffer.dropped != dropped_seen:  # the buffer overflowed: the file has the lines
            dropped_seen, catch_up = buffer.dropped, True
            continue
        if not len(buffer):
            await asyncio.sleep(SHIP_EVERY)
