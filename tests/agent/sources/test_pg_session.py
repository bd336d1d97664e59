"""The PostgreSQL locks that hold without the statement guard (agent/sources/pgconn.py).

Every test here calls the stream layer (``SqlStream``) or the pooled connection directly,
never ``check_read_only``: what is proved is what the *database* refuses on its own.

1. One statement: text with two statements is refused by the server ("cannot insert
   multiple commands into a prepared statement") through each path that carries user SQL:
   the server-side cursor (DECLARE), the plain cursor, the COPY fast path and its describe.
2. A read-only session: every connection starts with default_transaction_read_only=on, so
   a COMMIT (or anything that ends the job's transaction) does not make it writable.
3. Clean in the pool: advisory locks and SETs a job left behind are gone when the
   connection is handed to the next job (DISCARD ALL), and the read-only start values
   survive it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from agent.sources import create_source, pgconn, pgcopy
from agent.sources.sql import SqlSource
from agent.sources.sqlstream import SqlStream
from shared.errors import JobError

pytestmark = pytest.mark.postgres

MULTI = "cannot insert multiple commands into a prepared statement"


def _admin(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url.replace("postgresql+psycopg2://", "postgresql://"), autocommit=True)


@pytest.fixture
def canary(pg_url: str) -> Iterator[tuple[str, str]]:
    schema = "mc_sess_" + uuid.uuid4().hex[:10]
    with _admin(pg_url) as con:
        con.execute(f"CREATE SCHEMA {schema}")
        con.execute(f"CREATE TABLE {schema}.t (id int PRIMARY KEY, v text)")
        con.execute(f"INSERT INTO {schema}.t SELECT g, 'row ' || g FROM generate_series(1, 10) g")
    try:
        yield pg_url, schema
    finally:
        with _admin(pg_url) as con:
            con.execute(f"DROP SCHEMA {schema} CASCADE")


def _count(url: str, schema: str) -> int:
    with _admin(url) as con:
        row = con.execute(f"SELECT count(*) FROM {schema}.t").fetchone()
        assert row is not None
        return int(row[0])


def _source(url: str, **options: str) -> SqlSource:
    src = create_source("s", "postgres", url, options={"pool_size": "1", "max_overflow": "0", **options})
    assert isinstance(src, SqlSource)
    return src


def _run(src: SqlSource, sql: str, *, server_side: bool, copy: bool = False) -> list[Any]:
    """One job through the stream layer, the guard bypassed."""
    stream = SqlStream(src, sql, {}, timeout=30, server_side=server_side, copy=copy)
    try:
        stream.start()
        rows: list[Any] = []
        if stream.payloads is not None:
            stream.payloads(lambda payload, n: rows.append(payload) or True)
            return rows
        while batch := stream.fetch(1000):
            rows.extend(batch)
        return rows
    finally:
        stream.close()


STACKED = [
    "SELECT 1; DELETE FROM {s}.t",
    "SELECT 1 AS a\U0001f600$x$; COMMIT; DELETE FROM {s}.t; SELECT 1 AS b\U0001f600$x$",
    "SELECT 1; COMMIT; DELETE FROM {s}.t",
    "SELECT 1 /* ; */ ; DELETE FROM {s}.t",
]


@pytest.mark.parametrize("server_side", [True, False], ids=["declare", "plain"])
@pytest.mark.parametrize("sql", STACKED)
def test_the_server_refuses_two_statements_on_the_cursor_paths(
    canary: tuple[str, str], sql: str, server_side: bool
) -> None:
    url, schema = canary
    src = _source(url)
    try:
        with pytest.raises(JobError) as err:
            _run(src, sql.format(s=schema), server_side=server_side)
        assert err.value.code == "QUERY_FAILED"
        assert MULTI in err.value.message
    finally:
        src.close()
    assert _count(url, schema) == 10


def test_the_server_refuses_two_statements_on_the_copy_path(canary: tuple[str, str]) -> None:
    url, schema = canary
    src = _source(url)
    fairy = src.raw_connection()
    conn = fairy.dbapi_connection
    try:
        # The COPY itself, with an inner text that closes the wrap and stacks a DELETE.
        inner = f"SELECT 1) q(c1)) TO STDOUT; DELETE FROM {schema}.t; COPY (SELECT 1 FROM (SELECT 1"
        plan = pgcopy.CopyPlan(inner, ["a"], [23], utc=True)
        with pytest.raises(psycopg.errors.SyntaxError, match=MULTI):
            pgcopy.copy_out(conn.cursor(), plan.sql(), lambda _b: None)
        conn.rollback()
        with pytest.raises(psycopg.errors.SyntaxError, match=MULTI):
            pgcopy.copy_out(conn.cursor(), f"COPY (SELECT 1) TO STDOUT; DELETE FROM {schema}.t", lambda _b: None)
        conn.rollback()
        # The describe that precedes it.
        with pytest.raises(psycopg.errors.SyntaxError, match=MULTI):
            conn.cursor().execute(pgcopy.describe_sql(f"SELECT 1) q; DELETE FROM {schema}.t; SELECT * FROM (SELECT 1"))
        conn.rollback()
        fairy.close()
        # And a whole job asking for the COPY path: refused, nothing deleted.
        with pytest.raises(JobError, match=MULTI):
            _run(src, f"SELECT 1 AS a\U0001f600$x$; DELETE FROM {schema}.t; SELECT 1 AS b\U0001f600$x$",
                 server_side=True, copy=True)  # fmt: skip
    finally:
        src.close()
    assert _count(url, schema) == 10


def test_the_copy_path_still_serves_a_single_statement(canary: tuple[str, str]) -> None:
    url, schema = canary
    src = _source(url)
    try:
        payloads = _run(src, f"SELECT id FROM {schema}.t ORDER BY id", server_side=True, copy=True)
    finally:
        src.close()
    assert b"".join(payloads).count(b"\n") == 10


def test_a_commit_does_not_make_the_session_writable(canary: tuple[str, str]) -> None:
    url, schema = canary
    src = _source(url)
    fairy = src.raw_connection()
    conn = fairy.dbapi_connection
    try:
        cur = conn.cursor()
        cur.execute("SHOW default_transaction_read_only")
        assert cur.fetchone() == ("on",)
        cur.execute("SHOW standard_conforming_strings")
        assert cur.fetchone() == ("on",)
        cur.execute("COMMIT")  # what a stacked COMMIT would do
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            cur.execute(f"DELETE FROM {schema}.t")
        conn.rollback()
    finally:
        fairy.close()
        src.close()
    assert _count(url, schema) == 10


def test_a_write_in_one_statement_is_refused_by_the_session(canary: tuple[str, str]) -> None:
    """The read-only session alone: each write straight on a pooled connection (no guard,
    no DECLARE, no describe) is refused by PostgreSQL's read-only transaction."""
    url, schema = canary
    src = _source(url)
    fairy = src.raw_connection()
    conn = fairy.dbapi_connection
    writes = [
        f"DELETE FROM {schema}.t", f"UPDATE {schema}.t SET v = 'x' RETURNING id",
        f"INSERT INTO {schema}.t VALUES (99, 'x')", f"CREATE TABLE {schema}.t2 (a int)",
        f"SELECT * INTO {schema}.t3 FROM {schema}.t", f"SELECT * FROM {schema}.t FOR UPDATE",
        f"WITH d AS (DELETE FROM {schema}.t RETURNING 1) SELECT count(*) FROM d",
        f"EXPLAIN ANALYZE DELETE FROM {schema}.t",
    ]  # fmt: skip
    try:
        for sql in writes:
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                conn.cursor().execute(sql)
            conn.rollback()
    finally:
        fairy.close()
        src.close()
    assert _count(url, schema) == 10


