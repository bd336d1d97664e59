"""json and jsonb columns on the COPY fast path (``pgcopy``'s text form).

A json or jsonb value is JSON already: PostgreSQL writes its text into the object line
(``pgcopy._json``) and the agent parses nothing. The cursor path reads the value into
Python (``pgconn.JsonLoader``) and writes it again; the two agree after parsing (the
hard rule of tests/agent/sources/test_pg_copy.py), except in what no reader sees:
whitespace between tokens, and a repeated key, which the text keeps and every parser
reads as its last value (as the cursor path writes it). Three cases need more than that,
and a buffer is checked for each with ``bytes`` operations, in C:

- **Whitespace that ends a line.** A ``json`` value keeps its input text, raw newlines,
  tabs and carriage returns between tokens included (a JSON string cannot hold them raw,
  and PostgreSQL refuses such input). COPY writes them as ``\\n``, ``\\r``, ``\\t``; the
  agent writes a space for each (``unescaped``), and undoes COPY's ``\\\\`` as the text
  form always does. Nothing else on the line can hold a control character raw: keys and
  text values are written by ``to_json`` or ``orjson``, which escape them.
- **Values a JSON reader cannot hold.** An integer past 64 bits, a number past a
  double's range (``1e400``), an escaped lone surrogate (``"\\ud800"``), nesting past
  1000 levels: PostgreSQL's ``json`` keeps them, many readers (the relay's row check,
  orjson) refuse them, and the cursor path writes them as ``json.loads`` reads them (a
  big integer as a string, ``1e400`` as null, a lone surrogate as U+FFFD). A line that
  may hold one (``_may_need_reading``: 19 digits in a row, an exponent of three digits,
  ``\\ud``, or more than 1000 brackets; text values can trip it too, which only costs the
  reading) is read by ``json.loads`` and written again as the cursor path writes it
  (``_rewritten``).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from shared.errors import JobError
from shared.rows import json_safe

# json, jsonb
OIDS = frozenset({114, 3802})

_DIGITS = bytes.maketrans(b"123456789E", b"000000000e")
_NINETEEN = b"0" * 19
_EXPONENTS = (b"e000", b"e+000", b"e-000")
MAX_BRACKETS = 1000  # below the relay's row check's nesting limit (1024)


def unescaped(payload: bytes) -> bytes:
    """COPY's text-form escapes undone: ``\\\\`` is a backslash; ``\\n``, ``\\r``, ``\\t``
    (whitespace inside a json value) a space. Any other escape fails the job. (A doubled
    backslash is held as NUL meanwhile: PostgreSQL's text cannot hold one.)"""
    if b"\\" not in payload:
        return payload
    if payload.count(b"\\") == 2 * payload.count(b"\\\\"):  # only doubled backslashes
        return payload.replace(b"\\\\", b"\\")
    held = payload.replace(b"\\\\", b"\x00")
    held = held.replace(b"\\n", b" ").replace(b"\\r", b" ").replace(b"\\t", b" ")
    if b"\\" in held or b"\x00" in payload:
        raise JobError("QUERY_FAILED", "the COPY output held a control character outside a JSON string")
    return held.replace(b"\x00", b"\\")


def _may_need_reading(data: bytes) -> bool:
    """Whether ``data`` may hold a value a reader cannot take (nesting aside)."""
    zeroed = data.translate(_DIGITS)
    return _NINETEEN in zeroed or any(e in zeroed for e in _EXPONENTS) or b"\\ud" in data or b"\\uD" in data


def _deep(line: bytes) -> bool:
    return line.count(b"[") + line.count(b"{") > MAX_BRACKETS


def _rewritten(line: bytes) -> bytes:
    """One object line as the cursor path writes it: read by ``json.loads`` (big integers
    exact, ``1e400`` infinite, lone surrogates kept), each value made JSON-safe."""
    try:
        row = json.loads(line)
    except (ValueError, RecursionError):
        raise JobError("QUERY_FAILED", "a row's JSON could not be read (nested too deep?)") from None
    try:
        return orjson.dumps({k: json_safe(v) for k, v in row.items()})
    except (TypeError, RecursionError):
        raise JobError("QUERY_FAILED", "a JSON value nests too deep to be written") from None


def checked(payload: bytes) -> bytes:
    """Object lines (undone from COPY's escapes) with each line that may hold a value a
    reader cannot take written again as the cursor path writes it."""
    payload = unescaped(payload)
    lines: list[bytes] | None = None
    if not _may_need_reading(payload):
        if not _deep(payload):
            return payload
        lines = payload.split(b"\n")  # only a line longer than the limit can be that deep
        if max(map(len, lines)) <= MAX_BRACKETS:
            return payload
    if lines is None:
        lines = payload.split(b"\n")
    lines.pop()  # after the last newline
    out = [_rewritten(line) if _may_need_reading(line) or _deep(line) else line for line in lines]
    out.append(b"")
    return b"\n".join(out)


def expression(x: str, _session: Any = None) -> str:
    """The SQL of one json or jsonb value's JSON: its text (SQL NULL as null)."""
    return f"coalesce({x}::text, 'null')"
