"""ODBC and SQL Server paths through Debian's ODBC drivers against the real databases;
cancel and timeouts checked at the database; private tables and columns; options."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest

from agent.config import split_odbc_password
from agent.sources import create_source
from agent.sources.sqlodbc import build_connection_string, parse_attributes
from agent.sources.sqloptions import OptionError, parse_sql_options
from shared.errors import JobError
from shared.rows import decode_rows, encode_rows
from tests.conftest import same_outcome, scaled, wait_until

from .conftest import fill, job_rows
from .test_readonly_corpus import _engine_exec, _odbc_url


def _cancel_after_start(src: Any, sql: str, seen: Any) -> tuple[float, JobError]:
    """Start ``sql``; once ``seen()`` finds it running at the database, cancel it."""
    stream = src.prepare({"sql": sql})
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            stream.start()
            stream.fetch(10)
        except JobError as exc:
            out["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    wait_until(seen, 10, what="the query to run at the database")
    started = time.monotonic()
    stream.cancel()
    worker.join(scaled(10))
    stream.close()
    return time.monotonic() - started, out["error"]


@pytest.fixture
def pg_items(pg_url: str) -> Iterator[tuple[str, str]]:
    schema = "mc_odbc_" + uuid.uuid4().hex[:10]
    _engine_exec(
        pg_url,
        f"CREATE SCHEMA {schema}",
        f"CREATE TABLE {schema}.people (id int PRIMARY KEY, name text NOT NULL, salary numeric(12,2), "
        "born date, at timestamptz, tags text[], doc jsonb, uid uuid)",
        f"CREATE TABLE {schema}.secrets (id int PRIMARY KEY)",
        f"CREATE TABLE {schema}.refs (id int PRIMARY KEY, person_id int REFERENCES {schema}.people(id))",
        f"INSERT INTO {schema}.people SELECT g, 'p' || g, g * 1000.25, DATE '2020-01-01' + g, "
        "TIMESTAMPTZ '2020-01-01 12:00:00+02', ARRAY['a','b'], '{\"k\": 1}', "
        f"('00000000-0000-0000-0000-00000000000' || (g % 10))::uuid FROM generate_series(1, 5000) g",
        f"ANALYZE {schema}.people",
    )
    try:
        yield pg_url, schema
    finally:
        _engine_exec(pg_url, f"DROP SCHEMA {schema} CASCADE")


def _pg_running(url: str, marker: str) -> Any:
    return lambda: _engine_exec(
        url,
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE "
        f"'%{marker}%' AND query NOT LIKE '%pg_stat_activity%'",
    )[0][0][0]


def _my_running(url: str, marker: str) -> Any:
    return lambda: _engine_exec(
        url,
        "SELECT count(*) FROM information_schema.processlist WHERE info LIKE "
        f"'%{marker}%' AND info NOT LIKE '%processlist%'",
    )[0][0][0]


# ---------------------------------------------------------------- ODBC: PostgreSQL


@pytest.mark.postgres
def test_odbc_postgres_values_discover_and_test(pg_items: tuple[str, str]) -> None:
    """Through psqlodbc: typed columns in order, exact values, discover with keys, test."""
    url, schema = pg_items
    src = create_source("o", "odbc", _odbc_url("postgres", url), options={"batch_size": "700"})
    cols, batches = src.query({"sql": f"SELECT id, salary, born, name FROM {schema}.people WHERE id <= :n ORDER BY id", "params": {"n": 3000}})
    assert [c["name"] for c in cols] == ["id", "salary", "born", "name"]
    assert [c["type"] for c in cols] == ["integer", "decimal", "date", "string"]
    sizes = [len(b) for b in batches]
    assert sum(sizes) == 3000 and max(sizes) <= 700
    _, batches = src.query({"sql": f"SELECT salary, born FROM {schema}.people WHERE id = 7"})
    assert decode_rows(encode_rows(next(iter(batches)))) == [["7001.75", "2020-01-08"]]
    tables = {t["name"]: t for t in src.discover({"schema": schema})}
    assert set(tables) == {"people", "secrets", "refs"}
    assert tables["people"]["primaryKey"] == ["id"] and tables["people"]["rowEstimate"] == 5000
    assert {c["name"]: c["nullable"] for c in tables["people"]["columns"]}["name"] is False
    assert tables["refs"]["foreignKeys"][0]["referredTable"] == "people"
    result = src.test()
    assert result["connected"] and result["serverVersion"][0].isdigit() and result["tablesFound"] >= 3
    src.close()


@pytest.mark.postgres
def test_odbc_postgres_cancel_and_timeout_stop_the_backend(pg_url: str) -> None:
    """cursor.cancel() (SQLCancel) and statement_timeout end the query in pg_stat_activity."""
    src = create_source("o", "odbc", _odbc_url("postgres", pg_url))
    marker = "mc_ocancel_" + uuid.uuid4().hex[:8]
    elapsed, err = _cancel_after_start(src, f"SELECT pg_sleep(60) AS {marker}", _pg_running(pg_url, marker))
    assert err.code == "CANCELLED" and elapsed < scaled(5)
    assert _pg_running(pg_url, marker)() == 0
    with pytest.raises(JobError) as info:
        src.query({"sql": "SELECT pg_sleep(10)"}, timeout=0.3)
    assert info.value.code == "TIMEOUT"
    src.close()


@pytest.mark.postgres
def test_private_tables_and_columns_on_postgres(pg_items: tuple[str, str]) -> None:
    """Private names vanish from discover, and queries naming them fail SCHEMA_ACCESS_DENIED."""
    url, schema = pg_items
    src = create_source("p", "postgres", url, options={"private_tables": "secrets", "private_columns": f"{schema}.people.salary"})
    tables = {t["name"]: t for t in src.discover({"schema": schema})}
    assert "secrets" not in tables
    assert "salary" not in [c["name"] for c in tables["people"]["columns"]]
    for sql in (f"SELECT * FROM {schema}.secrets", f"SELECT salary FROM {schema}.people",
                f"SELECT * FROM {schema}.people", f"SELECT p FROM {schema}.people p",
                f'SELECT "salary" FROM {schema}.people', f"SELECT row_to_json(p) FROM {schema}.people p"):  # fmt: skip
        with pytest.raises(JobError) as info:
            src.query({"sql": sql})
        assert info.value.code == "SCHEMA_ACCESS_DENIED", sql
    _, batches = src.query({"sql": f"SELECT p.id, name, 'salary' AS word FROM {schema}.people p WHERE id = 1"})
    assert next(iter(batches)) == [(1, "p1", "salary")]
    src.close()


@pytest.mark.postgres
def test_postgres_values_json_arrays_uuid_and_zones(pg_items: tuple[str, str]) -> None:
    """JSON stays JSON, arrays stay arrays, UUIDs are text, timestamptz carries its zone."""
    url, schema = pg_items
    src = create_source("p", "postgres", url)
    cols, batches = src.query({"sql": f"SELECT tags, doc, uid, at FROM {schema}.people WHERE id = 1"})
    assert [c["type"] for c in cols] == ["array", "json", "uuid", "datetime"]
    [row] = decode_rows(encode_rows(next(iter(batches))))
    assert row[0] == ["a", "b"] and row[1] == {"k": 1} and row[2].endswith("0001")
    assert row[3].endswith("+00:00") or row[3].endswith("Z") or "+" in row[3]
    src.close()


# ---------------------------------------------------------------- ODBC: MariaDB, SQLite


@pytest.mark.mysql
def test_odbc_mariadb_query_cancel_and_timeout(mysql_url: str) -> None:
    """Through MariaDB Connector/ODBC: rows, SQLCancel seen in the processlist, max_statement_time."""
    src = create_source("m", "odbc", _odbc_url("mysql", mysql_url))
    _, batches = src.query({"sql": "SELECT :a AS a, 1.50 AS b", "params": {"a": "x"}})
    assert decode_rows(encode_rows(next(iter(batches)))) == [["x", "1.50"]]
    marker = "mc_mcancel_" + uuid.uuid4().hex[:8]
    elapsed, err = _cancel_after_start(src, f"SELECT SLEEP(60) AS {marker}", _my_running(mysql_url, marker))
    assert err.code == "CANCELLED" and elapsed < scaled(5)
    wait_until(lambda: _my_running(mysql_url, marker)() == 0, 5, what="the query to leave the processlist")
    started = time.monotonic()
    with pytest.raises(JobError) as info:
        src.query({"sql": "SELECT SLEEP(10)"}, timeout=0.5)
    assert info.value.code in ("TIMEOUT",) and time.monotonic() - started < scaled(5)
    src.close()


@pytest.mark.mysql
def test_mysql_native_timeout_is_max_statement_time(mysql_url: str) -> None:
    """PyMySQL path: the job's timeout is enforced by the server (max_statement_time)."""
    src = create_source("m", "mysql", mysql_url)
    with pytest.raises(JobError) as info:
        list(src.query({"sql": "SELECT SLEEP(10)"}, timeout=0.5)[1])
    assert info.value.code == "TIMEOUT"
    _, batches = src.query({"sql": "SELECT 1"})  # the pooled session no longer has the limit
    assert [list(r) for r in next(iter(batches))] == [[1]]
    src.close()


