"""json and jsonb columns on the COPY fast path (``pgcopy``'s text form).

A json or jsonb value is JSON already: PostgreSQL writes its text into the object line
(``expression``) and the agent parses nothing. The cursor path reads the value into
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
  may hold one (``_unreadable_at``: a number with 19 digits before its point or an
  exponent of 290 or more, ``\\ud8``-``\\udf``; or more than 1000 brackets; a string
  can trip it too, which only costs the reading) is read by ``json.loads`` and written again as the
  cursor path writes it (``_rewritten``).
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

from shared.errors import JobError
from shared.rows import json_safe

JSON, JSONB = 114, 3802
OIDS = frozenset({JSON, JSONB})

# What a reader may not hold: a number with 19 digits before its point (an integer past 64
# bits), or with an exponent of 290 or more (past a double's range with any shorter
# mantissa); an escaped surrogate (a lone one is refused). Found with ``bytes.find`` on a
# digit-blind copy (``_DIGITS``: ``e000``, ``e+000``, 19 zeros), each place then held to a
# number's start (after ``:``, ``[`` or ``,`` and blanks), so hex in a string (an md5's
# ``3e400``, a uuid's ``-8e885``) is not taken for a number. (A regex scan, ``[0-9]{19}``,
# cost ~18 ns a byte where digits are common: more than reading the row again.)
_DIGITS = bytes.maketrans(b"123456789E", b"000000000e")
_NINETEEN = b"0" * 19
_LONG_RUN = re.compile(rb"0{19,}")
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")
_MANTISSA = frozenset(b"0123456789.")
_DIGIT = frozenset(b"0123456789")
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


def _starts_number(data: bytes, i: int) -> bool:
    """Whether a JSON number may start at ``i``: after ``:``, ``,`` or ``[``, then blanks
    and a minus (``bytes`` methods, in C)."""
    return data[max(0, i - 40) : i].rstrip(b" \t\r-")[-1:] in (b":", b",", b"[")


def _exponent_of_number(data: bytes, e: int) -> bool:
    """Whether the ``e`` at ``e`` ends a number's mantissa (digits and a point, a digit
    first) and starts an exponent of 290 or more."""
    head = data[max(0, e - 400) : e]
    before = head.rstrip(b"0123456789.")
    if len(before) == len(head) or head[len(before)] not in _DIGIT or not _starts_number(before, len(before)):
        return False
    tail = data[e + 1 : e + 16].lstrip(b"+")
    return int(tail[: len(tail) - len(tail.lstrip(b"0123456789"))]) >= 290


def _places(zeroed: bytes, needle: bytes) -> list[int]:
    found: list[int] = []
    i = zeroed.find(needle)
    while i >= 0:
        found.append(i)
        i = zeroed.find(needle, i + 1)
    return found


def _unreadable_at(data: bytes, exponents: bool) -> list[int]:
    """Where a value a reader may not hold may be (offsets; none for most buffers).
    ``exponents``: a json column is present (jsonb writes no exponent; other columns'
    exponents are within a double's range)."""
    zeroed = data.translate(_DIGITS)
    found = []
    if exponents:  # ~0.5 us a place where hex in a string holds e and 3 digits
        found = [e for needle in (b"e000", b"e+000") for e in _places(zeroed, needle)
                 if data[e - 1] in _MANTISSA and _exponent_of_number(data, e)]  # fmt: skip
    if _NINETEEN in zeroed:  # rare: each run of digits once, however long (a regex, so not every digit)
        found += [m.start() for m in _LONG_RUN.finditer(zeroed) if _starts_number(data, m.start())]
    if b"\\ud" in data or b"\\uD" in data:
        found += [m.start() for m in _SURROGATE.finditer(data)]
    return found


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


_BLANKS = bytes.maketrans(b"\r\t", b"  ")


def checked(payload: bytes, exponents: bool = True, raw: bool = False) -> bytes:
    """Object lines (undone from COPY's escapes) with each line that may hold a value a
    reader cannot take written again as the cursor path writes it (``exponents``: a json
    column is present, see ``_unreadable_at``). ``raw``: the lines came as rows (no COPY
    escapes; ``pgrows.rows_out`` made a json value's raw newlines spaces already): its raw
    tabs and carriage returns become spaces, as their COPY escapes do."""
    if not raw:
        payload = unescaped(payload)
    elif b"\r" in payload or b"\t" in payload:
        payload = payload.translate(_BLANKS)
    lines: list[bytes] | None = None
    suspects = {payload.rfind(b"\n", 0, at) + 1 for at in _unreadable_at(payload, exponents)}
    if _deep(payload):  # only a line longer than the limit can nest that deep
        lines = payload.split(b"\n")
        if max(map(len, lines)) > MAX_BRACKETS:
            at = 0
            for line in lines:
                if len(line) > MAX_BRACKETS and _deep(line):
                    suspects.add(at)
                at += len(line) + 1
    if not suspects:
        return payload
    if lines is None:
        lines = payload.split(b"\n")
    lines.pop()  # after the last newline
    out: list[bytes] = []
    at = 0
    for line in lines:
        out.append(_rewritten(line) if at in suspects else line)
        at += len(line) + 1
    out.append(b"")
    return b"\n".join(out)


def expression(x: str, _session: Any = None) -> str:
    """The SQL of one json or jsonb value's JSON: its text (SQL NULL as null)."""
    return f"coalesce({x}::text, 'null')"
