"""The MariaDB/MySQL session layers hold with the statement guard bypassed (issue 13).

Each test drives ``SqlStream`` directly (what ``SqlSource`` runs after the guard), so only
the database-side layers stand between the text and the server: no multi-statements, a
read-only transaction, and a pooled connection reset when the job ends (the same
connection, so the lock is gone because of the reset, not because the socket closed).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest

from agent.sources.sql import SqlSource
from agent.sources.sqlstream import SqlStream
from shared.errors import JobError

from .test_mysql_guard import _connect


def raw_job(src: SqlSource, sql: str) -> list[Any]:
    """Run ``sql`` as a job would, without the guard; every row read, the stream closed."""
    stream = SqlStream(src, sql, {}, timeout=5, server_side=False)
    rows: list[Any] = []
    try:
        stream.start()
        while batch := stream.fetch(100):
            rows.extend(batch)
    finally:
        stream.close()
    return rows


@pytest.fixture
def one_conn(mysql_url: str) -> Iterator[SqlSource]:
    src = SqlSource("mc_session", "mysql", mysql_url, options={"max_overflow": "0"}, pool_size=1)
    try:
        yield src
    finally:
        src.close()


@pytest.fixture
def sentinel(mysql_url: str) -> Iterator[Any]:
    conn = _connect(mysql_url)
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture
def canary(mysql_url: str, sentinel: Any) -> Iterator[str]:
    table = f"test.mc_canary_{uuid.uuid4().hex[:10]}"
    with sentinel.cursor() as cur:
        cur.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v varchar(20))")
        cur.execute(f"INSERT INTO {table} VALUES (1, 'a'), (2, 'b')")
    try:
        yield table
    finally:
        with sentinel.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {table}")


def _one(conn: Any, sql: str, *args: Any) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql, args or None)
        return cur.fetchone()[0]


def test_a_named_lock_does_not_outlive_the_job(one_conn: SqlSource, sentinel: Any) -> None:
    name = f"mc_lock_{uuid.uuid4().hex[:8]}"
    [(got, conn_id)] = raw_job(one_conn, f"SELECT GET_LOCK('{name}', 1), CONNECTION_ID()")
    assert got == 1
    assert _one(sentinel, "SELECT IS_USED_LOCK(%s)", name) is None
    [(again,)] = raw_job(one_conn, "SELECT CONNECTION_ID()")
    assert again == conn_id  # the same pooled connection: reset, not dropped


def test_user_variables_and_settings_do_not_outlive_the_job(one_conn: SqlSource) -> None:
    raw_job(one_conn, "SELECT @mc_left := 42")
    raw_job(one_conn, "SET SESSION sql_mode = 'ANSI_QUOTES,NO_BACKSLASH_ESCAPES'")
    [(value, mode)] = raw_job(one_conn, "SELECT @mc_left, @@SESSION.sql_mode")
    assert value is None
    assert "ANSI_QUOTES" not in mode and "NO_BACKSLASH_ESCAPES" not in mode


def test_several_statements_are_refused_by_the_server(one_conn: SqlSource, canary: str, sentinel: Any) -> None:
    for sql in ("SELECT 1; SELECT 2", f"SELECT 1; DELETE FROM {canary}", f"SELECT 1;\nDROP TABLE {canary}"):
        with pytest.raises(JobError) as err:
            raw_job(one_conn, sql)
        assert err.value.code == "QUERY_FAILED", sql
    assert _one(sentinel, f"SELECT COUNT(*) FROM {canary}") == 2


def test_writes_are_refused_by_the_read_only_transaction(one_conn: SqlSource, canary: str, sentinel: Any) -> None:
    for sql in (f"DELETE FROM {canary}", f"UPDATE {canary} SET v = 'x'", f"INSERT INTO {canary} VALUES (3, 'c')"):
        with pytest.raises(JobError):
            raw_job(one_conn, sql)
    assert _one(sentinel, f"SELECT COUNT(*) FROM {canary} WHERE v IN ('a', 'b')") == 2


@pytest.mark.parametrize(
    "options",
    [{"client_flag": "65536"}, {"init_command": "SET @x = 1"}, {"read_default_file": "/etc/mysql/my.cnf"},
     {"charset": "gbk"}, {"sql_mode": "ANSI_QUOTES"}, {"local_infile": "1"}],
)  # fmt: skip
def test_driver_options_that_would_weaken_the_session_are_refused(mysql_url: str, options: dict[str, str]) -> None:
    with pytest.raises(JobError) as err:
        SqlSource("mc_opts", "mysql", mysql_url, options=options)
    assert err.value.code == "SOURCE_UNAVAILABLE"


def test_multi_statements_asked_for_in_the_url_are_masked(mysql_url: str) -> None:
    sep = "&" if "?" in mysql_url else "?"
    src = SqlSource("mc_url", "mysql", f"{mysql_url}{sep}client_flag=65536")
    try:
        with pytest.raises(JobError) as err:
            raw_job(src, "SELECT 1; SELECT 2")
        assert err.value.code == "QUERY_FAILED"
        assert raw_job(src, "SELECT 7") == [(7,)]
    finally:
        src.close()
    bad = SqlSource("mc_url2", "mysql", f"{mysql_url}{sep}init_command=SET+@x%3D1")
    try:
        with pytest.raises(JobError) as err:
            raw_job(bad, "SELECT 1")
        assert err.value.code == "SOURCE_UNAVAILABLE"
    finally:
        bad.close()


def test_the_driver_connection_has_no_multi_statements_flag(one_conn: SqlSource) -> None:
    fairy = one_conn.raw_connection()
    try:
        assert not fairy.dbapi_connection.client_flag & (1 << 16)
        with pytest.raises(pymysql.err.ProgrammingError):
            with fairy.dbapi_connection.cursor() as cur:
                cur.execute("SELECT 1; SELECT 2")
    finally:
        fairy.invalidate()