def test_the_plain_path_runs_only_statements_that_return_rows(canary: tuple[str, str]) -> None:
    """The plain path (SHOW, EXPLAIN) asks the server to describe the statement first: one
    that returns no rows (COPY TO PROGRAM as a superuser, SET, DELETE...) never runs."""
    url, schema = canary
    src = _source(url)
    try:
        assert _run(src, "SHOW DateStyle", server_side=False) == [("ISO, MDY",)]
        for sql in ("COPY (SELECT 1) TO PROGRAM 'false'", f"DELETE FROM {schema}.t",
                    "SET default_transaction_read_only = off", "LISTEN x"):  # fmt: skip
            with pytest.raises(JobError) as err:
                _run(src, sql, server_side=False)
            assert err.value.code == "WRITE_OPERATION_REJECTED", sql
            assert "return rows" in err.value.message
        with pytest.raises(JobError) as err:  # rows, so it reaches the read-only session
            _run(src, f"DELETE FROM {schema}.t RETURNING id", server_side=False)
        assert err.value.code == "WRITE_OPERATION_REJECTED" and "read-only" in err.value.message
    finally:
        src.close()
    assert _count(url, schema) == 10


def _advisory_held(url: str, key: int) -> bool:
    with _admin(url) as con:
        row = con.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s", (key,)
        ).fetchone()
        return bool(row and row[0])


