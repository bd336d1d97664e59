"""Write attempts in tricky forms against real PostgreSQL, MariaDB and SQLite (natively and
through ODBC): none changes anything; honest reads (with write-like names) all pass."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import text

from agent.sources import create_source
from shared.errors import JobError
from tests.conftest import driver_url

# {t}: the table (schema-qualified where needed). Every entry must fail and change nothing.
WRITES = [
    "INSERT INTO {t} VALUES (999, 'x', NULL, NULL, 0)",
    "UPDATE {t} SET name = 'x'",
    "DELETE FROM {t}",
    "dElEtE FROM {t}",
    "DROP TABLE {t}",
    "TRUNCATE {t}",
    "ALTER TABLE {t} ADD COLUMN z int",
    "CREATE TABLE mc_evil (a int)",
    "SELECT 1; DELETE FROM {t}",
    "SELECT 1;DELETE FROM {t};",
    "SELECT 1\n;\nDELETE FROM {t}",
    "SELECT ';' AS s; DELETE FROM {t}",
    "SELECT 1 /* ; */ ; DELETE FROM {t}",
    "SELECT 1 -- x\n; DELETE FROM {t}",
    "/* hi */ DELETE FROM {t}",
    "-- a read\nDELETE FROM {t}",
    "(DELETE FROM {t})",
    "WITH d AS (DELETE FROM {t} RETURNING *) SELECT * FROM d",
    "WITH x AS (SELECT 1 AS a) UPDATE {t} SET name = 'y'",
    "WITH x AS (SELECT 1 AS a) INSERT INTO {t} SELECT 1000, 'z', NULL, NULL, 0 FROM x",
    "SELECT * INTO mc_evil2 FROM {t}",
    "SELECT * FROM {t} INTO OUTFILE '/tmp/mc_evil_out'",
    "EXPLAIN ANALYZE DELETE FROM {t}",
    "EXPLAIN (ANALYZE) DELETE FROM {t}",
    "COPY {t} TO '/tmp/mc_evil_copy'",
    "CALL mc_evil_proc()",
    "EXEC mc_evil_proc",
    "GRANT SELECT ON {t} TO PUBLIC",
    "SET TRANSACTION READ WRITE",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    "BEGIN; DELETE FROM {t}; COMMIT",
    "COMMIT; DELETE FROM {t}",
    "SELECT * FROM {t} FOR UPDATE",
    "SELECT * FROM {t} LOCK IN SHARE MODE",
    "REPLACE INTO {t} VALUES (1, 'x', NULL, NULL, 0)",
    "MERGE INTO {t} USING {t} s ON true WHEN MATCHED THEN DELETE",
    "SELECT 1 UNION SELECT 2; DROP TABLE {t}",
    "VALUES (1); DELETE FROM {t}",
    "SHOW TABLES; DROP TABLE {t}",
    "LOCK TABLE {t}",
    "VACUUM",
    "DO $$ BEGIN DELETE FROM {t}; END $$",
    "SELECT set_config('default_transaction_read_only', 'off', false)",
    "SELECT nextval('mc_seq')",
    "SELECT pg_terminate_backend(pg_backend_pid())",
    "/*! DELETE FROM {t} */ SELECT 1",
    "/*M! DELETE FROM {t} */ SELECT 1",
    "HANDLER {t} OPEN",
    "LOAD DATA INFILE '/tmp/x' INTO TABLE {t}",
    "PRAGMA query_only = OFF",
    "ATTACH DATABASE '/tmp/mc_evil.db' AS evil",
    "SELECT 1 # comment\n; DELETE FROM {t}",
]

READS = [
    "SELECT id, name, update_date, created, deleted FROM {t} ORDER BY id",
    "SELECT count(*) FROM {t}",
    "SELECT * FROM {t} WHERE name = 'DROP TABLE x; DELETE FROM y'",
    "SELECT name FROM {t} WHERE name LIKE '%;%' OR name = ':not_a_param'",
    "-- DELETE FROM {t};\nSELECT 1",
    "/* UPDATE {t} SET x = 1; */ SELECT 2",
    "SELECT 1;",
    "WITH a AS (SELECT id FROM {t}) SELECT count(*) FROM a",
    "SELECT id FROM {t} WHERE id IN (SELECT id FROM {t} WHERE id > 1)",
    "SELECT id FROM {t} UNION SELECT id + 100 FROM {t}",
    "SELECT CASE WHEN id > 1 THEN 'big' ELSE 'small' END AS size FROM {t}",
    "SELECT replace(name, 'a', 'b') AS r FROM {t}",
    "SELECT id, row_number() OVER (ORDER BY id DESC) AS rn FROM {t}",
    "SELECT created AS created_at, update_date AS updated_on FROM {t}",
    "SELECT id FROM {t} WHERE id = :id",
    "SELECT id FROM {t} ORDER BY id DESC LIMIT 2",
    "SELECT upper(name) AS insert_text, deleted AS delete_flag FROM {t}",
    "SELECT max(update_date) AS last_update FROM {t}",
    "SELECT 'it''s' AS quoted",
    "SELECT id FROM {t} t1 WHERE EXISTS (SELECT 1 FROM {t} t2 WHERE t2.id = t1.id)",
    "SELECT min(id) AS lo, max(id) AS hi FROM {t} GROUP BY deleted HAVING count(*) > 0",
    "EXPLAIN SELECT * FROM {t}",
    "SELECT id FROM {t} WHERE name <> 'grant'",
]


def _engine_exec(url: str, *statements: str) -> list[Any]:
    eng = sqlalchemy.create_engine(driver_url(url))
    out: list[Any] = []
    try:
        with eng.begin() as conn:
            for s in statements:
                result = conn.execute(text(s))
                out.append(result.fetchall() if result.returns_rows else None)
    finally:
        eng.dispose()
    return out


def _table_sql(t: str) -> list[str]:
    return [
        f"CREATE TABLE {t} (id int PRIMARY KEY, name varchar(50), update_date date, "
        "created date, deleted int)",
        f"INSERT INTO {t} VALUES (1, 'alpha', '2024-01-01', '2023-01-01', 0), "
        "(2, 'beta', '2024-02-01', '2023-02-01', 1), (3, 'gamma', NULL, NULL, 0)",
    ]


Snapshot = Callable[[], Any]


@pytest.fixture
def pg_target(pg_url: str) -> Iterator[tuple[str, str, Snapshot]]:
    schema = "mc_ro_" + uuid.uuid4().hex[:10]
    t = f"{schema}.items"
    _engine_exec(pg_url, f"CREATE SCHEMA {schema}", *_table_sql(t), f"CREATE SEQUENCE {schema}.mc_seq")

    def snapshot() -> Any:
        return _engine_exec(
            pg_url,
            f"SELECT * FROM {t} ORDER BY id",
            "SELECT table_name, column_name FROM information_schema.columns "
            f"WHERE table_schema = '{schema}' ORDER BY 1, 2",
            f"SELECT last_value, is_called FROM {schema}.mc_seq",
            "SELECT setting FROM pg_settings WHERE name = 'default_transaction_read_only'",
        )

    try:
        yield pg_url, t, snapshot
    finally:
        _engine_exec(pg_url, f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def mysql_target(mysql_url: str) -> Iterator[tuple[str, str, Snapshot]]:
    db = "mc_ro_" + uuid.uuid4().hex[:10]
    _engine_exec(mysql_url, f"CREATE DATABASE {db}")
    url = mysql_url.rsplit("/", 1)[0] + "/" + db
    _engine_exec(url, *_table_sql("items"))

    def snapshot() -> Any:
        return _engine_exec(
            url,
            "SELECT * FROM items ORDER BY id",
            "SELECT table_name, column_name FROM information_schema.columns "
            f"WHERE table_schema = '{db}' ORDER BY 1, 2",
        )

    try:
        yield url, "items", snapshot
    finally:
        _engine_exec(mysql_url, f"DROP DATABASE {db}")


@pytest.fixture
def sqlite_target(tmp_path: Path) -> tuple[str, str, Snapshot]:
    path = tmp_path / "ro.db"
    conn = sqlite3.connect(path)
    for s in _table_sql("items"):
        conn.execute(s)
    conn.commit()
    conn.close()

    def snapshot() -> Any:
        c = sqlite3.connect(path)
        try:
            return (
                c.execute("SELECT * FROM items ORDER BY id").fetchall(),
                c.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall(),
                sorted(p.name for p in tmp_path.iterdir()),
            )
        finally:
            c.close()

    return str(path), "items", snapshot


def _odbc_url(kind: str, url: str) -> str:
    from sqlalchemy.engine import make_url

    if kind == "sqlite":
        return f"DRIVER={{SQLite3}};Database={url}"
    u = make_url(driver_url(url))
    driver = "PostgreSQL Unicode" if kind == "postgres" else "MariaDB Unicode"
    return (f"DRIVER={{{driver}}};SERVER={u.host};PORT={u.port or (5432 if kind == 'postgres' else 3306)};"
            f"DATABASE={u.database};UID={u.username}")  # fmt: skip


def _source(kind: str, url: str, via_odbc: bool) -> Any:
    if via_odbc:
        return create_source("ro", "odbc", _odbc_url(kind, url))
    return create_source("ro", kind, f"sqlite:///{url}" if kind == "sqlite" else url)


def _run_corpus(kind: str, target: tuple[str, str, Snapshot], via_odbc: bool) -> None:
    url, t, snapshot = target
    before = snapshot()
    src = _source(kind, url, via_odbc)
    admitted: list[str] = []
    try:
        for sql in WRITES:
            statement = sql.format(t=t)
            try:
                _, batches = src.query({"sql": statement})
                list(batches)
            except JobError as exc:
                assert exc.code in ("WRITE_OPERATION_REJECTED", "QUERY_FAILED"), (statement, exc.code)
                continue
            admitted.append(statement)
        # Only comment-hidden text may pass as a harmless read where it is a comment.
        harmless = {f"/*! DELETE FROM {t} */ SELECT 1", f"/*M! DELETE FROM {t} */ SELECT 1"}
        assert set(admitted) <= (harmless if kind != "mysql" else set()), admitted
        assert snapshot() == before
        for sql in READS:
            statement = sql.format(t=t)
            if kind == "sqlite" and statement.startswith("EXPLAIN"):
                statement = "EXPLAIN QUERY PLAN " + statement[len("EXPLAIN ") :]
            _, batches = src.query({"sql": statement, "params": {"id": 2} if ":id" in statement else {}})
            list(batches)
    finally:
        src.close()
    assert snapshot() == before


def test_corpus_sizes() -> None:
    """The corpus is at least 30 write attempts and 20 reads."""
    assert len(WRITES) >= 30 and len(READS) >= 20


@pytest.mark.postgres
@pytest.mark.parametrize("via_odbc", [False, True], ids=["psycopg2", "odbc"])
def test_postgres_write_corpus_changes_nothing(pg_target: Any, via_odbc: bool) -> None:
    """Every write fails on PostgreSQL and the data, schema and sequence are unchanged."""
    _run_corpus("postgres", pg_target, via_odbc)


@pytest.mark.mysql
@pytest.mark.parametrize("via_odbc", [False, True], ids=["pymysql", "odbc"])
def test_mariadb_write_corpus_changes_nothing(mysql_target: Any, via_odbc: bool) -> None:
    """Every write fails on MariaDB and the data and schema are unchanged."""
    _run_corpus("mysql", mysql_target, via_odbc)


@pytest.mark.parametrize("via_odbc", [False, True], ids=["sqlite3", "odbc"])
def test_sqlite_write_corpus_changes_nothing(sqlite_target: Any, via_odbc: bool) -> None:
    """Every write fails on SQLite; the file, its schema and the folder are unchanged."""
    _run_corpus("sqlite", sqlite_target, via_odbc)
