"""SQL sources against real SQLite, PostgreSQL and MariaDB: values, streaming, read-only, cancel."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import text

from agent.sources import create_source
from agent.sources.sql import SqlSource
from shared.errors import JobError
from shared.rows import decode_rows, encode_rows
from tests.agent.conftest import make_sample_db
from tests.conftest import same_outcome, scaled

N = 5000


def _exec(url: str, *statements: str) -> None:
    eng = sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg2://", 1))
    try:
        with eng.begin() as conn:
            for s in statements:
                conn.execute(text(s))
    finally:
        eng.dispose()


@pytest.fixture
def pg_schema(pg_url: str) -> Iterator[tuple[str, str]]:
    schema = "mc_agent_" + uuid.uuid4().hex[:10]
    _exec(
        pg_url,
        f"CREATE SCHEMA {schema}",
        f"CREATE TABLE {schema}.items (id int PRIMARY KEY, amount numeric(20,6), name text, "
        "born date, at timestamptz, raw bytea, ok boolean)",
        f"INSERT INTO {schema}.items SELECT g, g * 1.000001, 'n' || g, DATE '2020-01-01' + g, "
        f"TIMESTAMPTZ '2020-01-01 00:00:00+00', '\\x0102'::bytea, g % 2 = 0 "
        f"FROM generate_series(1, {N}) g",
        f"CREATE TABLE {schema}.refs (id int PRIMARY KEY, item_id int REFERENCES {schema}.items(id))",
        f"ANALYZE {schema}.items",
    )
    try:
        yield pg_url, schema
    finally:
        _exec(pg_url, f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def mysql_db(mysql_url: str) -> Iterator[str]:
    name = "mc_agent_" + uuid.uuid4().hex[:10]
    _exec(mysql_url, f"CREATE DATABASE {name}")
    url = mysql_url.rsplit("/", 1)[0] + "/" + name
    _exec(
        url,
        "CREATE TABLE items (id int PRIMARY KEY, amount decimal(20,6), name varchar(50), "
        "born date, at datetime(3), raw varbinary(10), ok boolean)",
        "CREATE TABLE digits (d int)",
        "INSERT INTO digits VALUES (0),(1),(2),(3),(4),(5),(6),(7),(8),(9)",
        "INSERT INTO items SELECT n, n * 1.000001, CONCAT('n', n), DATE '2020-01-01' + INTERVAL n DAY, "
        "TIMESTAMP '2020-01-01 00:00:00.123', x'0102', n % 2 = 0 FROM (SELECT a.d + 10 * b.d + "
        "100 * c.d + 1000 * e.d + 1 AS n FROM digits a, digits b, digits c, digits e) g "
        f"WHERE n <= {N}",
        "DROP TABLE digits",
        "CREATE TABLE refs (id int PRIMARY KEY, item_id int, FOREIGN KEY (item_id) REFERENCES items(id))",
    )
    try:
        yield url
    finally:
        _exec(mysql_url, f"DROP DATABASE {name}")


def _source(kind: str, url: str) -> SqlSource:
    src = create_source("s", kind, url)
    assert isinstance(src, SqlSource)
    return src


def _cancel_later(src: SqlSource, sql: str) -> tuple[float, JobError]:
    stream = src.prepare({"sql": sql})
    timer = threading.Timer(0.5, stream.cancel)
    timer.start()
    started = time.monotonic()
    with pytest.raises(JobError) as info:
        stream.start()
        stream.fetch(10)
    elapsed = time.monotonic() - started
    stream.close()
    timer.join()
    return elapsed, info.value


# ---------------------------------------------------------------- SQLite


def test_sqlite_streams_in_batches_and_is_read_only(tmp_path: Path) -> None:
    db = make_sample_db(tmp_path / "s.db", rows=1000)
    src = _source("sqlite", f"sqlite:///{db}")
    cols, batches = src.query({"sql": "SELECT id, price, blob FROM items WHERE id < :n", "params": {"n": 700}}, 100)
    sizes = [len(b) for b in batches]
    assert sizes[0] == 200 and sum(sizes) == 700 and all(s <= 200 for s in sizes)
    assert [c["name"] for c in cols] == ["id", "price", "blob"]
    assert cols[2]["type"] == "bytes"
    # Past the guard, the database itself refuses writes (mode=ro + query_only).
    stream = src.prepare({"sql": "SELECT 1"})
    stream.sql = "DELETE FROM items"
    with pytest.raises(JobError) as info:
        stream.start()
    stream.close()
    assert info.value.code == "WRITE_OPERATION_REJECTED"
    assert src.test()["tablesFound"] == 2
    src.close()


def test_sqlite_missing_file_is_source_unavailable(tmp_path: Path) -> None:
    src = _source("sqlite", f"sqlite:///{tmp_path / 'absent.db'}")
    with pytest.raises(JobError) as info:
        src.test()
    assert info.value.code == "SOURCE_UNAVAILABLE"
    assert not (tmp_path / "absent.db").exists()


# ---------------------------------------------------------------- PostgreSQL


@pytest.mark.postgres
def test_postgres_values_are_exact_and_streamed_server_side(pg_schema: tuple[str, str]) -> None:
    url, schema = pg_schema
    src = _source("postgres", url)
    cols, batches = src.query({"sql": f"SELECT * FROM {schema}.items WHERE id <= :n ORDER BY id", "params": {"n": N}}, 1000)
    sizes = [len(b) for b in _take(batches)]
    # Fetched (not pumped): the cursor path, even though the COPY fast path was prepared.
    assert batches.stream.server_side and batches.stream._cursor.name.startswith("mc_")
    assert sizes[0] == 200 and max(sizes) == 1000 and sum(sizes) == N
    types = {c["name"]: c["type"] for c in cols}
    assert types == {"id": "integer", "amount": "decimal", "name": "string", "born": "date",
                     "at": "datetime", "raw": "bytes", "ok": "boolean"}  # fmt: skip
    _, batches = src.query({"sql": f"SELECT amount, born, at, raw FROM {schema}.items WHERE id = 7"})
    [row] = decode_rows(encode_rows(next(iter(batches))))
    assert row[0] == "7.000007" and row[1] == "2020-01-08"
    assert row[2].startswith("2020-01-01T00:00:00") and row[3] == "AQI="
    src.close()


def _take(batches: Any) -> list[list[Any]]:
    out = []
    for b in batches:
        out.append(b)
        batches.size = 1000
    return out


@pytest.mark.postgres
def test_postgres_read_only_transaction_refuses_writes(pg_schema: tuple[str, str]) -> None:
    url, schema = pg_schema
    src = _source("postgres", url)
    with pytest.raises(JobError) as info:
        src.query({"sql": f"DELETE FROM {schema}.items"})
    assert info.value.code == "WRITE_OPERATION_REJECTED"
    stream = src.prepare({"sql": "SELECT 1"})
    stream.sql, stream.server_side = f"DELETE FROM {schema}.items", False  # past the guard
    with pytest.raises(JobError) as info:
        stream.start()
    stream.close()
    assert info.value.code == "WRITE_OPERATION_REJECTED"
    assert src.test()["tablesFound"] >= 2
    _, batches = src.query({"sql": f"SELECT count(*) FROM {schema}.items"})
    assert next(iter(batches))[0][0] == N
    src.close()


@pytest.mark.postgres
def test_postgres_cancel_stops_pg_sleep_at_the_database(pg_url: str) -> None:
    src = _source("postgres", pg_url)
    marker = "mc_cancel_" + uuid.uuid4().hex[:8]
    elapsed, err = _cancel_later(src, f"SELECT pg_sleep(60) AS {marker}")
    assert err.code == "CANCELLED" and elapsed < scaled(5)
    _, batches = src.query({"sql": "SELECT count(*) FROM pg_stat_activity WHERE query LIKE :m AND query NOT LIKE '%pg_stat_activity%'", "params": {"m": f"%{marker}%"}})
    assert next(iter(batches))[0][0] == 0
    src.close()


@pytest.mark.postgres
def test_postgres_statement_timeout(pg_url: str) -> None:
    src = _source("postgres", pg_url)
    with pytest.raises(JobError) as info:
        # read the rows: on the COPY fast path (void is read as text) the query runs then
        _, batches = src.query({"sql": "SELECT pg_sleep(10)"}, timeout=0.3)
        list(batches)
    assert info.value.code == "TIMEOUT" and info.value.retryable
    src.close()


@pytest.mark.postgres
def test_postgres_discover_and_test(pg_schema: tuple[str, str]) -> None:
    url, schema = pg_schema
    src = _source("postgres", url)
    tables = {t["name"]: t for t in src.discover({"schema": schema})}
    assert set(tables) == {"items", "refs"}
    assert tables["items"]["primaryKey"] == ["id"] and tables["items"]["rowEstimate"] == N
    assert [c["name"] for c in tables["items"]["columns"]][:3] == ["id", "amount", "name"]
    fk = tables["refs"]["foreignKeys"][0]
    assert fk["referredTable"] == "items" and fk["columns"] == ["item_id"]
    result = src.test()
    assert result["connected"] is True and result["serverVersion"] and result["latencyMs"] >= 0
    src.close()


@pytest.mark.postgres
def test_postgres_wrong_password_is_auth_failed_and_never_echoed(pg_url: str) -> None:
    # Trust authentication accepts any password, so use an unknown role instead.
    url = pg_url.replace("postgres@", "mc_no_such_role@", 1)
    src = create_source("s", "postgres", url, password="hunter2-secret")
    with pytest.raises(JobError) as info:
        src.test()
    assert info.value.code in ("AUTH_FAILED", "SOURCE_UNAVAILABLE")
    assert "hunter2" not in info.value.message


# ---------------------------------------------------------------- MariaDB / MySQL


@pytest.mark.mysql
def test_mysql_values_exact_streamed_and_read_only(mysql_db: str) -> None:
    src = _source("mysql", mysql_db)
    cols, batches = src.query({"sql": "SELECT * FROM items WHERE id > :lo ORDER BY id", "params": {"lo": 0}}, 1000)
    assert type(batches.stream._cursor).__name__ == "SSCursor"
    assert sum(len(b) for b in _take(batches)) == N
    types = {c["name"]: c["type"] for c in cols}
    assert types["amount"] == "decimal" and types["born"] == "date" and types["raw"] == "bytes"
    _, batches = src.query({"sql": "SELECT amount, born, at, raw, '50%' AS pct FROM items WHERE id = 7"})
    [row] = decode_rows(encode_rows(next(iter(batches))))
    assert row == ["7.000007", "2020-01-08", "2020-01-01T00:00:00.123000", "AQI=", "50%"]
    stream = src.prepare({"sql": "SELECT 1"})
    stream.sql = "DELETE FROM items"  # past the guard: START TRANSACTION READ ONLY refuses it
    with pytest.raises(JobError) as info:
        stream.start()
    stream.close()
    assert info.value.code == "WRITE_OPERATION_REJECTED"
    _, batches = src.query({"sql": "SELECT count(*) FROM items"})
    assert next(iter(batches))[0][0] == N
    src.close()


@pytest.mark.mysql
def test_mysql_cancel_kills_sleep_at_the_database(mysql_db: str) -> None:
    src = _source("mysql", mysql_db)
    marker = "mc_cancel_" + uuid.uuid4().hex[:8]
    elapsed, err = _cancel_later(src, f"SELECT SLEEP(60) AS {marker}")
    assert err.code == "CANCELLED" and elapsed < scaled(5)
    _, batches = src.query({"sql": "SELECT count(*) FROM information_schema.processlist WHERE info LIKE :m AND info NOT LIKE '%processlist%'", "params": {"m": f"%{marker}%"}})
    assert next(iter(batches))[0][0] == 0
    src.close()


@pytest.mark.mysql
def test_mysql_early_stop_is_cheap(mysql_db: str) -> None:
    src = _source("mysql", mysql_db)
    _, batches = src.query({"sql": "SELECT a.id FROM items a CROSS JOIN items b"}, 100)
    started = time.monotonic()
    next(iter(batches))
    batches.close()  # 25 million rows remain: the connection is dropped, not drained
    assert time.monotonic() - started < scaled(5)
    src.close()


@pytest.mark.mysql
def test_mysql_discover_and_test(mysql_db: str) -> None:
    src = _source("mysql", mysql_db)
    tables = {t["name"]: t for t in src.discover()}
    assert set(tables) == {"items", "refs"}
    assert tables["items"]["primaryKey"] == ["id"]
    assert tables["refs"]["foreignKeys"][0]["referredTable"] == "items"
    result = src.test()
    assert result["connected"] is True and result["tablesFound"] == 2
    assert "MariaDB" in result["serverVersion"] or result["serverVersion"][0].isdigit()
    src.close()


def test_sqlite_serves_as_many_concurrent_queries_as_the_pool(tmp_path: Path) -> None:
    # Regression (small-jobs bench, 14 of 1,500 jobs failed "Cannot operate on a closed
    # database"): the engine for a SQLite source was made on the URL "sqlite://", which
    # SQLAlchemy takes for :memory: and gives a SingletonThreadPool of five: a sixth
    # thread's connection closed another thread's connection in mid-query.
    db = make_sample_db(tmp_path / "s.db", rows=10)
    threads = 12
    src = create_source("s", "sqlite", f"sqlite:///{db}", pool_size=threads)
    all_open = threading.Barrier(threads, timeout=scaled(30))
    results: list[Any] = [None] * threads

    def one(i: int) -> None:
        try:
            _cols, batches = src.query({"sql": "SELECT id FROM items ORDER BY id"}, 100)
            all_open.wait()  # every thread holds its own connection, mid-query
            results[i] = sum(len(b) for b in batches)
        except BaseException as exc:  # reported below
            all_open.abort()
            results[i] = exc

    workers = [threading.Thread(target=one, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    src.close()
    assert results == [10] * threads


MYSQL_DATETIME_TEXTS = [
    b"2025-01-01 00:00:00", b"2025-01-01 00:00:01.5", b"2025-01-01 00:00:01.000000", b"0001-01-01 00:00:00",
    b"9999-12-31 23:59:59.999999", b"0000-00-00 00:00:00", b"2025-02-30 00:00:00", b"2025-01-01 24:00:00",
    b"2025-01-01 00:00:00.1234567", b"2025-01-01T00:00:00", b"2025-01-01 00:00:00+00:00",
    b"2025-01-01 00:00:00.5+01", b"2025-W01-1 00:00:00", b"2025-01-01 00:00:00,5", b"2025-01-01 00:00:00Z",
    b"2025-01-01 00:00:00.", b"2025-01-01 00:00:00.5 ", b"25-1-1 0:0:0", b"2025-01-01", b"", b"x" * 26,
    b"2025-01-01 0a:00:00", b"\xff" * 19, b"2025-01-01 00:60:00", b"2024-02-29 12:34:56.000001",
]  # fmt: skip


def test_mysql_datetimes_read_as_pymysql_reads_them() -> None:
    """Issue 14: the agent's cheaper DATETIME/TIMESTAMP converter gives exactly what
    PyMySQL's convert_datetime gives (a datetime, or for what it cannot read the text,
    made ISO-shaped or None for the zero date by ``_mysql_odd_date``)."""
    import random

    from pymysql.converters import convert_datetime

    from agent.sources.mysqlvalues import _mysql_odd_date, mysql_datetime

    fast = mysql_datetime()
    rnd = random.Random(14)
    texts = list(MYSQL_DATETIME_TEXTS)
    for _ in range(20_000):
        s = (f"{rnd.randint(0, 10000):04d}-{rnd.randint(0, 13):02d}-{rnd.randint(0, 32):02d} "
             f"{rnd.randint(0, 25):02d}:{rnd.randint(0, 60):02d}:{rnd.randint(0, 60):02d}")  # fmt: skip
        frac = rnd.randint(0, 7)
        texts.append((s + ("." + str(rnd.randint(0, 10**frac - 1)).zfill(frac) if frac else "")).encode())
    wide = "\uff12\uff10\uff12\uff15-01-01 10:00:00"  # the year in full-width digits
    texts += [wide.encode(), "2025-01-01 10:00:00".encode("utf-16-le")]
    decoded = [t.decode("utf-8", "replace") for t in texts] + [wide, "2025-01-01\u200910:00:00"]
    for raw in [*texts, *decoded]:  # PyMySQL hands str over (the test below); bytes too
        same_outcome(lambda r: _mysql_odd_date(convert_datetime(r)), fast, raw)


@pytest.mark.mysql
def test_mysql_datetimes_take_the_cheap_path_with_the_real_driver(
    mysql_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What PyMySQL really passes a DATETIME converter (str) is read without PyMySQL's
    regex: the cheap path was once taken for bytes only, so never."""
    import pymysql.converters

    from agent.sources.mysqlvalues import mysql_datetime

    slow: list[Any] = []
    real = pymysql.converters.convert_datetime
    monkeypatch.setattr(pymysql.converters, "convert_datetime", lambda obj: slow.append(obj) or real(obj))
    fast = mysql_datetime.__wrapped__()  # a converter made now, with the counting fallback
    given: list[Any] = []
    src = _source("mysql", mysql_db)
    try:
        import agent.sources.mysqlvalues as mysqlvalues

        monkeypatch.setattr(mysqlvalues, "mysql_datetime", lambda: lambda obj: given.append(obj) or fast(obj))
        _, batches = src.query({"sql": "SELECT CAST('2025-01-01 10:00:00.25' AS DATETIME(6)) AS a, "
                                       "CAST('2025-01-01 10:00:00' AS DATETIME) AS b"})  # fmt: skip
        [row] = next(iter(batches))
    finally:
        src.close()
    assert given and all(type(g) is str for g in given), given
    assert list(row) == [dt.datetime(2025, 1, 1, 10, 0, 0, 250000), dt.datetime(2025, 1, 1, 10, 0, 0)]
    assert slow == []