def _slow_sqlite(tmp_path: Path) -> Path:
    path = tmp_path / "slow.db"
    sqlite3.connect(path).close()
    return path


_ENDLESS = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"


@pytest.mark.parametrize("via_odbc", [False, True], ids=["sqlite3", "odbc"])
def test_sqlite_interrupt_and_deadline(tmp_path: Path, via_odbc: bool) -> None:
    """SQLite: cancel interrupts an endless query; a job timeout interrupts it as TIMEOUT."""
    path = _slow_sqlite(tmp_path)
    src = create_source("s", "odbc", f"DRIVER={{SQLite3}};Database={path}") if via_odbc else create_source("s", "sqlite", f"sqlite:///{path}")
    stream = src.prepare({"sql": _ENDLESS})
    timer = threading.Timer(0.3, stream.cancel)
    timer.start()
    started = time.monotonic()
    with pytest.raises(JobError) as info:
        stream.start()
    stream.close()
    assert info.value.code == "CANCELLED" and time.monotonic() - started < scaled(5)
    with pytest.raises(JobError) as info:
        src.query({"sql": _ENDLESS}, timeout=0.2)
    assert info.value.code == "TIMEOUT"
    src.close()


# ---------------------------------------------------------------- SQL Server path


def test_mssql_urls_become_odbc_connection_strings() -> None:
    """mssql+pyodbc:// host, DSN and odbc_connect forms become the strings SQL Server's driver reads."""
    opts = parse_sql_options({"Encrypt": "yes"})
    s = build_connection_string("mssql", "mssql+pyodbc://sa@db.example:1433/erp?driver=ODBC+Driver+18+for+SQL+Server", "p;w}d", opts)
    pairs = dict(parse_attributes(s))
    assert pairs["DRIVER"] == "ODBC Driver 18 for SQL Server" and pairs["Server"] == "db.example,1433"
    assert pairs["Database"] == "erp" and pairs["UID"] == "sa" and pairs["PWD"] == "p;w}d"
    assert pairs["Encrypt"] == "yes"
    s = build_connection_string("mssql", "mssql+pyodbc://sa@MyDsn", None, opts)
    assert dict(parse_attributes(s))["dsn"] == "MyDsn"
    raw = "DRIVER={ODBC Driver 18 for SQL Server};SERVER=h;UID=u"
    s = build_connection_string("mssql", "mssql+pyodbc:///?odbc_connect=" + quote_plus(raw), "x", opts)
    assert dict(parse_attributes(s))["SERVER"] == "h" and dict(parse_attributes(s))["PWD"] == "x"
    s = build_connection_string("odbc", "odbc://user@Sales?Port=1", "pw", opts)
    assert dict(parse_attributes(s)) == {"DSN": "Sales", "UID": "user", "Port": "1", "Encrypt": "yes", "PWD": "pw"}
    assert split_odbc_password(raw + ";PWD={a;b}") == (raw, "a;b")


