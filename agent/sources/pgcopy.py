"""PostgreSQL's COPY fast path: the database writes the object lines, the agent only cuts them.

For a query whose every column has a type on ``EXPRESSIONS`` (and unique names), the
agent runs::

    COPY (SELECT '{"id":' || <json of q.c1> || ',"name":' || <json of q.c2> || '}'
          FROM (<the user's SQL, parameters inlined>
          ) AS q(c1, c2)) TO STDOUT

and hands PostgreSQL's output to the producer as chunk payloads with no Python object per
row (``LineSink``). With libpq 17+ and rows of a bounded size the same SELECT runs
without the COPY, read as rows a result at a time (``pgrows``). The columns are aliased
by position, so no user name is ever an
identifier here; the names appear only as JSON keys inside escaped string literals.

Exactness: each expression below writes the JSON the cursor path writes for the same
value (the Python value ``pgconn.PSYCOPG2_LIKE`` loads, as psycopg2 did, encoded by
``shared.rows.encode_rows``), compared after
``orjson.loads`` as Python values, int vs float included
(``tests/agent/sources/test_pg_copy.py`` proves it per type on edge values). Every type
psycopg2 did not know (enums, inet, money, xml, records ...; ``_as_text``) is its text as
a JSON string, as the cursor path reads it. Out of the list (timetz, ranges, arrays other
than of bool, integers and strings, and the other types psycopg2 made Python values of):
the cursor path. Values the cursor path cannot read (dates before year 1 or after 9999) fail the job
on both paths, as do intervals past the 999999999 days a ``timedelta`` holds.

A type on ``PREPARED`` (interval) has part of its work done once a row in a sub-select
under the one that writes the JSON, ``... FROM (SELECT <prepared c1>, q.c2 FROM (<the
user's SQL>) AS q(c1, c2) OFFSET 0) AS q``.

COPY text format (PostgreSQL docs, "COPY" > "Text Format"): rows end with ``\\n``; a
backslash, newline, carriage return or the delimiter (tab) inside a value is written as a
backslash sequence, and "COPY TO will never emit an octal or hex-digits backslash
sequence, but it does use the other sequences listed above for those control
characters". Our one column is JSON text, which holds no raw control character (strings
escape them), so the only escaping left is ``\\`` doubled: undone with one ``replace``.
A json value is the exception (its own whitespace between tokens may be raw newlines or
tabs): with a json or jsonb column, ``pgjson.checked`` undoes the escapes instead.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import orjson

from shared.errors import JobError

from . import pgcsv, pgjson, pgrows

# Session settings that PostgreSQL reports to the client (no round trip to read them).
UTC_ZONES = frozenset({"UTC", "Etc/UTC", "UCT", "Etc/UCT", "GMT", "Etc/GMT", "GMT0", "Etc/GMT0",
                       "Zulu", "Etc/Zulu", "Universal", "Etc/Universal", "Greenwich", "Etc/Greenwich"})  # fmt: skip

class Session(NamedTuple):
    """What an expression may depend on besides the column: the session's time zone is
    UTC, and the server writes shortest float text (PostgreSQL 12+)."""

    utc: bool
    shortest_floats: bool


def _refused(x: str, why: str) -> str:
    """An int expression that fails the COPY with a message naming the value: the cast of
    the message raises, and since it depends on the row the planner cannot fold it."""
    return f"CAST('the value ' || {x}::text || ' {why}, which the agent cannot read' AS int)"


def _out_of_range(x: str) -> str:
    return _refused(x, "is outside years 1-9999")


def _too_long(x: str) -> str:
    return _refused(x, "is longer than 999999999 days")


def _int(x: str, _s: Session) -> str:
    return f"coalesce({x}::text, 'null')"


def _bool(x: str, _s: Session) -> str:
    return f"CASE WHEN {x} THEN 'true' WHEN NOT {x} THEN 'false' ELSE 'null' END"


def _numeric(x: str, _s: Session) -> str:
    # Decimal -> format(v, "f") == PostgreSQL's text (never an exponent); NaN -> null.
    return f"""CASE WHEN {x} <> 'NaN' THEN '"' || {x}::text || '"' ELSE 'null' END"""


def _float(x: str, _s: Session) -> str:
    # float(text) is what the driver makes; the same text parses to the same double.
    # NaN and +-Infinity become null (orjson); an integral text gets ".0" to stay a float.
    # The test is on the text, so it holds for any server and setting; PostgreSQL 12+
    # float8 uses _float8, the same rule read from the value.
    t = f"{x}::text"
    return (
        f"CASE WHEN {x} > '-Infinity' AND {x} < 'Infinity' THEN "
        f"CASE WHEN strpos({t}, '.') + strpos({t}, 'e') = 0 THEN {t} || '.0' ELSE {t} END "
        "ELSE 'null' END"
    )


def _float8(x: str, s: Session) -> str:
    # _float's rule read from the value, with one ::text instead of up to four (0.34 ->
    # 0.20 s per 1M values): PostgreSQL 12+ writes a float8's shortest exact text (the
    # agent pins extra_float_digits=1, pgconn.SESSION_OPTIONS), without "." or "e" exactly
    # when it is integral and below 1e15 in magnitude. Not for float4 (its notation turns
    # at 1e6) nor servers before 12 (1e15 is "1000000000000000" there).
    if not s.shortest_floats:
        return _float(x, s)
    return (
        f"CASE WHEN {x} > '-Infinity' AND {x} < 'Infinity' THEN "
        f"CASE WHEN {x} = trunc({x}) AND abs({x}) < 1e15 THEN {x}::text || '.0' ELSE {x}::text END "
        "ELSE 'null' END"
    )


def _text(x: str, _s: Session) -> str:
    return f"coalesce(to_json({x})::text, 'null')"


def _quoted(x: str, _s: Session) -> str:
    return f"""CASE WHEN {x} IS NULL THEN 'null' ELSE '"' || {x}::text || '"' END"""


def _bytea(x: str, _s: Session) -> str:
    # encode() breaks base64 lines at 76 characters; replace() drops the breaks at less
    # than half translate()'s cost (0.50 -> 0.24 s per 1M 16-byte values).
    return f"""CASE WHEN {x} IS NULL THEN 'null' ELSE '"' || replace(encode({x}, 'base64'), chr(10), '') || '"' END"""


def _date(x: str, _s: Session) -> str:
    # ISO DateStyle: YYYY-MM-DD. +-infinity is date.max/min (pgconn, as psycopg2 did).
    return (
        f"""CASE WHEN {x} >= '0001-01-01' AND {x} < '10000-01-01' THEN '"' || {x}::text || '"' """
        f"""WHEN {x} IS NULL THEN 'null' WHEN {x} = 'infinity' THEN '"9999-12-31"' """
        f"""WHEN {x} = '-infinity' THEN '"0001-01-01"' ELSE {_out_of_range(x)}::text END"""
    )


def _stamp(x: str, tail: str) -> str:
    """``isoformat()`` of a timestamp: no fraction when it is whole seconds, else all 6
    digits; ``tail`` (an SQL literal) follows it. ``to_char`` with numeric fields only, so
    neither DateStyle nor the locale changes it; years 1-9999 (the guards around it) are 4
    digits. ~0.5 against ~0.85 s per 1M values for three ``to_json`` and a ``date_trunc``,
    the expression this replaced (COPY ... TO '/dev/null', UTC)."""
    return f"""'"' || replace(to_char({x}, 'YYYY-MM-DD"T"HH24:MI:SS.US'), '.000000', '') || {tail}"""


_QUOTE = "'\"'"  # the SQL literal '"'


def _timestamp(x: str, _s: Session) -> str:
    return (
        f"""CASE WHEN {x} >= '0001-01-01' AND {x} < '10000-01-01' THEN {_stamp(x, _QUOTE)} """
        f"""WHEN {x} IS NULL THEN 'null' WHEN {x} = 'infinity' THEN '"9999-12-31T23:59:59.999999"' """
        f"""WHEN {x} = '-infinity' THEN '"0001-01-01T00:00:00"' ELSE {_out_of_range(x)}::text END"""
    )


def _timestamptz(x: str, s: Session) -> str:
    if s.utc:  # orjson writes the offset of UTC as +00:00
        value = _stamp(x, "'+00:00\"'")
    else:
        # orjson writes the offset as +-HH:MM of its absolute value, the minutes rounded
        # up from 30 seconds (LMT offsets such as +00:19:32 -> +00:20, even +00:60).
        off = f"date_part('timezone', {x})::int"
        value = _stamp(x, (
            f"CASE WHEN {off} < 0 THEN '-' ELSE '+' END || lpad((abs({off}) / 3600)::text, 2, '0') || ':' || "
            f"lpad((abs({off}) % 3600 / 60 + CASE WHEN abs({off}) % 60 >= 30 THEN 1 ELSE 0 END)::text, 2, '0')"
            """ || '"'"""
        ))  # fmt: skip
    return (
        f"""CASE WHEN {x} >= '0001-01-01 00:00:00' AND {x} < '10000-01-01 00:00:00' THEN {value} """
        f"""WHEN {x} IS NULL THEN 'null' WHEN {x} = 'infinity' THEN '"9999-12-31T23:59:59.999999+00:00"' """
        f"""WHEN {x} = '-infinity' THEN '"0001-01-01T00:00:00+00:00"' ELSE {_out_of_range(x)}::text END"""
    )


def _time(x: str, _s: Session) -> str:
    # 24:00:00 is read as 00:00:00 (pgconn, as psycopg2 did).
    t = f"{x}::text"
    return (
        f"""CASE WHEN {x} IS NULL THEN 'null' WHEN {x} = '24:00:00' THEN '"00:00:00"' """
        f"""WHEN length({t}) = 8 THEN '"' || {t} || '"' ELSE '"' || rpad({t}, 15, '0') || '"' END"""
    )


_DURATION_FIELDS = "'FMDD\"DT\"FMHH24\"H\"FMMI\"M\"FMSS.US'"  # to_char: 3DT4H5M6.500000


def _interval_days(x: str, _s: Session) -> str:
    # What the driver reads (psycopg, as psycopg2 did): a year as 365 days, a month as 30,
    # then the days and the time folded as timedelta folds them. justify_hours gives the
    # fields of that duration's magnitude with its sign (days and time alike): the text
    # _duration writes. Done once a row below the JSON (PREPARED).
    # The guard first, by interval comparison (30-day months: 360-day years): within it the
    # sum fits an int and justify_hours cannot overflow (a year count past ~9.3M cannot be
    # inside); outside it the driver's sum is past the 999999999 days a timedelta holds
    # (the 5 days a year between the two cannot bring it back), and the job fails as it does
    # on the cursor path; _interval checks the exact bound. 0.26 s per 1M values against
    # 0.33 with the sum's bound checked (COPY ... TO '/dev/null'). An infinite interval
    # (PostgreSQL 17) is outside it.
    days = f"(365 * date_part('year', {x}) + 30 * date_part('month', {x}) + date_part('day', {x}))"
    return (
        f"CASE WHEN {x} > interval '-1100000000 days' AND {x} < interval '1100000000 days' THEN "
        f"justify_hours(({x} - date_trunc('day', {x})) + make_interval(days => {days}::int)) "
        f"WHEN {x} IS NULL THEN NULL ELSE CAST({_too_long(x)}::text AS interval) END"
    )


def _interval(v: str, _s: Session) -> str:
    # v: _interval_days's value. The magnitude's fields by to_char, the fraction without
    # trailing zeros (the "." too when it is all zeros).
    def text(w: str) -> str:
        return f"rtrim(rtrim(to_char({w}, {_DURATION_FIELDS}), '0'), '.')"

    return (
        f"""CASE WHEN {v} IS NULL THEN 'null' """
        f"""WHEN {v} < interval '-999999999 days' OR {v} >= interval '1000000000 days' THEN {_too_long(v)}::text """
        f"""WHEN {v} < interval '0' THEN '"-P' || {text("-" + v)} || 'S"' """
        f"""ELSE '"P' || {text(v)} || 'S"' END"""
    )


# type OID -> SQL expression writing the JSON of one value (never NULL itself)
EXPRESSIONS: dict[int, Callable[[str, Session], str]] = {
    16: _bool,
    20: _int, 21: _int, 23: _int, 26: _int,  # int8, int2, int4, oid
    700: _float, 701: _float8,
    1700: _numeric,
    25: _text, 1043: _text, 1042: _text, 19: _text,  # text, varchar, bpchar, name
    1082: _date, 1114: _timestamp, 1184: _timestamptz, 1083: _time,
    17: _bytea,
    2950: _quoted,  # uuid
    1186: _interval,  # on PREPARED's value
    # Arrays whose elements to_json writes as orjson writes the driver's list (any
    # dimensions; bounds such as [2:3]= dropped by both); float, numeric, date... arrays
    # are not, and oid[] to_json writes as strings.
    1000: _text, 1005: _text, 1007: _text, 1016: _text,  # bool[], int2[], int4[], int8[]
    1009: _text, 1015: _text,  # text[], varchar[] (bpchar[], name[]: no column type without rows)
    114: pgjson.expression, 3802: pgjson.expression,  # json, jsonb: their text (agent/sources/pgjson.py)
}  # fmt: skip


def _as_text(x: str, _s: Session) -> str:
    # Every type psycopg2 did not know (not on pgconn.PSYCOPG2_OIDS: enums, inet, cidr,
    # macaddr, money, bit, xml, geometric types, records, extension types such as citext):
    # the cursor path reads PostgreSQL's text of it as a str, written as a JSON string.
    # concat() gives that text (the type's output function); ::text is not always it (inet's
    # cast adds /32 to a host). num_nulls, not IS NULL: a record of NULL fields IS NULL.
    return f"CASE WHEN num_nulls({x}) = 1 THEN 'null' ELSE to_json(concat({x}))::text END"


def expression(oid: int) -> Callable[[str, Session], str] | None:
    """The expression writing a column of type ``oid`` as the cursor path writes it (None:
    the cursor path only)."""
    from .pgconn import read_as_text

    found = EXPRESSIONS.get(oid)
    if found is None and read_as_text(oid):
        return _as_text
    return found


# type OID -> SQL expression computed once a row in a sub-select below the one that writes
# the JSON (OFFSET 0 keeps the planner from folding it up into every place EXPRESSIONS
# names it); EXPRESSIONS then works on its value.
PREPARED: dict[int, Callable[[str, Session], str]] = {1186: _interval_days}


def wrappable(sql: str) -> bool:
    """Whether ``sql`` can go inside ``FROM (...)``: its parentheses, as PostgreSQL's own
    scanner reads them, balance (it cannot close ours early)."""
    from pglast import parser

    depth = 0
    try:
        tokens = parser.scan(sql)
    except parser.ParseError:
        return False
    for tok in tokens:
        if tok.name in ("ASCII_40", "ASCII_41"):
            depth += 1 if tok.name == "ASCII_40" else -1
            if depth < 0:
                return False
    return depth == 0


def session_ok(conn: Any) -> bool:
    """UTF-8 client encoding and ISO dates, as the expressions assume (``pgconn`` starts
    every session with ``DateStyle=ISO``)."""
    datestyle = conn.info.parameter_status("DateStyle") or ""
    encoding = conn.info.parameter_status("client_encoding") or ""
    return encoding.upper() in ("UTF8", "UTF-8") and datestyle.upper().startswith("ISO")


def describe_sql(inner: str) -> str:
    return f"SELECT * FROM ({inner}\n) AS q LIMIT 0"


def _literal(text: str) -> str:
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def _concat(args: list[str]) -> str:
    # || (every operand is text, never NULL) is ~20 % cheaper than concat() and has no
    # 100-argument limit.
    return " || ".join(f"({a})" for a in args)


@dataclass(frozen=True)
class CopyPlan:
    inner: str  # the user's SQL, parameters inlined
    names: list[str]
    oids: list[int]
    utc: bool
    shortest_floats: bool = False  # PostgreSQL 12+ (the float8 rule read from the value)
    csv: bool = False  # COPY's CSV form, the keys added by pgcsv.CsvSink
    rows_per_result: int = 0  # read as rows this many at a time (pgrows.rows_out); 0: as a COPY

    @property
    def json_values(self) -> bool:
        """Whether a column is json or jsonb (its lines go through ``pgjson.checked``)."""
        return not pgjson.OIDS.isdisjoint(self.oids)

    def line_check(self, raw: bool = False) -> Callable[[bytes], bytes] | None:
        """What the text form's lines go through besides undoing COPY's ``\\\\``: with a
        json or jsonb column, ``pgjson.checked`` (exponents looked for only with json;
        ``raw``: the lines came as rows, ``pgrows.rows_out``, with no COPY escapes to undo)."""
        if not self.json_values:
            return None
        return partial(pgjson.checked, exponents=pgjson.JSON in self.oids, raw=raw)

    def row_lines(self) -> Callable[[list[tuple[Any, ...]], int], bytes] | None:
        """How ``pgrows.rows_out`` makes a result's lines: the CSV form's ``pgcsv.RowLines``; None
        for the text form (each row is its line)."""
        if not self.csv:
            return None
        return pgcsv.RowLines(self.keys(), [pgcsv.CSV_EXPRESSIONS[oid][1] for oid in self.oids])

    def keys(self) -> list[bytes]:
        """Each column's JSON key with what goes before it: ``{"a":``, ``,"b":``."""
        return [(b"{" if i == 0 else b",") + orjson.dumps(name) + b":" for i, name in enumerate(self.names)]

    def sql(self, limit: int | None = None) -> str:
        """The COPY: the CSV form's, or the text form's ``COPY (<select>) TO STDOUT``."""
        if self.csv:
            return pgcsv.copy_sql(self.inner, self.oids, f" LIMIT {int(limit)}" if limit is not None else "")
        return f"COPY ({self.select(limit)}) TO STDOUT"

    def select(self, limit: int | None = None) -> str:
        """The query read as rows (``pgrows.rows_out``): the text form's, one text column, each
        row's object line; the CSV form's, each column's text (``pgcsv.select_sql``)."""
        tail = f" LIMIT {int(limit)}" if limit is not None else ""
        if self.csv:
            return pgcsv.select_sql(self.inner, self.oids, tail)
        session = Session(self.utc, self.shortest_floats)
        args: list[str] = []
        for i, (key, oid) in enumerate(zip(self.keys(), self.oids, strict=True)):
            write = expression(oid)
            assert write is not None  # plan_for took only such columns
            args += [_literal(key.decode()), write(f"q.c{i + 1}", session)]
        args.append("'}'")
        aliases = ", ".join(f"c{i + 1}" for i in range(len(self.names)))
        source = f"({self.inner}\n) AS q({aliases})"
        if any(oid in PREPARED for oid in self.oids):
            inner = ", ".join(
                f"{PREPARED[oid](f'q.c{i + 1}', session)} AS c{i + 1}" if oid in PREPARED else f"q.c{i + 1}"
                for i, oid in enumerate(self.oids)
            )
            source = f"(SELECT {inner} FROM {source} OFFSET 0) AS q"
        return f"SELECT {_concat(args)} FROM {source}{tail}"

