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
from tests.conftest import scaled, wait_until

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
