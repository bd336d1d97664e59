"""How database values become JSON-safe, and how rows travel in chunks.

Contract §2 (Jobs): decimals as strings (exact), dates and times ISO 8601, bytes base64,
NULL as null. Rows are encoded a batch at a time with orjson, which handles ints, floats,
strings, datetimes and UUIDs natively; ``_default`` covers the rest.

A chunk payload takes one of two forms, told apart by its first byte:

- ``[``: a JSON array of arrays, ``[[v1,v2],[v3,v4]]`` (``encode_rows``); the relay builds
  the objects when it serves NDJSON. Used when the column names are not unique.
- ``{``: object lines, one JSON object per row keyed by the column names in column order,
  each line ending in ``\n`` (``encode_objects``, or PostgreSQL's COPY in the agent); the
  relay serves these bytes verbatim as NDJSON.

An empty payload holds no rows.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import math
import re
import threading
import uuid
from collections.abc import Iterable, Sequence
from itertools import repeat
from typing import Any

import orjson

_ORJSON_OPTS = orjson.OPT_PASSTHROUGH_SUBCLASS


def _unicode(text: str) -> str:
    """``text`` as valid Unicode: a lone UTF-16 surrogate (a PostgreSQL json value can hold
    one as ``\\ud800``, SQL Server's nvarchar too) becomes U+FFFD, as a UTF-16 decoder
    replaces it; a pair held as two code points becomes its character. (orjson refuses to
    write such a string, and the whole job failed on it.)"""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


def json_safe(value: Any) -> Any:
    """One value in its JSON-safe form (used where rows are not encoded by ``encode_rows``)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return _unicode(value)
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
        return {_unicode(str(k)): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in value]
    return str(value)


def _decimal(value: decimal.Decimal) -> str | None:
    if not value.is_finite():
        return None if value.is_nan() else str(value)
    return format(value, "f")


def _duration(value: dt.timedelta) -> str:
    """ISO 8601 duration, exact to the microsecond, e.g. ``P1DT2H3M4.5S``; negative
    durations get a leading minus (``-P0DT0H1M30S``): days, hours, minutes and seconds of
    the magnitude, the seconds' fraction without trailing zeros.

    Made from the timedelta's integers (until 2026-12 durations past 2**32 seconds went
    through a float and could lose their last digits; the COPY path writes this text in
    SQL, ``agent.sources.pgcopy._interval``)."""
    days, secs = value.days, value.seconds
    micro = value.microseconds
    if days >= 0:  # the usual case: the fields are the magnitude's
        sign = ""
    else:
        sign = "-"
        n = -((days * 86400 + secs) * 1_000_000 + micro)
        secs, micro = divmod(n, 1_000_000)
        days, secs = divmod(secs, 86400)
    sec = secs % 60
    text = f"{sec}.{micro:06d}".rstrip("0") if micro else str(sec)
    return f"{sign}P{days}DT{secs // 3600}H{secs // 60 % 60}M{text}S"


def _default(value: Any) -> Any:
    # orjson calls this for anything it cannot encode natively; the usual types by a
    # lookup of their exact type, the rest (subclasses too) by the isinstance chain.
    fast = _BY_TYPE.get(type(value))
    if fast is not None:
        return fast(value)
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


def _b64(value: bytes | bytearray | memoryview) -> str:
    return base64.b64encode(value).decode("ascii")


_BY_TYPE: dict[type, Any] = {
    decimal.Decimal: _decimal,
    bytes: _b64,
    bytearray: _b64,
    memoryview: lambda v: _b64(bytes(v)),
    dt.timedelta: _duration,
}


def encode_rows(rows: Sequence[Sequence[Any]]) -> bytes:
    """A batch of rows (sequences in column order) as a JSON array of arrays."""
    try:
        return orjson.dumps(rows, default=_default, option=_ORJSON_OPTS)
    except TypeError:
        # NaN/Infinity floats or exotic nesting: fall back to the careful path.
        return orjson.dumps([[json_safe(v) for v in row] for row in rows])


def object_lines(names: Sequence[str], dicts: Sequence[dict[str, Any]], *, default: Any = None,
                 option: int | None = None) -> bytes:  # fmt: skip
    """Dicts (keyed by ``names``, in order) as newline-terminated JSON object lines.

    Fast path: one ``orjson.dumps`` over the whole list, then the separators between
    objects, ``},{"<first name>":``, become newlines. That byte sequence cannot occur
    inside a string (orjson writes ``"`` there as ``\\"``); a nested value can hold it (a
    JSON column of objects keyed like the first column), which only adds to the count:
    exactly ``len(dicts) - 1`` separators, or the dicts are encoded one by one instead.
    orjson writes no whitespace, so no line holds a raw newline.
    """
    if not dicts:
        return b""
    dumps = orjson.dumps
    if names:
        key = dumps(names[0]) + b":"
        sep = b"},{" + key
        body = dumps(dicts, default=default, option=option)[1:-1]
        if body.count(sep) == len(dicts) - 1:
            return body.replace(sep, b"}\n{" + key) + b"\n"
    opt = (option or 0) | orjson.OPT_APPEND_NEWLINE
    return b"".join([dumps(d, default=default, option=opt) for d in dicts])


def unique_names(names: Sequence[str]) -> bool:
    """Whether rows can travel as objects keyed by ``names`` (some, none repeated)."""
    return bool(names) and len(set(names)) == len(names)


def encode_objects(names: Sequence[str], rows: Sequence[Sequence[Any]]) -> bytes:
    """A batch of rows as object lines keyed by ``names`` (which must be unique); every
    value is encoded exactly as ``encode_rows`` encodes it."""
    if len(names) == 1 and all(rows):
        name = names[0]
        dicts = [{name: row[0]} for row in rows]
    else:  # map, not a comprehension of dict(zip(...)): ~2x faster per row
        dicts = list(map(dict, map(zip, repeat(names), rows)))
    try:
        return object_lines(names, dicts, default=_default, option=_ORJSON_OPTS)
    except TypeError:
        # NaN/Infinity floats or exotic nesting: fall back to the careful path.
        return object_lines(names, [{k: json_safe(v) for k, v in d.items()} for d in dicts])


def is_object_lines(payload: bytes) -> bool:
    return payload[:1] == b"{"


def object_lines_count(payload: bytes, names: Sequence[str] | None = None, expected: int | None = None) -> int:
    """How many rows an object-lines payload holds, after checking it exactly: every line
    (``\n``-terminated, the last one too) is one JSON object, and the first line's keys
    are ``names`` in order (when ``names`` is given). ``ValueError`` says what is wrong.

    Joining the lines with commas and parsing once can be fooled (a newline inside a
    value plus a comma between two objects on one line keeps the count right); so each
    line is parsed on its own, or, for short lines, two parses of the whole payload prove
    the same (``_whole_payload_check``). Without ``names``, simdjson validates without
    building Python objects (~0.35 us a row against ~0.7 us with orjson, which builds a
    dict per row); with ``names`` (a reader's check of one line), orjson. ``expected``: the count
    the sender declared, if any (it only chooses how to check; the count is what is found).
    """
    if payload[-1:] != b"\n":
        raise ValueError("the last object line does not end with a newline")
    if names is None:
        return _validated_lines(payload, expected)
    loads = orjson.loads
    try:
        objs = list(map(loads, payload[:-1].split(b"\n")))
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"an object line is not valid JSON ({exc})") from None
    for i, obj in enumerate(objs):
        if type(obj) is not dict:
            raise ValueError(f"object line {i + 1} is not a JSON object")
    if names is not None and list(objs[0]) != list(names):
        raise ValueError("the first object line's keys are not the job's column names in order")
    return len(objs)