def plan_for(inner: str, description: Sequence[Any], timezone: str | None, server_version: int = 0) -> CopyPlan | None:
    """A plan when every column's type is on the list and the names are unique
    (``server_version``: libpq's number, 150004 for 15.4)."""
    names = [str(d[0]) for d in description]
    oids = [d[1] for d in description]
    if not names or len(set(names)) != len(names) or not all(expression(o) is not None for o in oids):
        return None
    return CopyPlan(inner, names, oids, utc=timezone in UTC_ZONES, shortest_floats=server_version >= 120000,
                    csv=pgcsv.wanted(oids), rows_per_result=pgrows.rows_per_result(description))  # fmt: skip


def copy_out(cursor: Any, sql: str, write: Callable[[bytearray, int], Any], *, counted: bool = False) -> None:
    """Run ``sql`` (a ``COPY ... TO STDOUT``) on a ``pgconn.OneStatementCursor`` (so with
    the extended protocol: one statement) and ``write(rows, n)`` the rows, whole rows at a
    time (PostgreSQL sends one CopyData message a row; ``n`` of them if ``counted``, else 0).

    psycopg's ``Copy.read()`` costs a wait loop per row (3-4x psycopg2's ``copy_expert``
    in CPU); here one wait loop drains every row libpq has already buffered, and only
    waits on the socket when it has none. The end of the COPY is read as psycopg's own
    ``copy_from`` does (one result, which must be COMMAND_OK)."""
    conn = cursor.connection
    with cursor.copy(sql):
        conn.wait(_drain(conn.pgconn, write, counted))