@pytest.mark.mysql
def test_mssql_path_runs_through_an_odbc_driver(mysql_url: str) -> None:
    """The mssql type's whole path (T-SQL guard, pool, SQLCancel, ODBC discover) over MariaDB's driver."""
    raw = _odbc_url("mysql", mysql_url)
    src = create_source("ms", "mssql", "mssql+pyodbc:///?odbc_connect=" + quote_plus(raw))
    assert src.dialect == "mssql"
    for sql in ("SELECT 1 EXEC xp_cmdshell 'dir'", "SELECT * FROM t WITH (UPDLOCK)", "SELECT [a]]'] DELETE FROM t --']"):
        with pytest.raises(JobError) as info:
            src.query({"sql": sql})
        assert info.value.code == "WRITE_OPERATION_REJECTED", sql
    _, batches = src.query({"sql": "SELECT :x AS x", "params": {"x": 5}})
    assert next(iter(batches)) == [(5,)]
    assert src.test()["connected"] is True
    marker = "mc_scancel_" + uuid.uuid4().hex[:8]
    _, err = _cancel_after_start(src, f"SELECT SLEEP(60) AS {marker}", _my_running(mysql_url, marker))
    assert err.code == "CANCELLED"
    src.close()


def test_bad_options_are_refused_before_use() -> None:
    """Pool and batch options are checked; bad values name the option."""
    with pytest.raises(OptionError, match="pool_size"):
        parse_sql_options({"pool_size": "lots"})
    with pytest.raises(OptionError, match="private_columns"):
        parse_sql_options({"private_columns": "nodot"})
    opts = parse_sql_options({"pool_size": "2", "pool_recycle": "60", "pool_pre_ping": "no", "sslmode": "require"})
    assert (opts.pool_size, opts.pool_recycle, opts.pool_pre_ping) == (2, 60, False)
    assert opts.driver_args == {"sslmode": "require"}