def test_a_lock_or_setting_a_job_leaves_is_gone_before_the_next_job(canary: tuple[str, str]) -> None:
    url, schema = canary
    key = 424200 + uuid.uuid4().int % 1000
    src = _source(url)  # one connection: the next job gets the same one
    try:
        _run(src, f"SELECT pg_advisory_lock({key})", server_side=False)
        assert not _advisory_held(url, key)
        _run(src, "SELECT set_config('default_transaction_read_only', 'off', false)", server_side=False)
        _run(src, "SELECT set_config('statement_timeout', '1', false)", server_side=False)
        rows = _run(src, "SELECT current_setting('default_transaction_read_only'), "
                         "current_setting('statement_timeout'), pg_backend_pid()", server_side=False)  # fmt: skip
        assert rows[0][:2] == ("on", "30s")  # the job's own SET LOCAL, not the 1 ms left behind
        with pytest.raises(JobError) as err:
            _run(src, f"DELETE FROM {schema}.t", server_side=False)
        assert err.value.code == "WRITE_OPERATION_REJECTED"
        again = _run(src, "SELECT pg_backend_pid()", server_side=False)
        assert again[0][0] == rows[0][2]  # the same pooled connection all along
    finally:
        src.close()
    assert _count(url, schema) == 10


def test_the_start_values_survive_discard_all(pg_url: str) -> None:
    with pgconn.connect_for_test(pg_url.replace("postgresql+psycopg2://", "postgresql://")) as conn:
        conn.execute("SET default_transaction_read_only = off")
        conn.execute("SET standard_conforming_strings = off")
        pgconn.reset_on_return(conn, None)
        values = conn.execute(
            "SELECT current_setting('default_transaction_read_only'), "
            "current_setting('standard_conforming_strings'), current_setting('DateStyle')"
        ).fetchone()
    assert values == ("on", "on", "ISO, MDY")


# ---------------------------------------------------------------- values as psycopg2 gave them

VALUES = [
    "'\\x00ff'::bytea", "'{\"a\":[1,2.5,null]}'::json", "'{\"b\":1.10}'::jsonb", "ARRAY['{}'::jsonb]",
    "int4range(1,5)", "'[2020-01-01,2020-02-01)'::daterange", "'(,)'::numrange", "'empty'::int4range",
    "tstzrange('2020-01-01','2021-01-01')", "ARRAY[numrange(1,2)]", "'{[1,2]}'::int4multirange",
    "'1 year 2 mons 3 days 04:05:06.7'::interval", "'-1 year -2 mons'::interval", "ARRAY['1 day'::interval]",
    "ARRAY[1,2,NULL]", "ARRAY[[1,2],[3,4]]", "'[2:3]={1,2}'::int[]", "ARRAY['a','b\"c']", "'{}'::int[]",
    "12.3400::numeric", "'NaN'::numeric", "'Infinity'::numeric", "1e-20::numeric", "ARRAY[1.5::numeric]",
    "'10:11:12.5+05:30'::timetz", "'10:11:12+00:00:12'::timetz", "'24:00:00'::time", "ARRAY['24:00:00'::time]",
    "'infinity'::date", "'-infinity'::date", "'infinity'::timestamp", "'-infinity'::timestamp",
    "'infinity'::timestamptz", "'-infinity'::timestamptz", "'2020-01-01 10:00:00.5+00'::timestamptz",
    "'1850-01-01 10:00:00'::timestamptz", "'1900-01-01 10:00:00'::timestamptz", "'2020-06-01 10:00'::timestamp",
    "ARRAY['2020-01-01 10:00:00+00'::timestamptz]", "'$1,234.50'::money", "ARRAY['$1'::money]",
    "'192.168.0.1/24'::inet", "'::ffff:1.2.3.4'::inet", "ARRAY['1.1.1.1'::inet]", "ARRAY['1.1.1.1'::cidr]",
    "'08:00:2b:01:02:03'::macaddr", "ARRAY['08:00:2b:01:02:03'::macaddr]", "'a'::\"char\"", "B'101'",
    "ARRAY[B'1']", "'<a/>'::xml", "ARRAY['<a/>'::xml]", "'a b'::tsvector", "point(1,2)", "ROW(1,'a')",
    "ARRAY[ROW(1,2)]", "'1'::oid", "'pg_class'::regclass", "ARRAY['pg_class'::regclass]", "1.5::float4",
    "'NaN'::float8", "1e300::float8", "true", "32767::int2", "9223372036854775807::int8", "'x'::name",
    "'abc'::bpchar(5)", "'00000000-0000-0000-0000-00000000000a'::uuid", "pg_lsn('0/16B3748')",
]  # fmt: skip