def _validated_lines(payload: bytes, expected: int | None = None) -> int:
    """The number of lines of ``payload`` (object lines, ``\n``-terminated), each checked
    to be one JSON object by simdjson: C parses, no Python object per value.

    Each line parsed on its own costs ~0.1 us a line in calls plus the parse. On short
    lines (one narrow column) two parses of the whole payload cost less and prove the same
    when they can (``_whole_payload_check``: 0.07-0.12 against 0.17 us a line, 15-45 bytes
    a line); on longer lines parsing twice costs more than the calls save (bench/intake.py).
    Line by line is also what says which line is wrong."""
    import simdjson  # the relay's intake needs it; the agent never calls this

    lines = expected if expected is not None else payload.count(b"\n")
    if len(payload) <= _WHOLE_BYTES_PER_LINE * lines:
        n = _whole_payload_check(payload, simdjson, expected)
        if n is not None:
            return n
    return _each_line_check(payload, simdjson)


def _each_line_check(payload: bytes, simdjson: Any) -> int:
    parser = simdjson.Parser()
    obj_type = simdjson.Object
    n = 0
    for line in payload[:-1].split(b"\n"):
        n += 1
        try:
            ok = type(parser.parse(line)) is obj_type  # the document must not outlive the
        except (ValueError, RuntimeError) as exc:  # next parse: nothing keeps a reference to it
            # (simdjson raises RuntimeError for an integer past 64 bits and for nesting
            # past 1024 levels: refused as well, never a failure of the relay's own)
            raise ValueError(f"object line {n} is not valid JSON ({exc})") from None
        if not ok:
            raise ValueError(f"object line {n} is not a JSON object")
    return n