@pytest.mark.mysql
def test_odbc_mariadb_session_is_returned_clean(mysql_url: str) -> None:
    """Guard bypassed (SqlStream directly): a named lock taken by a job through MariaDB's
    ODBC driver is released when the connection goes back to the pool, and the session's
    sql_mode keeps the rules the guard's lexer assumes (issue 13)."""
    from agent.sources.sqlstream import SqlStream

    src = create_source("m", "odbc", _odbc_url("mysql", mysql_url), options={"max_overflow": "0"}, pool_size=1)
    lock = "mc_odbc_lock_" + uuid.uuid4().hex[:8]

    def raw(sql: str) -> list[Any]:
        src._know_flavour()
        stream = SqlStream(src, sql, [], timeout=5, server_side=False)
        try:
            stream.start()
            rows = list(stream.fetch(100))
            while more := stream.fetch(100):
                rows += more
            return rows
        finally:
            stream.close()

    try:
        assert raw(f"SELECT GET_LOCK('{lock}', 0)") == [(1,)]
        assert raw(f"SELECT IS_USED_LOCK('{lock}')") == [(None,)]  # the same, reused connection
        [(mode,)] = raw("SELECT @@SESSION.sql_mode")
        assert "ANSI_QUOTES" not in mode and "NO_BACKSLASH_ESCAPES" not in mode
    finally:
        src.close()


# ---------------------------------------------------------------- ODBC: MariaDB values


def _job(src: Any, sql: str) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """``sql`` run as a job: the column types, and the rows as the relay gets them."""
    types, rows, _ = job_rows(src, sql)
    return types, rows


_ODD = (
    "CREATE TABLE odd (id int PRIMARY KEY, d date, dt datetime, dt6 datetime(6), ts timestamp NULL, "
    "t time, t6 time(6), flag bit(1), b8 bit(8), b64 bit(64), bin binary(4), vb varbinary(8))",
    "INSERT INTO odd VALUES "
    "(1, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL), "
    "(2, '0000-00-00', '0000-00-00 00:00:00', '0000-00-00 00:00:00', '0000-00-00 00:00:00', "
    "'-838:59:59', '100:00:00.25', b'1', b'10000001', b'" + "1" * 64 + "', x'01020304', x'ff'), "
    "(3, '2024-00-00', '2024-05-00 10:00:00', '2024-05-00 10:00:00.25', NULL, "
    "'10:11:12', '-00:00:00.5', b'0', b'0', b'0', x'00000000', x''), "
    "(4, '2024-05-01', '2024-05-01 10:00:00', '2024-05-01 10:00:00.25', '2024-05-01 10:00:00', "
    "'00:00:00', '23:59:59.999999', b'1', b'11', b'100000000', x'ff000000', x'0102')",
)
_ODD_SQL = "SELECT id, d, dt, dt6, ts, t, t6, flag, b8, b64, bin, vb, MAX(flag) OVER () AS m FROM odd ORDER BY id"
_ODD_TYPES = {"id": "integer", "d": "date", "dt": "datetime", "dt6": "datetime", "ts": "datetime",
              "t": "interval", "t6": "interval", "flag": "boolean", "b8": "integer", "b64": "integer",
              "bin": "bytes", "vb": "bytes", "m": "boolean"}  # fmt: skip