@pytest.mark.parametrize("zone", ["UTC", "Asia/Kolkata", "Africa/Abidjan", "<+03>-03"])
def test_values_are_what_psycopg2_gave(pg_url: str, zone: str) -> None:
    """shared/rows.py encodes the agent's (psycopg 3) values exactly as it encoded
    psycopg2's with SQLAlchemy's uuid registration: the same JSON for every value."""
    import psycopg2
    import psycopg2.extras

    from shared.rows import encode_rows

    plain = pg_url.replace("postgresql+psycopg2://", "postgresql://")
    old = psycopg2.connect(plain)
    psycopg2.extras.register_uuid(None, old)
    new = pgconn.connect_for_test(plain)
    try:
        old_cur, new_cur = old.cursor(), new.cursor()
        for cur in (old_cur, new_cur):
            cur.execute("SET TIME ZONE %s", (zone,))
        for expr in VALUES:
            old_cur.execute(f"SELECT {expr}")
            new_cur.execute(f"SELECT {expr}")
            assert encode_rows(new_cur.fetchall()) == encode_rows(old_cur.fetchall()), expr
    finally:
        old.close()
        new.close()


def test_parameters_are_merged_as_psycopg2_merged_them(canary: tuple[str, str]) -> None:
    url, schema = canary
    src = _source(url)
    try:
        _, batches = src.query({"sql": "SELECT :a AS a, :b AS b, :c AS c, :d AS d, :e AS e, '100%' AS f, "
                                       f"(SELECT count(*) FROM {schema}.t WHERE id = ANY(:a)) AS g",
                                "params": {"a": [1, 2], "b": ["x", None], "c": 5, "d": "it's \\ %", "e": None}})  # fmt: skip
        rows = [r for b in batches for r in b]
    finally:
        src.close()
    assert rows == [([1, 2], ["x", None], 5, "it's \\ %", None, "100%", 2)]


# Issue 14: the cheaper loaders (orjson for json/jsonb, fromisoformat for timestamptz,
# the C loader first for date/timestamp/time) give the same values on their edges.
FAST_LOADER_VALUES = [
    "'{\"a\":1,\"a\":2}'::json", "'{\"a\":1,\"a\":2}'::jsonb", "' [ 1 , 2.50 , -0 , -0.0 ] '::json",
    "'123456789012345678901234567890'::json", "'{\"n\":123456789012345678901234567890}'::jsonb",
    "'18446744073709551615'::json", "'18446744073709551616'::json", "'-9223372036854775808'::jsonb",
    "'-9223372036854775809'::jsonb", "'1e400'::json", "'1e-400'::jsonb", "'0.30000000000000004441'::json",
    "'9007199254740993.0'::json", "'\"1234567890123456789012\"'::json", "'\"\\u0000\"'::json",
    "'\"\\ud83d\\ude00 é\"'::jsonb", "'{\"deep\":[[[[{\"x\":null}]]]]}'::jsonb", "ARRAY['[1e400]'::json]",
    "'0001-01-01 00:00:00+00'::timestamptz", "'2020-01-01 10:00:00.000001+00'::timestamptz",
    "'2020-07-01 10:00:00.123456'::timestamptz", "'9999-12-31 23:59:59.999999+00'::timestamptz",
    "'0044-03-15 12:00:00+00'::timestamptz", "'1000-01-01 00:00:00 BC'::date", "'2020-02-29'::date",
    "'23:59:59.999999'::time", "'00:00:00'::time", "'2020-01-01 10:00:00.5'::timestamp",
    # json/jsonb in arrays at any depth, NULLs, several such columns among others
    "NULL::json", "ARRAY['{\"a\":1}'::jsonb, NULL]", "ARRAY[ARRAY['1'::json, '[2]'::json], ARRAY[NULL, '{}'::json]]",
    "'{\"a\":1}'::json, 7, NULL::jsonb, '[1e400, 123456789012345678901]'::json, 'x'",
    "'{\"k\": \"line\\nbreak\"}'::json",
]  # fmt: skip


