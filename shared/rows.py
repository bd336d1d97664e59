"""How database values become JSON-safe, and how rows travel in chunks.

Contract §2 (Jobs): decimals as strings (exact), dates and times ISO 8601, bytes base64,
NULL as null. Rows travel as arrays (column names are sent once per job) and are encoded
a batch at a time with orjson, which handles ints, floats, strings, datetimes and UUIDs
natively; ``_default`` covers the rest.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import math
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

_ORJSON_OPTS = orjson.OPT_PASSTHROUGH_SUBCLASS


def json_safe(value: Any) -> Any:
    """One value in its JSON-safe form (used where rows are not encoded by ``encode_rows``)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        # orjson encodes 64-bit integers only; larger ones stay exact as strings.
        return value if -(2**63) <= value < 2**64 else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, decimal.Decimal):
        return _decimal(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return _duration(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in value]
    return str(value)


def _decimal(value: decimal.Decimal) -> str | None:
    if not value.is_finite():
        return None if value.is_nan() else str(value)
    return format(value, "f")


def _duration(value: dt.timedelta) -> str:
    """ISO 8601 duration, e.g. ``P1DT2H3M4.5S``; negative durations get a leading minus."""
    total = value.total_seconds()
    sign = "-" if total < 0 else ""
    total = abs(total)
    days, rem = divmod(total, 86400)
    hours, rem = divmod(rem, 3600)
    minutes, seconds = divmod(rem, 60)
    sec = f"{seconds:.6f}".rstrip("0").rstrip(".")
    return f"{sign}P{int(days)}DT{int(hours)}H{int(minutes)}M{sec}S"


def _default(value: Any) -> Any:
    # orjson calls this for anything it cannot encode natively.
    if isinstance(value, decimal.Decimal):
        return _decimal(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dt.timedelta):
        return _duration(value)
    if isinstance(value, (set, frozenset)):
        return list(value)
    if isinstance(value, float):  # float subclasses
        return float(value) if math.isfinite(value) else None
    return str(value)


def encode_rows(rows: Sequence[Sequence[Any]]) -> bytes:
    """A batch of rows (sequences in column order) as a JSON array of arrays."""
    try:
        return orjson.dumps(rows, default=_default, option=_ORJSON_OPTS)
    except TypeError:
        # NaN/Infinity floats or exotic nesting: fall back to the careful path.
        return orjson.dumps([[json_safe(v) for v in row] for row in rows])


def decode_rows(data: bytes) -> list[list[Any]]:
    rows = orjson.loads(data)
    if not isinstance(rows, list):
        raise ValueError("a chunk must hold a JSON array of rows")
    return rows


def row_count(payload: bytes, expected: int) -> int | None:
    """How many rows a chunk payload holds; None if it is not a JSON array of arrays.

    Cheap when the payload is what an agent's orjson makes: if the number of ``],[``
    separators says ``expected``, no parse is needed (0.3 ms instead of 3 ms for 500 KB).
    Otherwise (strings or nested arrays holding ``],[``, or a wrong count) the payload is
    parsed and counted exactly. A payload crafted to fool the cheap count is still caught
    when a reader parses it (``relay.results`` checks every chunk's row count).
    """
    body = payload.strip(b" \t\r\n")
    if body[:1] != b"[" or body[-1:] != b"]":
        return None
    if body[1:-1].strip(b" \t\r\n") == b"":
        return 0
    if expected > 0 and body[:2] == b"[[" and body[-2:] == b"]]" and body.count(b"],[") + 1 == expected:
        return expected
    try:
        rows = decode_rows(payload)
    except ValueError:
        return None
    return len(rows) if all(isinstance(r, list) for r in rows) else None


def batched(rows: Iterable[Sequence[Any]], size: int) -> Iterable[list[Sequence[Any]]]:
    batch: list[Sequence[Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


# Column types as the contract shows them: a small, stable vocabulary.
COLUMN_TYPES = (
    "integer", "number", "decimal", "string", "boolean", "date", "datetime", "time",
    "interval", "bytes", "uuid", "json", "array", "unknown",
)  # fmt: skip


def type_name_for_python(value: Any) -> str:
    """Best-effort column type from a sample Python value (used when a driver says nothing)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, decimal.Decimal):
        return "decimal"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dt.datetime):
        return "datetime"
    if isinstance(value, dt.date):
        return "date"
    if isinstance(value, dt.time):
        return "time"
    if isinstance(value, dt.timedelta):
        return "interval"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "bytes"
    if isinstance(value, uuid.UUID):
        return "uuid"
    if isinstance(value, dict):
        return "json"
    if isinstance(value, (list, tuple)):
        return "array"
    return "unknown"
