"""A hostile PostgreSQL corpus, run as real jobs through the agent's ``SqlSource`` with a
SUPERUSER account (the README tour's setup) against the real server.

For every statement: the job fails (``WRITE_OPERATION_REJECTED``, a one-line
``QUERY_FAILED``, or ``SCHEMA_ACCESS_DENIED`` for private tables), and afterwards

- no data changed: a checksum of the canary table, the sequence, the schema's tables,
  large objects, roles and prepared transactions is as before;
- no server file was written (a marker path the statements aim at does not exist) or read
  (a secret written to a server file by the test never appears in any job's answer);
- no lock is held (no advisory lock on the corpus's key, no lock on the canary table);
- no session was signalled (a separate sentinel session, whose pid the statements aim at,
  still answers);
- no setting changed: neither the pooled session's (read through the same one-connection
  pool by the next job) nor the server's (read from a fresh connection).

Then the part of the corpus the database layers alone must stop (stacking, COMMIT
escape, writes in one statement, locks and settings left behind) runs again with the
guard switched off (straight to the stream layer), proving those layers hold alone. File
reads and signalling with a superuser are stopped by the guard only: the database grants
a superuser those, which is why ``source add`` warns about privileged accounts.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from agent.sources import create_source
from agent.sources.sql import SqlSource
from agent.sources.sqlstream import SqlStream
from shared.errors import JobError
from tests.conftest import DEFAULT_PG_URL, _service_url

pytestmark = pytest.mark.postgres

E = "\U0001f600"  # outside the BMP: the trick
G = "\U00010348"  # GOTHIC LETTER HWAIR, a letter outside the BMP

# Stacked statements: every quoting trick that makes a naive reader see one statement.
STACKED = [
    f"SELECT 1 AS a{E}$x$; COMMIT; DELETE FROM {{s}}.t; SELECT 1 AS b{E}$x$",
    f"SELECT 1 AS a{E}$x$; COPY (SELECT 1) TO PROGRAM 'touch {{mark}}'; SELECT 1 AS b{E}$x$",
    f"SELECT 1 AS a{G}$x$; DELETE FROM {{s}}.t; SELECT 1 AS b{G}$x$",
    "SELECT 1 AS a\u2028$q$; DELETE FROM {s}.t; SELECT 1 AS b\u2028$q$",
    "SELECT 1 AS a\u00a0$q$; DELETE FROM {s}.t; SELECT 1 AS b\u00a0$q$",
    "SELECT 1 AS a\u3000$q$; DELETE FROM {s}.t; SELECT 1 AS b\u3000$q$",
    "SELECT 1; DELETE FROM {s}.t",
    "SELECT 1; COMMIT; DELETE FROM {s}.t",
    "SELECT 1;;DELETE FROM {s}.t",
    "; DELETE FROM {s}.t",
    "DELETE FROM {s}.t; SELECT 1",
    "SELECT 'a\\'; DELETE FROM {s}.t; --'",
    "SELECT E'a\\\\'; DELETE FROM {s}.t; --'",
    "SELECT $$a$$; DELETE FROM {s}.t; SELECT $$b$$",
    "SELECT $a$ $b$ $a$; DELETE FROM {s}.t",
    "SELECT $_$;$_$; DELETE FROM {s}.t",
    "SELECT 1 /* /* nested */ ; */ ; DELETE FROM {s}.t",
    "SELECT 1 -- comment\n; DELETE FROM {s}.t",
    "SELECT 1 --\u00a0x\n; DELETE FROM {s}.t",
    "SELECT U&'\\0027'; DELETE FROM {s}.t; --",
    "SELECT U&\"a\\0022\" FROM (SELECT 1) x; DELETE FROM {s}.t",
    "SELECT 'x'\n'y'; DELETE FROM {s}.t",
    "SELECT B'1', X'ff'; DELETE FROM {s}.t",
    "SELECT 1; COMMIT; SET default_transaction_read_only = off; DELETE FROM {s}.t",
    "SELECT 1; SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE; COMMIT; DELETE FROM {s}.t",
    "WITH x AS (SELECT 1) SELECT 1; COPY (SELECT 1) TO PROGRAM 'touch {mark}'",
    "SELECT 1; SELECT pg_advisory_lock({key})",
    "SELECT 1; CREATE TABLE {s}.t9 (a int)",
]

# One statement that writes, or escapes the transaction: the read-only session refuses it.
WRITES = [
    "DELETE FROM {s}.t", "UPDATE {s}.t SET v = 'x'", "INSERT INTO {s}.t VALUES (101, 'z')",
    "TRUNCATE {s}.t", "DROP TABLE {s}.t", "CREATE TABLE {s}.t3 (a int)",
    "MERGE INTO {s}.t USING (SELECT 1 AS id) m ON t.id = m.id WHEN MATCHED THEN DELETE",
    "SELECT * INTO {s}.t2 FROM {s}.t", "CREATE TABLE {s}.t4 AS SELECT * FROM {s}.t",
    "WITH d AS (DELETE FROM {s}.t RETURNING *) SELECT count(*) FROM d",
    "WITH u AS (UPDATE {s}.t SET v = 'x' RETURNING *) SELECT * FROM u",
    "WITH i AS (INSERT INTO {s}.t VALUES (99, 'x') RETURNING *) SELECT * FROM i",
    "WITH m AS (SELECT 1) DELETE FROM {s}.t",
    "EXPLAIN ANALYZE DELETE FROM {s}.t", "EXPLAIN (ANALYZE, BUFFERS) UPDATE {s}.t SET v = 'x'",
    "EXPLAIN (analyse) INSERT INTO {s}.t VALUES (100, 'y')",
    "SELECT * FROM {s}.t FOR UPDATE", "SELECT * FROM {s}.t FOR NO KEY UPDATE NOWAIT",
    "SELECT * FROM {s}.t FOR SHARE", "SELECT * FROM {s}.t FOR KEY SHARE",
    "DO $$BEGIN DELETE FROM {s}.t; END$$", "COPY {s}.t FROM PROGRAM 'echo 1'",
    "SELECT nextval('{s}.seq')", "DELETE FROM {s}.t RETURNING *", "UPDATE {s}.t SET v = 'x' RETURNING id",
    "INSERT INTO {s}.t VALUES (102, 'r') RETURNING *", "MERGE INTO {s}.t USING (SELECT 1 AS id) m ON t.id = m.id "
    "WHEN MATCHED THEN UPDATE SET v = 'm'",
    "SELECT setval('{s}.seq', 100)", "SELECT \"nextval\"('{s}.seq')", "GRANT ALL ON {s}.t TO PUBLIC",
    "CREATE ROLE mc_hc_evil SUPERUSER", "ALTER ROLE CURRENT_USER SET work_mem = '64MB'",
    "ALTER SYSTEM SET work_mem = '64MB'", "VACUUM {s}.t", "EXECUTE p",
]  # fmt: skip

# COPY TO is a read for PostgreSQL: a read-only transaction lets a superuser run it. The
# guard refuses it (it is not a query); without the guard, DECLARE ... CURSOR FOR refuses
# it on the cursor path, and on the plain path (SHOW, EXPLAIN) the server's describe of
# the statement shows it returns no rows, so it is refused before it runs.
COPY_OUT = [
    "COPY (SELECT 1) TO PROGRAM 'touch {mark}'", "COPY {s}.t TO '{mark}'",
    "copy (select 1) to program $$touch {mark}$$", "COPY (SELECT 1) TO STDOUT",
]

# Locks and settings a job could leave behind: the pool's reset clears them.
LEFTOVERS = [
    "SELECT \"pg_advisory_lock\"({key})", "SELECT pg_try_advisory_lock({key})",
    "SELECT pg_advisory_lock_shared({key})", "SELECT pg_catalog.pg_advisory_lock({key}, 1)",
    "SELECT set_config('default_transaction_read_only', 'off', false)",
    "SELECT set_config('search_path', 'evil', false)", "SET ROLE postgres",
    "SET SESSION AUTHORIZATION postgres", "RESET ALL", "SET default_transaction_read_only = off",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", "SET work_mem = '64MB'",
    "LISTEN mc_hc_channel", "DECLARE c CURSOR WITH HOLD FOR SELECT 1", "DISCARD ALL",
    "LOCK TABLE {s}.t IN ACCESS EXCLUSIVE MODE", "COMMIT", "BEGIN", "ROLLBACK",
    "START TRANSACTION READ WRITE", "PREPARE p AS DELETE FROM {s}.t", "SELECT lo_creat(-1)",
    "SELECT lo_from_bytea(0, '\\x00')",
]  # fmt: skip

# The guard alone stops these with a superuser (the database grants them to one).
GUARD_ONLY = [
    "SELECT \"pg_read_file\"('{secret}')", "SELECT pg_catalog.\"pg_ls_dir\"('/tmp')",
    "SELECT pg_catalog.pg_read_binary_file('{secret}')", "SELECT * FROM pg_ls_dir('/')",
    "SELECT pg_stat_file('{secret}')", "SELECT U&\"pg_read_fil\\0065\"('{secret}')",
    "SELECT U&\"!0070g_read_file\" UESCAPE '!'('{secret}')", "SELECT pg_read_file('{secret}', 0, 100)",
    "SELECT (SELECT pg_read_file('{secret}'))", "SELECT * FROM (SELECT pg_ls_dir('/tmp')) x",
    "WITH f AS (SELECT pg_read_file('{secret}') AS c) SELECT c FROM f",
    "SELECT 1 WHERE EXISTS (SELECT pg_read_file('{secret}'))",
    "SELECT lo_export(1, '{mark}')", "SELECT lo_get(1)", "SELECT lo_import('{secret}')",
    "SELECT lo_get(lo_import('{secret}'))", "SELECT * FROM pg_file_settings",
    "SELECT * FROM pg_hba_file_rules", "SELECT pg_current_logfile()",
    "SELECT query_to_xml_and_xmlschema('select pg_read_file(''{secret}'')', true, true, '')",
    "SELECT query_to_xml('select pg_read_file(''{secret}'')', true, true, '')",
    "SELECT query_to_xml('delete from {s}.t returning 1', true, true, '')",
    "SELECT cursor_to_xml('c', 1, true, true, '')", "SELECT ts_stat('select to_tsvector(v) from {s}.t')",
    "SELECT ts_rewrite('a'::tsquery, 'select ''a''::tsquery, ''b''::tsquery')",
    "SELECT \"pg_terminate_backend\"({pid})", "SELECT pg_cancel_backend({pid})",
    "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = {pid}",
    "SELECT pg_reload_conf()", "SELECT pg_notify('mc_hc_channel', 'x')", "NOTIFY mc_hc_channel",
    "SELECT setseed(0.5)", "SELECT pg_export_snapshot()", "SELECT txid_current()",
    "SELECT dblink_exec('dbname=test', 'DELETE FROM {s}.t')", "CALL {s}.nothing()",
    "SELECT pg_switch_wal()", "SELECT pg_create_restore_point('x')",
    # attribute ("functional") notation: (x).f is f(x)
    "SELECT ('{secret}'::text).pg_read_file", "SELECT (x).pg_read_file FROM (SELECT '{secret}'::text AS x) t",
    "SELECT t.x.pg_read_file FROM (SELECT '{secret}'::text AS x) t", "SELECT ('{secret}'::text).\"pg_stat_file\"",
    "SELECT ('{secret}'::text).lo_import", "SELECT (0.5::float8).setseed", "SELECT ({pid}).pg_terminate_backend",
    "SELECT rolname, rolpassword FROM pg_authid", "EXPLAIN CREATE TABLE {s}.t5 AS SELECT 1",
]  # fmt: skip

# Private tables, including inside the hidden region.
PRIVATE = [
    f"SELECT 1 AS a{E}$x$, (SELECT v FROM {{s}}.secrets LIMIT 1) AS b{E}$x$",
    "SELECT * FROM {s}.\"secrets\"", "SELECT (SELECT string_agg(v, ',') FROM {s}.secrets)",
    "WITH x AS (SELECT * FROM {s}.secrets) SELECT * FROM x", "SELECT * FROM U&\"secr\\0065ts\"",
    "SELECT 1 FROM {s}.t JOIN LATERAL (SELECT v FROM {s}.secrets) z ON true",
    "SELECT table_to_xml('{s}.secrets', true, true, '')",
]  # fmt: skip

CORPUS = STACKED + WRITES + COPY_OUT + LEFTOVERS + GUARD_ONLY + PRIVATE
MUST_FAIL_UNGUARDED = STACKED + WRITES


@dataclass
class World:
    url: str
    schema: str
    mark: str
    secret_path: str
    secret: str
    key: int
    sentinel: psycopg.Connection[Any]
    pid: int

    def fmt(self, sql: str) -> str:
        return sql.format(s=self.schema, mark=self.mark, secret=self.secret_path, key=self.key, pid=self.pid)


def _admin(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url.replace("postgresql+psycopg2://", "postgresql://"), autocommit=True)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    url = _service_url("PostgreSQL", "MC_TEST_POSTGRES_URL", DEFAULT_PG_URL)
    tag = uuid.uuid4().hex[:10]
    schema, secret = f"mc_hc_{tag}", f"mc-hc-secret-{tag}"
    mark, secret_path = f"/tmp/mc_hc_mark_{tag}", f"/tmp/mc_hc_secret_{tag}"
    with _admin(url) as con:
        con.execute(f"CREATE SCHEMA {schema}")
        con.execute(f"CREATE TABLE {schema}.t (id int PRIMARY KEY, v text)")
        con.execute(f"INSERT INTO {schema}.t SELECT g, 'row ' || g FROM generate_series(1, 20) g")
        con.execute(f"CREATE TABLE {schema}.secrets (v text)")
        con.execute(f"INSERT INTO {schema}.secrets VALUES ('{secret}')")
        con.execute(f"CREATE SEQUENCE {schema}.seq")
        con.execute(f"COPY (SELECT '{secret}') TO '{secret_path}'")  # a file on the server
    sentinel = _admin(url)
    row = sentinel.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    w = World(url, schema, mark, secret_path, secret, 7_700_000 + int(tag[:4], 16), sentinel, int(row[0]))
    try:
        yield w
    finally:
        sentinel.close()
        with _admin(url) as con:
            con.execute(f"DROP SCHEMA {schema} CASCADE")
            con.execute(f"COPY (SELECT '') TO PROGRAM 'rm -f {secret_path} {mark}'")


@pytest.fixture(scope="module")
def source(world: World) -> Iterator[SqlSource]:
    src = create_source("hostile", "postgres", world.url, options={
        "pool_size": "1", "max_overflow": "0", "private_tables": f"{world.schema}.secrets"})  # fmt: skip
    assert isinstance(src, SqlSource)
    yield src
    src.close()


def _state(w: World) -> dict[str, Any]:
    with _admin(w.url) as con:
        def one(sql: str) -> Any:
            row = con.execute(sql).fetchone()
            return row[0] if row else None

        s = w.schema
        return {
            "canary": one(f"SELECT md5(string_agg(id || ':' || v, ',' ORDER BY id)) FROM {s}.t"),
            "seq": one(f"SELECT last_value::text || is_called::text FROM {s}.seq"),
            "tables": one(f"SELECT count(*) FROM pg_class WHERE relnamespace = '{s}'::regnamespace"),
            "acl": one(f"SELECT relacl::text FROM pg_class WHERE oid = '{s}.t'::regclass"),
            "largeobjects": one("SELECT count(*) FROM pg_largeobject_metadata"),
            "roles": one("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'mc_hc_%'"),
            "role_settings": one("SELECT md5(coalesce(string_agg(setconfig::text, ',' ORDER BY setrole, setdatabase), '')) "
                                 "FROM pg_db_role_setting"),
            "server_settings": one("SELECT md5(string_agg(name || '=' || setting, ',' ORDER BY name)) FROM pg_settings "
                                   "WHERE name NOT IN ('application_name')"),
            "auto_conf": one("SELECT count(*) FROM pg_file_settings WHERE sourcefile LIKE '%postgresql.auto.conf'"),
            "locks": one(f"SELECT count(*) FROM pg_locks WHERE (locktype = 'advisory' AND objid = {w.key}) "
                         f"OR relation IN ('{s}.t'::regclass, '{s}.secrets'::regclass)"),
        }


def _session_view(src: SqlSource) -> tuple[Any, ...]:
    """What the next job on the (single) pooled connection sees."""
    _, batches = src.query({"sql": "SELECT current_setting('default_transaction_read_only'), "
                                   "current_setting('search_path'), current_setting('work_mem'), "
                                   "current_user, session_user, "
                                   "(SELECT count(*) FROM pg_prepared_statements), "
                                   "(SELECT count(*) FROM pg_cursors), "
                                   "(SELECT count(*) FROM pg_listening_channels())"})  # fmt: skip
    rows = [r for b in batches for r in b]
    return tuple(rows[0])


def _invariants(w: World, src: SqlSource, before: dict[str, Any], session: tuple[Any, ...], sql: str) -> None:
    assert _state(w) == before, sql
    assert not os.path.exists(w.mark), sql
    assert w.sentinel.execute("SELECT 1").fetchone() == (1,), sql  # not terminated
    assert _session_view(src) == session, sql


@pytest.fixture(scope="module")
def baseline(world: World, source: SqlSource) -> tuple[dict[str, Any], tuple[Any, ...]]:
    return _state(world), _session_view(source)


def test_the_corpus_is_large_enough() -> None:
    assert len(set(CORPUS)) == len(CORPUS) >= 120  # the PostgreSQL half of the 150+


@pytest.mark.parametrize("sql", CORPUS)
def test_a_hostile_job_fails_and_changes_nothing(
    world: World, source: SqlSource, baseline: tuple[dict[str, Any], tuple[Any, ...]], sql: str
) -> None:
    text = world.fmt(sql)
    with pytest.raises(JobError) as err:
        _, batches = source.query({"sql": text}, timeout=20)
        for _batch in batches:
            pass
    code, message = err.value.code, err.value.message
    expected = ["WRITE_OPERATION_REJECTED", "QUERY_FAILED"]
    if sql in PRIVATE:  # refused as private, or (a function reading a table named in text) by the guard
        expected = ["SCHEMA_ACCESS_DENIED", "WRITE_OPERATION_REJECTED"]
    assert code in expected, (text, code, message)
    assert message and "\n" not in message and "Traceback" not in message
    assert world.secret not in message
    _invariants(world, source, *baseline, text)


def _unguarded(src: SqlSource, sql: str, *, server_side: bool) -> JobError | None:
    """The job's stream with no guard and no private-name check: only the database's locks."""
    stream = SqlStream(src, sql, {}, timeout=20, server_side=server_side)
    try:
        stream.start()
        while stream.fetch(1000):
            pass
        return None
    except JobError as exc:
        return exc
    finally:
        stream.close()


UNGUARDED = [(sql, side) for sql in MUST_FAIL_UNGUARDED + COPY_OUT + LEFTOVERS for side in (True, False)]


@pytest.mark.parametrize(("sql", "server_side"), UNGUARDED)
def test_the_database_layers_hold_without_the_guard(
    world: World, source: SqlSource, baseline: tuple[dict[str, Any], tuple[Any, ...]], sql: str, server_side: bool
) -> None:
    text = world.fmt(sql)
    failure = _unguarded(source, text, server_side=server_side)
    if sql in MUST_FAIL_UNGUARDED or sql in COPY_OUT:
        assert failure is not None, text
        assert failure.code in ("WRITE_OPERATION_REJECTED", "QUERY_FAILED"), (text, failure)
    _invariants(world, source, *baseline, text)