_JOIN_BYTES = 64 * 1024  # rows gathered in Python before they are written


def _drain(pgconn: Any, write: Callable[[bytearray, int], Any], counted: bool) -> Any:
    from psycopg import errors
    from psycopg.generators import fetch_many
    from psycopg.pq import ExecStatus
    from psycopg.waiting import Wait

    get = pgconn.get_copy_data
    take = _take_counted if counted else _take
    while True:
        # the rows libpq holds, written together (a write a row costs more); a bytearray
        # grown in place costs half of keeping psycopg's memoryviews in a list and joining them
        buf = bytearray()
        n, last = take(get, buf)
        if buf:
            write(buf, n)
        if last == 0:  # none buffered: wait on the socket
            while not (yield Wait.R):
                continue
            pgconn.consume_input()
        elif last < 0:  # the COPY's end
            break
    results = yield from fetch_many(pgconn)
    if len(results) != 1 or results[0].status != ExecStatus.COMMAND_OK:
        bad = next((r for r in results if r.status != ExecStatus.COMMAND_OK), None)
        if bad is not None:
            raise errors.error_from_result(bad, encoding=pgconn._encoding)
        raise errors.ProgrammingError("the COPY returned more than one result")


def _take(get: Callable[[int], Any], buf: bytearray) -> tuple[int, int]:
    """Append to ``buf`` the rows libpq holds (never blocking: ``get(1)``), up to about
    ``_JOIN_BYTES``; return (0, the last ``get``'s byte count: 0 none buffered, -1 the end,
    1 ``buf`` is full)."""
    while len(buf) < _JOIN_BYTES:
        nbytes, data = get(1)
        if nbytes <= 0:
            return 0, nbytes
        buf += data
    return 0, 1


