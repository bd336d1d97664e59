"""The COPY fast path's CSV form (``pgcopy.CopyPlan.csv``): PostgreSQL writes the values,
escaped as JSON escapes them, and the agent adds the keys.

For one text or uuid column, or rows at least half text, ``pgcopy`` runs the COPY in CSV
form (``copy_sql``) instead of building each object line in SQL, and ``CsvSink`` turns
the rows into object lines. docs/ARCHITECTURE.md, "The CSV form", has the reasoning and
the figures; tests/agent/sources/test_pg_copy_csv.py holds it to the cursor path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from itertools import chain, cycle, islice
from operator import itemgetter
from typing import Any

import orjson

from shared.errors import JobError

# COPY's CSV mode escapes a quoted value's ``"`` and ``\`` with a backslash (``ESCAPE
# '\'``) as it writes the row, in C: exactly JSON's escaping of those two, so a text
# column needs no ``to_json`` (its cost, 0.32 against 0.10 s per 1M 32-character values,
# ``COPY ... TO '/dev/null'``). What CSV leaves raw, JSON refuses: control characters,
# and a newline inside a value (it would split the row); ``CsvSink`` escapes both.
# type OID -> (SQL expression of the value's text, NULL for null; quoted: a JSON string)
CSV_EXPRESSIONS: dict[int, tuple[Callable[[str], str], bool]] = {
    25: (str, True), 1043: (str, True), 1042: (str, True), 19: (str, True),  # text, varchar, bpchar, name
    2950: (str, True),  # uuid
    20: (str, False), 21: (str, False), 23: (str, False), 26: (str, False),  # int8, int2, int4, oid
    16: (lambda x: f"CASE WHEN {x} THEN 'true' WHEN NOT {x} THEN 'false' END", False),
    1700: (lambda x: f"CASE WHEN {x} <> 'NaN' THEN {x}::text END", True),  # as _numeric
}  # fmt: skip
# the types whose JSON costs to_json on the text form: what the CSV form saves
_TO_JSON = frozenset({25, 1043, 1042, 19})
_CSV_DELIMITER = b"\x1f"  # a control character: any in a value sends the buffer to _csv_rows


def wanted(oids: Sequence[int]) -> bool:
    """The CSV form where it saves more than it costs the agent (measured, 1M rows): one
    text or uuid column (PostgreSQL 0.34 -> 0.12 and 0.30 -> 0.18 us a row, the agent
    +0.03); past one column, when at least half are text (the agent interleaves the keys,
    ~0.09 us a value, against to_json's ~0.2 a text value). One integer, bool or numeric
    column keeps the text form: there the two costs cancel."""
    if not all(o in CSV_EXPRESSIONS for o in oids):
        return False
    if len(oids) == 1:
        return oids[0] in _TO_JSON or oids[0] == 2950
    return 2 * sum(o in _TO_JSON for o in oids) >= len(oids)


def copy_sql(inner: str, oids: Sequence[int], tail: str) -> str:
    """The CSV form's ``COPY`` of ``inner`` (the user's SQL, parameters inlined), its
    columns aliased by position as ``pgcopy.CopyPlan.sql`` does; ``tail`` a LIMIT or ''.
    NULL prints as null unquoted; FORCE_QUOTE quotes every non-NULL value of the string
    columns, so a text 'null' is "null". An unquoted column's text is a JSON number or
    true/false, never 'null' (which CSV would quote), never empty."""
    aliases = ", ".join(f"c{i + 1}" for i in range(len(oids)))
    exprs = [CSV_EXPRESSIONS[oid] for oid in oids]
    select = ", ".join(f"{fn(f'q.c{i + 1}')} AS c{i + 1}" for i, (fn, _) in enumerate(exprs))
    quoted = ", ".join(f"c{i + 1}" for i, (_, q) in enumerate(exprs) if q)
    force = f", FORCE_QUOTE ({quoted})" if quoted else ""
    return (
        f"COPY (SELECT {select} FROM ({inner}\n) AS q({aliases}){tail}) TO STDOUT "
        f"WITH (FORMAT csv, DELIMITER E'\\x1f', QUOTE '\"', ESCAPE '\\', NULL 'null'{force})"
    )


_JSON_CONTROL = bytes(range(32))  # what a JSON string cannot hold raw
_CONTROL = _JSON_CONTROL.replace(b"\n", b"")  # ... but the newline that ends a row
_NOT_JSON_CONTROL = bytes(range(32, 256))
# JSON's escape of each control character (orjson's spelling)
_ESCAPES = {c: orjson.dumps(chr(c))[1:-1] for c in range(32)}
# a value (quoted: group 1; unquoted: group 2) and the delimiter or newline after it;
# possessive, so a value without its closing quote fails at once, not by backtracking
_CSV_FIELD = re.compile(rb'(?:"((?:[^"\\]++|\\.)*+)"|([^"\x1f\n]++))([\x1f\n])', re.S)
_VALUE = rb'(?:"(?:[^"\\]++|\\.)*+"|[^"\x1f\n]++)'
_CSV_ROW = re.compile(_VALUE + rb"(?:\x1f" + _VALUE + rb")*+\n", re.S)  # one whole row


class CsvSink:
    """Receives the CSV form's rows (``write(rows, n)``: ``n`` whole rows, one CopyData
    message each, from ``copy_out``), writes each as its object line and calls
    ``emit(payload, rows)`` with about ``target`` bytes at a time (as ``LineSink`` does for
    the text form).

    Outside a quoted value the CSV form holds no control character but the newline that
    ends a row and the ``k - 1`` delimiters of each; inside one, CSV leaves control
    characters raw where JSON needs them escaped. So in a buffer of ``n`` rows with ``n``
    newlines and ``(k - 1) n`` delimiters every other control character is inside a
    value: each is replaced by its JSON escape (``_escape_controls``), and the lines get
    their keys by ``bytes`` operations (``_keyed``). A buffer with more newlines has a
    value holding one: those are escaped first (``_inner_newlines_escaped``). A delimiter
    inside a value (past one column) sends the buffer to ``_csv_rows``, value by value."""

    def __init__(self, emit: Callable[[bytes, int], bool], keys: list[bytes], target: int) -> None:
        self.emit = emit
        self.keys = keys
        self.target = target
        self.parts: list[Any] = []
        self.size = self.rows = 0
        self.dead = False  # emit wanted no more rows (maxRows): the rest is read and dropped

    def write(self, data: bytearray, n: int) -> None:
        if self.dead:
            return
        k = len(self.keys)
        seps = (k - 1) * n  # the delimiters of n rows
        if data.count(b"\n") != n:
            data = _inner_newlines_escaped(bytes(data), n)
        if k > 1 and data.count(_CSV_DELIMITER) != seps:
            lines = _csv_rows(bytes(data), self.keys)
        else:
            if len(data.translate(None, _CONTROL)) != len(data) - seps:
                data = _escape_controls(data, b"\n" if k == 1 else b"\n" + _CSV_DELIMITER)
            lines = _keyed(data, self.keys)
        self.parts.append(lines)
        self.size += len(lines)
        self.rows += n
        if self.size >= self.target:
            self.flush()

    def flush(self) -> None:
        if self.parts and not self.dead:
            payload = b"".join(self.parts)
            rows = self.rows
            self.parts, self.size, self.rows = [], 0, 0
            if not self.emit(payload, rows):
                self.dead = True


def _inner_newlines_escaped(data: bytes, n: int) -> bytes:
    """The ``n`` rows of ``data`` with each newline inside a value written ``\\n``. The
    rows are found by ``_CSV_ROW`` (in C, one after the other: they must tile ``data``);
    joined by NUL, which PostgreSQL's text cannot hold, a newline is a row's end exactly
    when a NUL follows it, so three ``replace`` do the rest."""
    rows = _CSV_ROW.findall(data)
    if b"\x00" in data or len(rows) != n or sum(map(len, rows)) != len(data):
        raise JobError("QUERY_FAILED", "the COPY output could not be read as CSV")
    joined = b"\x00".join(rows)[:-1]
    return joined.replace(b"\n\x00", b"\x00").replace(b"\n", b"\\n").replace(b"\x00", b"\n") + b"\n"


def _escape_controls(data: Any, keep: bytes = b"") -> Any:
    """``data`` with each control character but those in ``keep`` (the structure's: row
    ends and delimiters, when the caller knows no value holds one) written as JSON writes
    it, one ``replace`` per character present."""
    present = set(data.translate(None, _NOT_JSON_CONTROL)).difference(keep)
    for c in present:
        data = data.replace(bytes((c,)), _ESCAPES[c])
    return data


def _keyed(data: Any, keys: list[bytes]) -> bytes:
    """Rows ``v1<US>v2\n`` (no control character inside a value) as ``{"a":v1,"b":v2}\n``."""
    first = keys[0]
    if len(keys) == 1:
        # each newline becomes "}\n" + the next row's key; the last one's key is cut
        return b"".join((first, memoryview(data.replace(b"\n", b"}\n" + first))[: -len(first)]))
    values = data.replace(b"\n", _CSV_DELIMITER).split(_CSV_DELIMITER)
    values.pop()  # after the last row's newline
    seps = [b"}\n" + first, *keys[1:]]
    return b"".join(islice(chain.from_iterable(zip(cycle(seps), values)), 1, None)).join((first, b"}\n"))


def _csv_rows(data: bytes, keys: list[bytes]) -> bytes:
    """Rows of the CSV form read value by value (``findall``: the values and what ends each,
    in C): a quoted value is a JSON string as it stands (its ``\\"`` and ``\\\\`` are
    JSON's escapes too) once its control characters are escaped; an unquoted one is the
    JSON text it holds (``null``, a number, ``true``/``false``). Anything else fails the
    job rather than write a wrong line."""
    out: list[bytes] = []
    last = len(keys) - 1
    used = i = 0
    for quoted, plain, end in _CSV_FIELD.findall(data):
        if plain:
            value = plain
        elif len(quoted.translate(None, _JSON_CONTROL)) == len(quoted):
            value = b'"' + quoted + b'"'
        else:
            value = b'"' + _escape_controls(quoted) + b'"'
        used += (len(plain) or len(quoted) + 2) + 1
        if end != (b"\n" if i == last else _CSV_DELIMITER):
            raise JobError("QUERY_FAILED", "the COPY output could not be read as CSV")
        out += (keys[i], value)
        if i == last:
            out.append(b"}\n")
            i = 0
        else:
            i += 1
    if used != len(data) or i != 0:
        raise JobError("QUERY_FAILED", "the COPY output could not be read as CSV")
    return b"".join(out)


# ---------------------------------------------------------------- the same form as rows


def select_sql(inner: str, oids: Sequence[int], tail: str) -> str:
    """``copy_sql``'s query without the COPY: each column's text (NULL stays NULL), read
    as rows (``pgrows.rows_out`` with ``RowLines``)."""
    aliases = ", ".join(f"c{i + 1}" for i in range(len(oids)))
    select = ", ".join(
        # the string types as they are (their binary form is their text; bpchar's cast to
        # text would drop its padding), the others' text
        f"q.c{i + 1}" if oid in _TO_JSON else f"({CSV_EXPRESSIONS[oid][0](f'q.c{i + 1}')})::text AS c{i + 1}"
        for i, oid in enumerate(oids)
    )
    return f"SELECT {select} FROM ({inner}\n) AS q({aliases}){tail}"


_SAFE = bytes(c for c in range(256) if c >= 32 and c not in b'"\\')  # what a JSON string holds raw
_NULL = b"\x00"  # a NULL's place while the lines are joined: PostgreSQL's text cannot hold a NUL


class RowLines:
    """The CSV form's object lines made from rows (each value its text as ``bytes``, None
    for NULL), for ``pgrows.rows_out``: the lines ``CsvSink`` makes of the same rows read
    as a CSV COPY, byte for byte (tests/agent/sources/test_pg_rows_form.py).

    Where the COPY's CSV writer escaped ``"`` and ``\\`` and the sink the control
    characters, here all three are looked for at once in the values joined (one
    ``translate``, in C); a result with none (the common case) gets its keys, and its
    quoted columns their quotes, by one ``join`` of the values and the separators between
    them. A NULL is a NUL meanwhile, then ``null`` (its quotes dropped)."""

    def __init__(self, keys: list[bytes], quoted: list[bool]) -> None:
        self.k = len(keys)
        self.quoted = quoted
        # what stands before each value: the previous value's closing quote, "}\n" before
        # a row's first, its key, its opening quote
        def before(i: int) -> bytes:
            close = b'"' if quoted[i - 1] else b""
            return (close + b"}\n" if i == 0 else close) + keys[i] + (b'"' if quoted[i] else b"")
        self.seps = [before(i) for i in range(self.k)]
        self.first = keys[0] + (b'"' if quoted[0] else b"")
        self.end = (b'"' if quoted[-1] else b"") + b"}\n"

    def __call__(self, rows: list[tuple[Any, ...]], n: int) -> bytes:
        values = list(map(itemgetter(0), rows)) if self.k == 1 else list(chain.from_iterable(rows))
        nulls = None in values
        if nulls:
            values = [_NULL if v is None else v for v in values]
        if b"".join(values).translate(None, _SAFE):  # a quote, a backslash or a control character
            values = [_escaped(v) if v is not _NULL else v for v in values]
        if self.k == 1:
            body = self.seps[0].join(values)
        else:
            body = b"".join(islice(chain.from_iterable(zip(cycle(self.seps), values)), 1, None))
        lines = b"".join((self.first, body, self.end))
        if nulls:
            lines = lines.replace(b'"\x00"', b"null").replace(_NULL, b"null")
        return lines


def _escaped(value: bytes) -> bytes:
    """A value's text as JSON escapes it inside a string (orjson's spelling)."""
    if not value.translate(None, _SAFE):
        return value
    return orjson.dumps(value.decode("utf-8"))[1:-1]
