"""PostgreSQL connections for the agent (psycopg 3): one statement per round trip, a
read-only session, psycopg2's values, and a clean connection back in the pool.

Three of the database-side locks of the read-only promise live here (the statement guard,
``pgguard``, is the fourth; each must hold alone):

1. **One statement, refused to split by the server.** Every cursor the agent makes sends
   its text with the *extended* query protocol (``PQsendQueryParams``: Parse, Bind,
   Execute), where PostgreSQL itself answers "cannot insert multiple commands into a
   prepared statement" to ``SELECT 1; COMMIT; DELETE ...``. psycopg 3 would use the simple
   protocol for a query without parameters and for ``COPY``; ``OneStatementCursor``
   (the connection's ``cursor_factory``) forces the extended one for both. Server-side
   cursors (``DECLARE``) are sent extended by psycopg already. Parameters are merged on
   the client (``ClientCursor``), as psycopg2 did, so ``:name`` values keep the literal
   semantics they had (``5`` is an ``integer``, ``'x'`` an untyped literal).
2. **A session a COMMIT cannot make writable.** The connection starts with
   ``default_transaction_read_only=on`` (and ``standard_conforming_strings=on``, which the
   guard's reading of ``'...'`` assumes; ``DateStyle=ISO`` and ``IntervalStyle=postgres``,
   which the value loaders and the COPY expressions assume) in the startup packet
   (``options``), so every transaction on it is read-only, including one a ``COMMIT``
   would start. ``DISCARD ALL``/``RESET ALL`` go back to these values, not to the
   server's defaults. Behind a pooler (PgBouncer refuses or drops ``options``, and in
   transaction pooling a session is not one server connection) ``check_session`` says
   so, and each job's transaction sets the same values itself (``set_config(...,
   true)``, ``transaction_settings_sql``): the job is read-only and nothing outlives it,
   but a ``COMMIT`` inside it would end them (layers 1 and 4 keep one out; ``ALTER ROLE
   ... SET default_transaction_read_only = on`` restores the rest, docs/SOURCES.md).
3. **Clean in the pool.** ``reset_on_return`` rolls back, then runs ``DISCARD ALL``
   (advisory locks released, ``SET``\\s reset, prepared statements, cursors, temporary
   tables and ``LISTEN``\\s dropped, ``SET SESSION AUTHORIZATION DEFAULT``). A connection
   that cannot be reset is dropped from the pool, not reused. Under transaction pooling
   the ``DISCARD ALL`` may reach another server connection than the job's: of what a
   read-only job can leave, only a session advisory lock (which the guard refuses to
   take) survives the rollback.

Values: ``PSYCOPG2_LIKE`` loads what psycopg2 loaded (``shared.rows`` encodes it the same
way, and ``pgcopy``'s expressions are written to agree): every type psycopg2 did not know
(arrays of bit, money, records, multiranges, inet ...) arrives as PostgreSQL's text;
``infinity`` dates and timestamps become ``date.max``/``min`` and ``datetime.max``/``min``;
``24:00:00`` is ``00:00:00``; a ``timestamptz`` keeps the offset PostgreSQL printed (a
fixed offset, not the session's zone looked up in Python's own time-zone data). Parameter
values are merged as psycopg2 merged them (lists as ``ARRAY[...]``).
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, date, datetime, time, timedelta, timezone
from typing import Any

import orjson
import psycopg
import psycopg.postgres
from psycopg import ClientCursor
from psycopg.adapt import AdaptersMap, Buffer, Dumper, Loader, Transformer
from psycopg.errors import DataError
from psycopg.types.string import TextLoader

from shared.exactjson import may_hold_big_int

log = logging.getLogger("agent.sources")

# Settings sent in the startup packet ("-c name=value"): they become the session's reset
# values, so neither RESET ALL nor DISCARD ALL undoes them.
SESSION_OPTIONS = {
    "default_transaction_read_only": "on",
    "standard_conforming_strings": "on",
    "DateStyle": "ISO",
    "IntervalStyle": "postgres",
    # Floats written exactly (shortest round-trip text, PostgreSQL 12+): a database or role
    # may set 0 or less, and then 0.1 + 0.2 reads as 0.3 and the largest double as a text
    # that overflows to infinity (the COPY path would write a number JSON readers refuse).
    "extra_float_digits": "1",
}

# Types psycopg2 turned into Python values (with SQLAlchemy's uuid registration); every
# other type (and array of it) it gave as PostgreSQL's text.
PSYCOPG2_OIDS = frozenset({
    16, 17, 18, 19, 20, 21, 23, 25, 26, 114, 199, 700, 701, 1000, 1001, 1002, 1003, 1005,
    1007, 1009, 1014, 1015, 1016, 1021, 1022, 1028, 1042, 1043, 1082, 1083, 1114, 1115,
    1182, 1183, 1184, 1185, 1186, 1187, 1231, 1266, 1270, 1700, 2950, 2951, 3802, 3807,
    651, 1040, 1041,  # cidr[], macaddr[], inet[]: lists of text
    3904, 3905, 3906, 3907, 3908, 3909, 3910, 3911, 3912, 3913, 3926, 3927,
})  # fmt: skip


def read_as_text(oid: int) -> bool:
    """Whether values of type ``oid`` arrive as PostgreSQL's text, a str (psycopg2 did not
    know the type): the COPY fast path writes them as JSON strings (``pgcopy._as_text``)."""
    return oid not in PSYCOPG2_OIDS


class OneStatementCursor(ClientCursor[Any]):
    """A client-binding cursor that always uses the extended query protocol, for plain
    queries and for ``COPY`` alike, so the server refuses text holding two statements."""

    def _execute_send(self, query: Any, *, force_extended: bool = False, binary: bool | None = None) -> None:
        super()._execute_send(query, force_extended=True, binary=binary)


def options_value(extra: str | None = None) -> str:
    """The libpq ``options`` string: ours, after any the admin gave (ours win)."""
    ours = " ".join(f"-c {k}={v}" for k, v in SESSION_OPTIONS.items())
    return f"{extra} {ours}" if extra else ours


def connect_args(extra_options: str | None = None) -> dict[str, Any]:
    """What ``psycopg.connect`` needs for an agent connection (SQLAlchemy ``connect_args``)."""
    return {
        "cursor_factory": OneStatementCursor,
        "context": PSYCOPG2_LIKE,
        "options": options_value(extra_options),
        # Never a named server-side prepared statement (the agent's cursors bind on the
        # client and do not prepare anyway): behind PgBouncer's transaction pooling one
        # would be missing ("does not exist") on the next transaction's server connection.
        "prepare_threshold": None,
    }


def reset_on_return(dbapi_connection: Any, _record: Any, _state: Any = None) -> None:
    """SQLAlchemy pool ``reset`` event: roll back, then ``DISCARD ALL`` (which includes
    ``pg_advisory_unlock_all()``). Raising here makes the pool drop the connection."""
    conn: psycopg.Connection[Any] = dbapi_connection
    conn.rollback()
    conn.autocommit = True  # DISCARD ALL cannot run inside a transaction block
    try:
        conn.execute("DISCARD ALL")
    finally:
        conn.autocommit = False


# connection record ``info`` key: the settings a job's transaction must make itself (the
# admin's ``-c`` ones from ``options``) when the session does not hold ours; absent when it does.
PER_TRANSACTION = "pg_settings_per_transaction"


def check_session(cur: Any) -> bool:
    """Whether the startup settings hold for the whole session: they took, and the backend
    is the one libpq connected to (its process id is the one in the startup's
    BackendKeyData). False behind a connection pooler (PgBouncer gives the client a key of
    its own; in transaction pooling each transaction may run on another server
    connection) or when a pooler dropped ``options``: then every job's transaction sets
    them itself (``transaction_settings_sql``)."""
    names = list(SESSION_OPTIONS)
    cur.execute("SELECT pg_backend_pid(), " + ", ".join(f"current_setting('{n}')" for n in names))
    row = cur.fetchone()
    if row is None or int(row[0]) != cur.connection.info.backend_pid:
        return False
    return all(_took(name, str(value)) for name, value in zip(names, row[1:], strict=True))


def _took(name: str, value: str) -> bool:
    want = SESSION_OPTIONS[name]
    if name == "DateStyle":  # "ISO, MDY": the order part is kept
        return value.upper().split(",")[0].strip() == want.upper()
    return value.lower() == want.lower()


def admin_settings(extra: str | None) -> dict[str, str]:
    """The ``-c name=value`` (or ``--name=value``) settings in the admin's ``options``,
    for a session whose ``options`` a pooler refused or dropped (``\\ `` is a space)."""
    found: dict[str, str] = {}
    words = re.findall(r"(?:\\.|\S)+", extra or "")
    i = 0
    while i < len(words):
        word = words[i]
        if word == "-c" and i + 1 < len(words):
            i += 1
            word = words[i]
        elif word.startswith("-c"):
            word = word[2:]
        elif word.startswith("--"):
            word = word[2:]
        else:
            i += 1
            continue
        name, sep, value = word.partition("=")
        if sep and name:
            found[name.replace("-", "_")] = re.sub(r"\\(.)", r"\1", value)
        i += 1
    return found


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def transaction_settings_sql(extra: dict[str, str], timeout_ms: int | None) -> str:
    """One statement setting, for the current transaction only (``set_config(..., true)``,
    ``SET LOCAL``), what a session behind a pooler cannot keep: the admin's ``-c``
    settings, then ours (they win), then the job's ``statement_timeout``. Nothing of it
    outlives the transaction, so nothing reaches another client of the pooler."""
    values = {**extra, **SESSION_OPTIONS}
    if timeout_ms is not None:
        values["statement_timeout"] = str(timeout_ms)
    return "SELECT " + ", ".join(f"set_config({_quote(k)}, {_quote(v)}, true)" for k, v in values.items())


def refused_options(exc: BaseException) -> bool:
    """A pooler refused the startup packet's ``options`` (PgBouncer without ``options`` in
    ``ignore_startup_parameters``: "unsupported startup parameter: options")."""
    return "unsupported startup parameter: options" in str(exc)


def do_connect(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
    """SQLAlchemy ``do_connect``: connect; if a pooler refuses ``options``, connect again
    without it, and from then on never send it (``cparams`` is the engine's own dict).
    ``check_session`` then finds the settings missing and the jobs set them per transaction."""
    try:
        return dialect.loaded_dbapi.connect(*cargs, **cparams)
    except psycopg.OperationalError as exc:
        if "options" not in cparams or not refused_options(exc):
            raise
    log.info("the PostgreSQL server (a pooler) refused the startup options; "
             "they are set in each transaction instead")  # fmt: skip
    cparams.pop("options", None)
    return dialect.loaded_dbapi.connect(*cargs, **cparams)


def require_rows(conn: psycopg.Connection[Any], text: str) -> None:
    """Before the plain path runs ``text``: the server parses it as the unnamed prepared
    statement and describes it; a statement that returns no rows (``COPY``, ``SET``,
    ``COMMIT``, ``LISTEN``, a write without ``RETURNING``...) is refused before it runs.
    The plain path exists for ``SHOW`` and ``EXPLAIN``, which return rows; everything
    the grammar reads as a query goes by ``DECLARE``, which refuses the rest itself. So
    even a superuser's ``COPY ... TO PROGRAM`` cannot reach either path without the guard.
    (The statement is parsed twice; these are small and rare.)"""
    from psycopg import errors
    from psycopg.generators import execute
    from psycopg.pq import ExecStatus

    pg = conn.pgconn
    for send in (lambda: pg.send_prepare(b"", text.encode(conn.info.encoding)),
                 lambda: pg.send_describe_prepared(b"")):  # fmt: skip
        send()
        results = conn.wait(execute(pg))
        bad = next((r for r in results if r.status == ExecStatus.FATAL_ERROR), None)
        if bad is not None:
            raise errors.error_from_result(bad, encoding=conn.info.encoding)
    if not results or results[-1].nfields == 0:
        raise NoRowsError("only statements that return rows may run; this one returns none")


class NoRowsError(Exception):
    """The plain path refused a statement that returns no rows (see ``require_rows``)."""


def connect_for_test(conninfo: str) -> psycopg.Connection[Any]:
    """A connection as the agent makes it, without SQLAlchemy (tests, benchmarks)."""
    return psycopg.connect(conninfo, **connect_args())


# ------------------------------------------------------------------ value loaders

class _Delegating(Loader):
    """Special texts first, then psycopg's own (C) loader for the type."""

    special: dict[bytes, Any] = {}

    def __init__(self, oid: int, context: Any = None) -> None:
        super().__init__(oid, context)
        self._inner = psycopg.adapters.get_loader(oid, psycopg.pq.Format.TEXT)(oid, context)  # type: ignore[misc]

    def load(self, data: Buffer) -> Any:
        try:
            return self._inner.load(data)  # refuses every special text (DataError)
        except DataError:
            raw = bytes(data)
            if raw in self.special:
                return self.special[raw]
            raise


class JsonLoader(Loader):
    """``json``/``jsonb`` as ``json.loads`` makes them (psycopg2's and psycopg's default),
    read by orjson (~3x cheaper) whenever that gives the same Python value: orjson
    refuses what ``json.loads`` alone accepts (``NaN``, ``1e400``, lone surrogates, a
    BOM), and only integers past 64 bits differ (orjson makes them floats), so a text
    with 19 digits in a row goes to ``json.loads`` (``tests/agent/sources/test_pg_session.py``)."""

    def load(self, data: Buffer) -> Any:
        raw = data if type(data) is bytes else bytes(data)
        if not may_hold_big_int(raw):
            try:
                return orjson.loads(raw)
            except orjson.JSONDecodeError:
                pass
        return json.loads(raw)


class DateLoader(_Delegating):
    special = {b"infinity": date.max, b"-infinity": date.min}


class TimestampLoader(_Delegating):
    special = {b"infinity": datetime.max, b"-infinity": datetime.min}


class TimeLoader(_Delegating):
    special = {b"24:00:00": time(0)}


class IntervalLoader(Loader):
    """psycopg's C loader (a year as 365 days, a month as 30, as psycopg2 did), except on
    the texts it reads wrong: it sums the days in 32 bits, so ``178000000 years`` came out
    as 545490560 days, and PostgreSQL 17's ``infinity`` as 0. Infinities are refused. A
    wrapped sum lands back inside timedelta's 999999999 days only from a year count of 7
    digits or more: below that, 365 x years + 30 x months + days is at most ~2.52e9 in
    magnitude, so a wrapped one is at least ~1.78e9 (refused, as the true sum is). Texts
    with such a year count go to psycopg's Python loader, which is exact."""

    def __init__(self, oid: int, context: Any = None) -> None:
        super().__init__(oid, context)
        self._fast = psycopg.adapters.get_loader(oid, psycopg.pq.Format.TEXT)(oid, context)  # type: ignore[misc]
        from psycopg.types.datetime import IntervalLoader as Exact

        self._exact = Exact(oid, context)

    def load(self, data: Buffer) -> timedelta:
        raw = data if type(data) is bytes else bytes(data)
        if b"year" in raw or b"inf" in raw:  # "12 years 3 mons ...": the years come first
            if b"inf" in raw:
                raise DataError(f"can't read the infinite interval {raw.decode('utf-8', 'replace')!r}")
            if len(raw.split(b" ", 1)[0].lstrip(b"+-")) >= 7:
                return self._exact.load(raw)  # type: ignore[no-any-return]
        return self._fast.load(raw)  # type: ignore[no-any-return]


_TSTZ = re.compile(
    rb"^(\d{4})-(\d\d)-(\d\d)[ T](\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?([-+])(\d\d)(?::(\d\d))?(?::(\d\d))?$"
)
_FROM_ISO = datetime.fromisoformat
_UTC_MAX = datetime.max.replace(tzinfo=UTC)
_UTC_MIN = datetime.min.replace(tzinfo=UTC)


class TimestamptzLoader(Loader):
    """ISO ``timestamptz`` text with the printed offset kept as a fixed offset (psycopg2)."""

    def load(self, data: Buffer) -> datetime:
        raw = bytes(data)
        try:
            # The same fields as _TSTZ below, in C (~4x cheaper); it refuses what the
            # regex refuses (infinity, BC, years past 9999).
            return _FROM_ISO(raw.decode("ascii"))
        except ValueError:
            pass
        if raw == b"infinity":
            return _UTC_MAX
        if raw == b"-infinity":
            return _UTC_MIN
        m = _TSTZ.match(raw)
        if m is None:
            raise DataError(f"can't parse timestamptz {raw.decode('utf-8', 'replace')!r}")
        ye, mo, da, ho, mi, se, fr, sign, oh, om, os_ = m.groups()
        offset = int(oh) * 3600 + int(om or 0) * 60 + int(os_ or 0)
        tz = timezone(timedelta(seconds=-offset if sign == b"-" else offset))
        micro = int(fr.ljust(6, b"0")) if fr else 0
        try:
            return datetime(int(ye), int(mo), int(da), int(ho), int(mi), int(se), micro, tz)
        except ValueError as exc:
            raise DataError(f"can't parse timestamptz {raw.decode('utf-8', 'replace')!r}: {exc}") from None


class ArrayLiteralDumper(Dumper):
    """A Python list as psycopg2 merged it: ``ARRAY[1,2]``, ``ARRAY['x',NULL]`` (the
    element types inferred by the server, ``text[]`` for strings), ``'{}'`` when empty.
    psycopg 3 would write ``'{1,2}'::int2[]`` and an untyped ``'{x,NULL}'``."""

    def __init__(self, cls: type, context: Any = None) -> None:
        super().__init__(cls, context)
        self._tx = Transformer(context)

    def dump(self, obj: Any) -> bytes:
        return self.quote(obj)

    def quote(self, obj: Any) -> bytes:
        if not obj:
            return b"'{}'"
        return b"ARRAY[" + b",".join(self._tx.as_literal(x) for x in obj) + b"]"


def _psycopg2_like() -> AdaptersMap:
    amap = AdaptersMap(psycopg.adapters)
    amap.register_dumper(list, ArrayLiteralDumper)
    for info in psycopg.postgres.types:
        for oid in (info.oid, info.array_oid):
            if oid and oid not in PSYCOPG2_OIDS:
                amap.register_loader(oid, TextLoader)
    amap.register_loader("date", DateLoader)
    amap.register_loader("timestamp", TimestampLoader)
    amap.register_loader("time", TimeLoader)
    amap.register_loader("interval", IntervalLoader)
    amap.register_loader("timestamptz", TimestamptzLoader)
    amap.register_loader("json", JsonLoader)
    amap.register_loader("jsonb", JsonLoader)
    return amap


PSYCOPG2_LIKE = _psycopg2_like()