@pytest.mark.mysql
def test_mysql_json_columns_are_read_as_json(mysql_db: str) -> None:
    """MySQL's JSON (protocol type 245, which MariaDB never sends: its JSON is LONGTEXT)
    is parsed as PostgreSQL's json is, on the connection the agent really opens; PyMySQL
    had no converter for it, and the text went out as one JSON string."""
    from pymysql.constants import FIELD_TYPE

    from agent.sources.mysqlvalues import mysql_json

    src = _source("mysql", mysql_db)
    try:
        _, batches = src.query({"sql": "SELECT 1 AS a"})
        list(batches)
        with src.engine.connect() as conn:  # the pool's connection, decoders as the job left them
            decoders = conn.connection.dbapi_connection.decoders
    finally:
        src.close()
    assert decoders[FIELD_TYPE.JSON] is mysql_json
    text = r'{"n": 123456789012345678901234567890, "f": 1.5, "s": "\u00e9\ud83d\ude80", "l": [null, true]}'
    assert mysql_json(text) == {"n": 123456789012345678901234567890, "f": 1.5, "s": "é🚀", "l": [None, True]}
    assert mysql_json(b"[1, 2]") == [1, 2]
    assert mysql_json("not json") == "not json"


@pytest.mark.mysql
def test_mysql_datetimes_through_the_agent(mysql_db: str) -> None:
    src = _source("mysql", mysql_db)
    _, batches = src.query({"sql": "SELECT CAST('2025-01-01 10:00:00.25' AS DATETIME(6)) AS a,"
                                   " CAST('2025-01-01 10:00:00' AS DATETIME) AS b, TIMESTAMP('2020-02-29') AS c"})  # fmt: skip
    [row] = decode_rows(encode_rows(next(iter(batches))))
    assert row == ["2025-01-01T10:00:00.250000", "2025-01-01T10:00:00", "2020-02-29T00:00:00"]
    src.close()
