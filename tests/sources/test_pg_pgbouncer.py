"""The agent's PostgreSQL source behind PgBouncer (docs/SOURCES.md, "Behind PgBouncer").

Each module-level configuration starts a private PgBouncer (``tests/sources/pgbouncer.py``,
``default_pool_size = 1``: every client of it shares one server connection):
transaction pooling and session pooling refusing the startup ``options`` (PgBouncer's
default, "unsupported startup parameter: options"), and transaction pooling dropping it
(``ignore_startup_parameters = options``). The source connects without ``options`` and
sets the session settings in each job's transaction (``pgconn.check_session``,
``pgconn.transaction_settings_sql``); before that, no job could connect through PgBouncer.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import psycopg
import pytest

from agent.sources import create_source, pgconn
from agent.sources.sql import SqlSource
from agent.sources.sqlstream import SqlStream
from shared.errors import JobError
from tests.conftest import DEFAULT_PG_URL, _service_url, scaled, wait_until

from .conftest import job_rows
from .pgbouncer import Bouncer, start_pgbouncer

pytestmark = pytest.mark.postgres

CONFIGS = {"transaction": ("transaction", False), "session": ("session", False),
           "transaction-ignoring-options": ("transaction", True)}  # fmt: skip


@pytest.fixture(scope="module", params=list(CONFIGS))
def bouncer(request: pytest.FixtureRequest) -> Iterator[Bouncer]:
    pg_url = _service_url("PostgreSQL", "MC_TEST_POSTGRES_URL", DEFAULT_PG_URL)
    mode, ignore = CONFIGS[request.param]
    with start_pgbouncer(pg_url, mode, ignore_options=ignore) as b:
        yield b


@pytest.fixture(scope="module")
def table(bouncer: Bouncer) -> Iterator[str]:
    """A schema with a table ``t`` (id, v) of 10 rows and a sequence ``s``, made directly."""
    schema = "mc_pgb_" + uuid.uuid4().hex[:10]
    with psycopg.connect(bouncer.direct, autocommit=True) as con:
        con.execute(f"CREATE SCHEMA {schema}")
        con.execute(f"CREATE TABLE {schema}.t (id int PRIMARY KEY, v text)")
        con.execute(f"INSERT INTO {schema}.t SELECT g, 'row ' || g FROM generate_series(1, 10) g")
        con.execute(f"CREATE SEQUENCE {schema}.s")
    try:
        yield schema
    finally:
        with psycopg.connect(bouncer.direct, autocommit=True) as con:
            con.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def src(bouncer: Bouncer) -> Iterator[SqlSource]:
    s = create_source("pgb", "postgres", bouncer.url)
    assert isinstance(s, SqlSource)
    try:
        yield s
    finally:
        s.close()


def fast(src: Any, sql: str, *, timeout: float | None = None, **pump: Any) -> list[Any]:
    """The rows through the COPY fast path (fails if it was not taken)."""
    stream: Any = src.prepare({"sql": sql}, timeout=timeout)
    out: list[bytes] = []
    try:
        stream.start()
        assert stream.copy is not None and stream.payloads is not None, "the fast path was not taken"
        def emit(payload: bytes, _n: int) -> bool:
            out.append(payload)
            return True

        stream.payloads(emit, **pump)
    finally:
        stream.close()
    return [orjson.loads(line) for line in b"".join(out).splitlines()]


def rows(src: Any, sql: str) -> list[Any]:
    return job_rows(src, sql)[1]


def plain(bouncer: Bouncer, sql: str) -> Any:
    """One value read by a plain psycopg client of the same PgBouncer."""
    with psycopg.connect(bouncer.conninfo, autocommit=True) as con:
        row = con.execute(sql).fetchone()
        assert row is not None
        return row[0]


def test_many_jobs_same_and_different_sql(src: SqlSource, table: str) -> None:
    """25 jobs of the same SQL and 25 different ones on each path (fast path, cursor path,
    plain path of SHOW/EXPLAIN, a parameter): nothing is prepared server-side by name, so
    no "prepared statement ... does not exist / already exists" on other server connections."""
    for i in range(25):
        assert fast(src, f"SELECT id, v FROM {table}.t WHERE id <= 3 ORDER BY id") == [
            {"id": 1, "v": "row 1"}, {"id": 2, "v": "row 2"}, {"id": 3, "v": "row 3"}]  # fmt: skip
        assert fast(src, f"SELECT {i} AS n") == [{"n": i}]
        assert rows(src, f"SELECT count(*) AS n FROM {table}.t") == [{"n": 10}]
        assert rows(src, f"SELECT {i}::int AS n, now() > '2000-01-01' AS ok") == [{"n": i, "ok": True}]
        assert rows(src, "SHOW transaction_read_only") == [{"transaction_read_only": "on"}]
        assert len(rows(src, f"EXPLAIN SELECT * FROM {table}.t")) >= 1
        stream = src.prepare({"sql": f"SELECT v FROM {table}.t WHERE id = :id", "params": {"id": i % 10 + 1}})
        try:
            stream.start()
            assert stream.fetch(10) == [(f"row {i % 10 + 1}",)]
        finally:
            stream.close()
    for _ in range(6):
        assert src.test()["connected"] is True
        assert any(t["name"] == "t" for t in src.discover({"schemas": [table]}))


def test_no_named_prepared_statement_even_from_a_plain_cursor(src: SqlSource) -> None:
    """``prepare_threshold=None``: a psycopg cursor that would prepare after 5 runs (not
    the agent's, which bind on the client) prepares nothing on the agent's connection."""
    fairy = src.raw_connection()
    try:
        conn = fairy.dbapi_connection
        with psycopg.Cursor(conn) as cur:
            for _ in range(8):
                cur.execute("SELECT %s::int", (1,))
            cur.execute("SELECT count(*) FROM pg_prepared_statements")
            assert cur.fetchone() == (0,)
        conn.rollback()
    finally:
        fairy.close()


def test_fast_path_types_match_the_direct_source(src: SqlSource, bouncer: Bouncer) -> None:
    """int, text, uuid, numeric, timestamptz, json (COPY), and a bounded row (read as rows
    on libpq 17+): the same lines as the same query on the server directly."""
    direct = create_source("direct", "postgres", bouncer.direct)
    values = ("SELECT g AS i, 'tx\\t\"' || g AS t, md5(g::text)::uuid AS u, g / 3.0 AS n, "
              "timestamptz '2024-05-01 10:00:00+02' + g * interval '1 hour' AS ts, "
              "json_build_object('a', g, 'b', ARRAY[g, NULL]) AS j, jsonb_build_object('k', 'v\\n') AS jb, "
              "NULL::int AS z FROM generate_series(1, 500) g")  # fmt: skip
    bounded = "SELECT g AS i, g::numeric(10, 2) AS n, (g % 2 = 0) AS b, date '2024-01-01' + g AS d FROM generate_series(1, 3000) g"
    try:
        for sql in (values, bounded, "SELECT 0.1::float8 + 0.2::float8 AS f, interval '1 day 2 hours' AS iv"):
            assert fast(src, sql) == fast(direct, sql)
            assert rows(src, sql) == rows(direct, sql)
    finally:
        direct.close()


def test_big_result_max_rows_and_a_stop_then_the_next_job(src: SqlSource) -> None:
    big = fast(src, "SELECT g AS id, 'row ' || g AS v FROM generate_series(1, 200000) g")
    assert len(big) == 200000 and big[-1] == {"id": 200000, "v": "row 200000"}
    assert len(rows(src, "SELECT g FROM generate_series(1, 200000) g")) == 200000
    assert fast(src, "SELECT g AS id FROM generate_series(1, 200000) g", limit=7) == [{"id": i} for i in range(1, 8)]
    # the reader fails after the first payload: the COPY is stopped, the connection dropped
    stream: Any = src.prepare({"sql": "SELECT g AS id, repeat('x', 100) AS v FROM generate_series(1, 200000) g"})

    def emit(payload: bytes, n: int) -> bool:
        raise RuntimeError("the reader is gone")

    try:
        stream.start()
        with pytest.raises(RuntimeError):
            stream.payloads(emit)
    finally:
        stream.close()
    assert fast(src, "SELECT 1 AS one") == [{"one": 1}]
    assert rows(src, "SELECT 1 AS one") == [{"one": 1}]


def test_error_mid_stream_then_the_next_job(src: SqlSource) -> None:
    bad = "SELECT CASE WHEN g = 150000 THEN 1 / (g - g) ELSE g END AS n FROM generate_series(1, 200000) g"
    with pytest.raises(JobError) as info:
        fast(src, bad)
    assert "division by zero" in str(info.value)
    with pytest.raises(JobError):
        rows(src, bad)
    assert fast(src, "SELECT 2 AS two") == [{"two": 2}]
    assert rows(src, "SELECT 3 AS three") == [{"three": 3}]


@pytest.mark.parametrize("path", ["fast", "cursor"])
def test_timeout_stops_the_query_and_the_next_job_works(src: SqlSource, bouncer: Bouncer, path: str) -> None:
    """statement_timeout is set in the job's transaction (SET LOCAL): it fires through the
    pooler, the next job runs, and no other client of the pooler inherits it."""
    started = time.monotonic()
    with pytest.raises(JobError) as info:
        if path == "fast":
            fast(src, "SELECT pg_sleep(20) IS NULL AS slept", timeout=0.5)
        else:
            stream = src.prepare({"sql": "SELECT pg_sleep(20)"}, timeout=0.5)
            try:
                stream.start()
                stream.fetch(1)
            finally:
                stream.close()
    assert info.value.code == "TIMEOUT"
    assert time.monotonic() - started < scaled(8)
    stream = src.prepare({"sql": "SELECT current_setting('statement_timeout') AS st"}, timeout=5)
    try:
        stream.start()
        assert stream.fetch(1) == [("5s",)]
    finally:
        stream.close()
    if bouncer.mode == "session":
        src.close()  # the one server connection is the agent's until it disconnects
    assert plain(bouncer, "SHOW statement_timeout") == "0"


def sleeping(bouncer: Bouncer) -> bool:
    """A pg_sleep runs at the server for the agent (PgBouncer's connection keeps the
    application_name of the client it serves)."""
    with psycopg.connect(bouncer.direct, autocommit=True) as con:
        row = con.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' "
                          "AND application_name = 'mini-connector'").fetchone()  # fmt: skip
        return row is not None and row[0] > 0


def test_cancel_through_the_pooler(src: SqlSource, bouncer: Bouncer) -> None:
    stream = src.prepare({"sql": "SELECT pg_sleep(30) AS mc_pgb_cancel"})
    out: dict[str, BaseException] = {}

    def run() -> None:
        try:
            stream.start()
            stream.fetch(1)
        except BaseException as exc:  # handed to the test
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_until(lambda: sleeping(bouncer), 10, what="the query to run at the server")
    stream.cancel()
    thread.join(scaled(10))
    assert not thread.is_alive()
    stream.close()
    assert isinstance(out.get("error"), JobError) and out["error"].code == "CANCELLED"  # type: ignore[attr-defined]
    assert rows(src, "SELECT 4 AS four") == [{"four": 4}]


def _raw(src: SqlSource, sql: str, *, server_side: bool) -> list[Any]:
    """A job through the stream layer, the statement guard bypassed."""
    stream = SqlStream(src, sql, {}, timeout=30, server_side=server_side)
    try:
        stream.start()
        return stream.fetch(100)
    finally:
        stream.close()


@pytest.mark.parametrize("sql", [
    "DELETE FROM {t}.t", "SELECT 1; DELETE FROM {t}.t", "SELECT nextval('{t}.s')",
    "WITH d AS (DELETE FROM {t}.t RETURNING id) SELECT count(*) FROM d", "COMMIT",
])  # fmt: skip
def test_writes_are_refused_by_the_database_without_the_guard(src: SqlSource, bouncer: Bouncer, table: str,
                                                              sql: str) -> None:  # fmt: skip
    text = sql.format(t=table)
    with pytest.raises(JobError):
        src.prepare({"sql": text})  # the guard
    for server_side in (True, False):
        with pytest.raises((JobError, psycopg.Error)):
            _raw(src, text, server_side=server_side)
    with psycopg.connect(bouncer.direct) as con:
        assert con.execute(f"SELECT count(*), (SELECT is_called FROM {table}.s) FROM {table}.t").fetchone() == (10, False)


def test_the_session_settings_hold_in_each_job_and_leak_to_no_other_client(src: SqlSource, bouncer: Bouncer) -> None:
    """Another client of the pooler leaves session settings on the one server connection
    (transaction pooling keeps them there): each job still runs read-only, with the
    agent's text rules and float digits; and the agent leaves nothing to that client."""
    with psycopg.connect(bouncer.conninfo, autocommit=True) as other:
        for sql in ("SET default_transaction_read_only = off", "SET extra_float_digits = 0",
                    "SET IntervalStyle = iso_8601", "SET DateStyle = 'German'"):  # fmt: skip
            other.execute(sql)
        if bouncer.mode == "transaction":  # in session pooling the server connection is this client's
            sql = ("SELECT current_setting('default_transaction_read_only') AS d, current_setting('transaction_read_only') AS r, "
                   "current_setting('standard_conforming_strings') AS s, current_setting('IntervalStyle') AS i, "
                   "current_setting('extra_float_digits') AS e, 0.1::float8 AS f, interval '1 day 2 hours' AS iv, "
                   "date '2024-05-01' AS dt, timestamp '2024-05-01 10:00' AS ts")  # fmt: skip
            direct = create_source("direct", "postgres", bouncer.direct)
            try:
                want = rows(direct, sql)
            finally:
                direct.close()
            assert want[0]["d"] == "on" and want[0]["f"] == 0.1
            assert rows(src, sql) == want
            assert fast(src, sql) == want
        other.execute("RESET ALL")  # its own leaks gone: what is left below would be the agent's
    if bouncer.mode == "session":
        assert rows(src, "SHOW default_transaction_read_only") == [{"default_transaction_read_only": "on"}]
        src.close()
    for name, value in (("default_transaction_read_only", "off"), ("transaction_read_only", "off"),
                        ("statement_timeout", "0"), ("IntervalStyle", "postgres")):  # fmt: skip
        assert plain(bouncer, f"SHOW {name}") == value, name
    with psycopg.connect(bouncer.conninfo) as con:  # a plain client can still write
        assert con.execute("SELECT txid_current() > 0").fetchone() == (True,)


def test_admin_options_are_set_in_each_transaction(bouncer: Bouncer, table: str) -> None:
    """The admin's ``options`` (``-c search_path=...``) cannot reach the server through
    PgBouncer either: they are set per transaction like the agent's own."""
    s = create_source("pgb", "postgres", bouncer.url, options={"options": f"-c search_path={table},public"})
    try:
        assert rows(s, "SELECT count(*) AS n FROM t") == [{"n": 10}]
        assert rows(s, "SHOW search_path")[0]["search_path"].replace(" ", "") == f"{table},public"
    finally:
        s.close()


def test_statement_pooling_is_refused_with_pgbouncers_reason() -> None:
    """Statement pooling allows no transaction, and every job is one (read-only, rolled
    back): the source fails SOURCE_UNAVAILABLE with PgBouncer's own words."""
    pg_url = _service_url("PostgreSQL", "MC_TEST_POSTGRES_URL", DEFAULT_PG_URL)
    with start_pgbouncer(pg_url, "statement") as b:
        s = create_source("pgb", "postgres", b.url)
        try:
            with pytest.raises(JobError) as info:
                rows(s, "SELECT 1 AS one")
            assert info.value.code == "SOURCE_UNAVAILABLE"
            assert "transaction blocks not allowed in statement pooling mode" in str(info.value)
        finally:
            s.close()


def test_admin_settings_and_the_transaction_statement() -> None:
    assert pgconn.admin_settings("-c search_path=a,b --work-mem=64MB -capplication_name=x\\ y -x") == {
        "search_path": "a,b", "work_mem": "64MB", "application_name": "x y"}  # fmt: skip
    assert pgconn.admin_settings(None) == {}
    sql = pgconn.transaction_settings_sql({"default_transaction_read_only": "off", "x.y": "it's"}, 1500)
    assert "set_config('default_transaction_read_only', 'on', true)" in sql
    assert "set_config('x.y', 'it''s', true)" in sql and sql.endswith("set_config('statement_timeout', '1500', true)")