_ODD_ROWS = [
    {"id": 1, "d": None, "dt": None, "dt6": None, "ts": None, "t": None, "t6": None, "flag": None,
     "b8": None, "b64": None, "bin": None, "vb": None, "m": True},
    {"id": 2, "d": None, "dt": None, "dt6": None, "ts": None, "t": "-P34DT22H59M59S",
     "t6": "P4DT4H0M0.25S", "flag": True, "b8": 129, "b64": 2**64 - 1, "bin": "AQIDBA==", "vb": "/w==",
     "m": True},
    {"id": 3, "d": "2024-00-00", "dt": "2024-05-00T10:00:00", "dt6": "2024-05-00T10:00:00.250000",
     "ts": None, "t": "P0DT10H11M12S", "t6": "-P0DT0H0M0.5S", "flag": False, "b8": 0, "b64": 0,
     "bin": "AAAAAA==", "vb": "", "m": True},
    {"id": 4, "d": "2024-05-01", "dt": "2024-05-01T10:00:00", "dt6": "2024-05-01T10:00:00.250000",
     "ts": "2024-05-01T10:00:00", "t": "P0DT0H0M0S", "t6": "P0DT23H59M59.999999S", "flag": True,
     "b8": 3, "b64": 256, "bin": "/wAAAA==", "vb": "AQI=", "m": True},
]  # fmt: skip