@pytest.mark.parametrize("zone", ["UTC", "Asia/Kolkata", "Africa/Abidjan", "America/St_Johns"])
def test_fast_loaders_give_what_psycopg2_gave(pg_url: str, zone: str) -> None:
    import psycopg2

    from shared.rows import encode_rows

    plain = pg_url.replace("postgresql+psycopg2://", "postgresql://")
    old = psycopg2.connect(plain)
    new = pgconn.connect_for_test(plain)
    try:
        old_cur, new_cur = old.cursor(), new.cursor()
        for cur in (old_cur, new_cur):
            cur.execute("SET TIME ZONE %s", (zone,))
        for expr in FAST_LOADER_VALUES:
            try:
                old_cur.execute(f"SELECT {expr}")
                expected: Any = encode_rows(old_cur.fetchall())
            except (psycopg2.DataError, ValueError):  # a value psycopg2 could not read
                old.rollback()
                expected = "unreadable"
            try:
                new_cur.execute(f"SELECT {expr}")
                got: Any = encode_rows(new_cur.fetchall())
            except (psycopg.DataError, ValueError):
                new.rollback()
                got = "unreadable"
            assert got == expected, expr
    finally:
        old.close()
        new.close()


def test_json_columns_through_the_agent_read_path(pg_url: str) -> None:
    """json/jsonb and arrays of them through a real query on the cursor path: its first
    rows and every later batch (batches of 7), several columns and one."""
    src = _source(pg_url, batch_size="7")
    try:
        sql = ("SELECT g AS id, json_build_object('g', g) AS j, jsonb_build_array(g, 'x') AS b, "
               "ARRAY[json_build_object('h', g), NULL] AS ja, CASE WHEN g % 3 = 0 THEN NULL ELSE '{}'::jsonb END AS n "
               "FROM generate_series(1, 40) g ORDER BY g")  # fmt: skip
        _, batches = src.query({"sql": sql})
        rows = [row for batch in batches for row in batch]
        assert len(rows) == 40
        for g, row in enumerate(rows, start=1):
            assert tuple(row) == (g, {"g": g}, [g, "x"], [{"h": g}, None], None if g % 3 == 0 else {}), row
        _, batches = src.query({"sql": "SELECT '[1, 123456789012345678901234]'::jsonb AS only"})
        assert [list(r) for b in batches for r in b] == [[[1, 123456789012345678901234]]]
    finally:
        src.close()


def test_a_json_value_that_is_not_unicode_does_not_fail_the_job(pg_url: str) -> None:
    """PostgreSQL's json (not jsonb) keeps "\\ud800" (a lone UTF-16 surrogate, as a broken
    emoji from a JavaScript client leaves it); it read as a str orjson refuses, and the
    job failed. It is written with U+FFFD in its place."""
    import orjson

    from shared.rows import encode_objects

    src = _source(pg_url)
    try:
        _, batches = src.query({"sql": "SELECT '\"\\ud800 x\"'::json AS j, '{\"\\udfff\": [\"\\ud83d\\ude00\"]}'::json AS k"})
        rows = [row for batch in batches for row in batch]
        assert orjson.loads(encode_objects(["j", "k"], rows)) == {"j": "\ufffd x", "k": {"\ufffd": ["\U0001f600"]}}
    finally:
        src.close()