# ``]``, ``,``, ``[`` with only JSON's blanks other than the newline between: the one shape
# that could stand between two of ``_whole_payload_check``'s wrapped lines inside a line.
_WRAPPED_SEPARATOR = re.compile(rb"\][ \t\r]*,[ \t\r]*\[")
# A line (past the first) that does not start with ``{``, an empty one included: half the
# time of ``count(b"\n{")`` (CPython's two-byte search), ~8 ns a 16-byte line.
_NOT_AN_OBJECT_LINE = re.compile(rb"\n[^{]")
_WHOLE_BYTES_PER_LINE = 48  # up to this many bytes a line on average, the whole-payload proof first
# ... and up to this size: a parser's memory grows with the document (~16 MiB for 1 MiB of
# one-number lines, ~120 MiB for 8 MiB), and each chunk thread keeps its parser. Agents cut
# chunks near 512 KiB; a larger one (a hostile agent's 8 MiB) is checked line by line.
_WHOLE_MAX_BYTES = 1 << 20
_parsers = threading.local()


def _whole_payload_check(payload: bytes, simdjson: Any, expected: int | None = None) -> int | None:
    """The line count of ``payload`` when two parses of all of it prove that each of its
    N lines (``L1..LN``, newline-terminated, none empty) is one JSON object; None when
    they do not (the caller then checks line by line, which also says what is wrong).

    ``A = [L1\n,L2\n,...LN]`` and ``B = [[L1]\n,[L2]\n,...[LN]]`` must parse as arrays of
    N elements, every line must start with ``{``, and ``_WRAPPED_SEPARATOR`` must not occur.
    Why that is exact: a raw newline cannot be inside a JSON string, so each inserted
    newline is whitespace and the brackets and commas around it are tokens; every string
    is within one line. In B, an element boundary is a comma at depth 1 between a ``]``
    and a ``[``; one inside some line would put the separator's bytes there (the text
    between the three tokens cannot reach past the line: the inserted tokens around it
    would make ``[,`` or ``,]``). So B's N-1 boundaries are the inserted ones and each
    ``[Li]`` is an array: each line is k_i >= 1 comma-separated values. A holds all of
    them, sum(k_i) elements; that being N makes every k_i 1, and a value starting with
    ``{`` is an object. N is ``expected`` (the count the sender declared) when given, else
    the newlines counted: B has one element a line whatever N is, so a wrong ``expected``
    is declined, never returned. tests/shared/test_object_lines.py holds this to the
    line-by-line check on generated payloads built to fool it."""
    if len(payload) > _WHOLE_MAX_BYTES:
        return None
    n = payload.count(b"\n") if expected is None else expected
    if payload[:1] != b"{" or _NOT_AN_OBJECT_LINE.search(payload):
        return None
    body = payload[:-1]
    if b"]" in body and _WRAPPED_SEPARATOR.search(body):
        return None
    parser = getattr(_parsers, "parser", None)
    if parser is None:
        parser = _parsers.parser = simdjson.Parser()
    array = simdjson.Array
    try:
        doc = parser.parse(b"[" + body.replace(b"\n", b"\n,") + b"]")
        ok = type(doc) is array and len(doc) == n
        del doc  # a parser is reused only once no document of it is alive
        if not ok:
            return None
        doc = parser.parse(b"[[" + body.replace(b"\n", b"]\n,[") + b"]]")
        ok = type(doc) is array and len(doc) == n
        del doc
    except (ValueError, RuntimeError):  # RuntimeError: see _each_line_check
        return None
    return n if ok else None


def first_keys(payload: bytes) -> list[str] | None:
    """The keys of an object-lines payload's first line (None if it is not an object)."""
    try:
        obj = orjson.loads(payload[: payload.find(b"\n") + 1 or None])
    except orjson.JSONDecodeError:
        return None
    return list(obj) if type(obj) is dict else None


def drop_lines(payload: bytes, n: int) -> bytes:
    """``payload`` (object lines) without its first ``n`` lines."""
    if n <= 0:
        return payload
    parts = payload.split(b"\n", n)
    return parts[n] if len(parts) > n else b""


def decode_object_lines(payload: bytes) -> list[dict[str, Any]]:
    """The objects of an object-lines payload that was checked already (intake did)."""
    if not payload:
        return []
    objs = orjson.loads(b"[" + payload[:-1].replace(b"\n", b",") + b"]")
    if not isinstance(objs, list) or not all(type(o) is dict for o in objs):
        raise ValueError("a chunk must hold JSON object lines")
    return objs


def decode_payload(payload: bytes) -> list[list[Any]]:
    """The rows of a payload of either form, as lists of values in column order."""
    if is_object_lines(payload):
        return [list(o.values()) for o in decode_object_lines(payload)]
    return decode_rows(payload) if payload else []


def payload_rows(payload: bytes, expected: int, names: Sequence[str] | None = None) -> int:
    """How many rows a chunk payload holds, by its form (first byte); ``ValueError`` if it
    is malformed. Arrays: ``row_count`` (cheap, opaque). Object lines: parsed and checked
    (``object_lines_count``). Empty: none."""
    if not payload:
        return 0
    if is_object_lines(payload):
        return object_lines_count(payload, names, expected)
    held = row_count(payload, expected)
    if held is None:
        raise ValueError("chunk payload is not a JSON array of rows")
    return held


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
    when a reader parses it (``relay.jobs.results`` checks every chunk's row count).
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