def _take_counted(get: Callable[[int], Any], buf: bytearray) -> tuple[int, int]:
    """``_take`` that also counts the rows (the CSV form needs it; ~12 ns a row, so the
    text form, which does not, takes them uncounted)."""
    n = 0
    while len(buf) < _JOIN_BYTES:
        nbytes, data = get(1)
        if nbytes <= 0:
            return n, nbytes
        buf += data
        n += 1
    return n, 1


class LineSink(io.RawIOBase):
    """The raw end of the ``io.BufferedWriter`` the COPY rows are written into: it receives
    buffers of about ``target`` bytes, cuts them after their last newline (the rest waits
    for the next buffer), undoes COPY's backslash doubling and calls ``emit(payload,
    rows)``. ``emit`` blocks while the producer's queue is full (back-pressure reaches
    PostgreSQL through the socket) and returns False when it wants no more rows."""

    def __init__(self, emit: Callable[[bytes, int], bool], max_line: int, *,
                 check: Callable[[bytes], bytes] | None = None, raw: bool = False) -> None:  # fmt: skip
        super().__init__()
        self.emit = emit
        self.max_line = max_line
        self.check = check  # CopyPlan.line_check: undoes the escapes itself
        self.raw = raw  # lines from pgrows.rows_out: no COPY escapes to undo
        self.rest = b""
        self.dead = False  # after a failure: a late flush (GC) must emit nothing

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        n = len(b)
        if self.dead:
            return n
        data = self.rest + bytes(b) if self.rest else bytes(b)
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            if len(data) > self.max_line:
                raise JobError("RESULT_TOO_LARGE", f"a single row encodes to more than {self.max_line} bytes, "
                               "more than the relay's chunk limit")  # fmt: skip
            self.rest = data
            return n
        payload, self.rest = (data, b"") if cut == len(data) else (data[:cut], data[cut:])
        if self.check is not None:
            payload = self.check(payload)
        elif not self.raw and b"\\" in payload:
            payload = payload.replace(b"\\\\", b"\\")
        if not self.emit(payload, payload.count(b"\n")):
            # The producer has its rows (maxRows). The COPY carries the same LIMIT, so
            # PostgreSQL ends it now; the rest is read and dropped, and the connection
            # stays usable (raising here would leave it in COPY OUT).
            self.dead = True
        return n