@pytest.mark.mysql
def test_odbc_mariadb_values_are_the_direct_paths(maria_db: tuple[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Through MariaDB Connector/ODBC, the values (and column types) the direct path gives
    the same table: the all-zero date null, a partial one ISO-shaped text, TIME past 24 h
    and below zero a duration, BIT(n) an unsigned integer, BIT(1) a boolean, BINARY still
    bytes, ordinary dates as before. pyodbc failed the whole job on the zero date (``month
    must be in 1..12``) and on TIME '-838:59:59' (``hour must be in 0..23``)."""
    from agent.sources import mysqlodbc

    url, conn = maria_db
    fill(conn, *_ODD)
    native = create_source("n", "mysql", url)
    odbc = create_source("o", "odbc", _odbc_url("mysql", url))
    try:
        direct = _job(native, _ODD_SQL)
        through_odbc = _job(odbc, _ODD_SQL)
        # Each kind alone too (pyodbc reads a column's converter per SQL type).
        alone = {col: _job(odbc, f"SELECT {col} FROM odd ORDER BY id")[1] for col in ("d", "dt6", "t", "b64")}
        # Where the driver's type name cannot be had, BIT stays bytes and nothing else changes.
        monkeypatch.setattr(mysqlodbc, "_statement_handle", lambda cursor: None)
        no_names = _job(odbc, "SELECT b8, bin, d FROM odd WHERE id = 4")
    finally:
        odbc.close()
        native.close()
    assert direct == (_ODD_TYPES, _ODD_ROWS)
    assert through_odbc == direct
    for col, rows in alone.items():
        assert rows == [{col: r[col]} for r in _ODD_ROWS], col
    assert no_names == ({"b8": "bytes", "bin": "bytes", "d": "date"},
                        [{"b8": "Aw==", "bin": "/wAAAA==", "d": "2024-05-01"}])  # fmt: skip


@pytest.mark.mysql
def test_odbc_mariadb_converters_do_not_outlive_the_job(maria_db: tuple[str, Any]) -> None:
    """The converters are pyodbc's connection's, and the pool reuses it: after a job (read
    to the end, or stopped early) the connection has none, so the next job, discovery and
    the connection test read as pyodbc reads; the next job's values are the usual objects."""
    import datetime as dt

    import pyodbc

    from agent.sources.sqlstream import SqlStream

    url, conn = maria_db
    fill(conn, *_ODD, "CREATE TABLE plain (id int PRIMARY KEY, d date, at datetime(6), t time, b varbinary(4))",
          "INSERT INTO plain VALUES (1, '2024-05-01', '2024-05-01 10:00:00.25', '10:11:12', x'0102')")  # fmt: skip
    src = create_source("o", "odbc", _odbc_url("mysql", url), options={"max_overflow": "0", "batch_size": "1"},
                        pool_size=1)  # fmt: skip

    def converters_left() -> list[Any]:
        fairy = src.raw_connection()  # the one pooled connection every job here used
        try:
            types = (91, 92, 93, -2, pyodbc.SQL_TYPE_DATE, pyodbc.SQL_TYPE_TIMESTAMP)
            return [t for t in types if fairy.dbapi_connection.get_output_converter(t) is not None]
        finally:
            fairy.close()

    try:
        assert _job(src, _ODD_SQL) == (_ODD_TYPES, _ODD_ROWS)
        assert converters_left() == []
        early = src.prepare({"sql": _ODD_SQL})  # stopped after the first row of four
        early.start()
        assert len(early.fetch(1)) == 1
        early.close()
        assert converters_left() == []
        assert src.test()["connected"] is True
        assert {t["name"] for t in src.discover({})} >= {"odd", "plain"}
        src._know_flavour()
        stream = SqlStream(src, "SELECT d, at, t, b FROM plain", [], timeout=5, server_side=False)
        try:
            stream.start()
            rows = stream.fetch(10)
        finally:
            stream.close()
        assert rows == [(dt.date(2024, 5, 1), dt.datetime(2024, 5, 1, 10, 0, 0, 250000),
                         dt.timedelta(hours=10, minutes=11, seconds=12), b"\x01\x02")]  # fmt: skip
        assert [type(v) for v in rows[0]] == [dt.date, dt.datetime, dt.timedelta, bytes]
        assert converters_left() == []
    finally:
        src.close()


@pytest.mark.postgres
def test_odbc_postgres_dates_and_times_stay_pyodbcs(pg_url: str) -> None:
    """Only MariaDB Connector/ODBC gets the converters: through psqlodbc a time stays a
    ``time`` column of times, dates and timestamps pyodbc's own objects (a guard for the
    MariaDB-only switch, not a regression of today's code)."""
    src = create_source("o", "odbc", _odbc_url("postgres", pg_url))
    try:
        types, rows = _job(src, "SELECT DATE '2024-05-01' AS d, TIMESTAMP '2024-05-01 10:00:00.25' AS at, "
                                "TIME '10:11:12' AS t, '\\x0102'::bytea AS b")  # fmt: skip
    finally:
        src.close()
    assert types == {"d": "date", "at": "datetime", "t": "time", "b": "bytes"}
    assert rows == [{"d": "2024-05-01", "at": "2024-05-01T10:00:00.250000", "t": "10:11:12", "b": "AQI="}]


def test_odbc_mariadb_time_converter_reads_as_pymysql() -> None:
    """The TIME converter's cheap path gives exactly what PyMySQL's ``convert_timedelta``
    (the direct path's) gives: a timedelta, or the text it cannot read."""
    import random

    from pymysql.converters import convert_timedelta

    from agent.sources.mysqlodbc import SQL_TYPE_TIME, _converters

    convert = _converters()[SQL_TYPE_TIME]
    rnd = random.Random(92)
    texts = [b"-838:59:59", b"838:59:59.000000", b"10:11:12", b"-00:00:00.500000", b"1:2:3", b"10:11:12.5",
             "\u0661\u0661:00:00".encode(), b"1_:00:00", b" 1:00:00", b"+1:00:00", b"10:11:12.", b"",
             b"10:11:12.1234567", b"10:11:12 ", b"99:99:99", b"10:11:12.00000x"]  # fmt: skip
    for _ in range(20_000):
        s = f"{'-' if rnd.random() < 0.2 else ''}{rnd.randint(0, 900):0{rnd.randint(1, 3)}d}:" \
            f"{rnd.randint(0, 99):02d}:{rnd.randint(0, 99):02d}"  # fmt: skip
        if k := rnd.randint(0, 7):
            s += "." + str(rnd.randint(0, 10**k - 1)).zfill(k)
        texts.append(s.encode())
    for raw in texts:
        same_outcome(convert_timedelta, convert, raw)
