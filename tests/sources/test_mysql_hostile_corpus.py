"""A hostile corpus run as real jobs against MariaDB with the ROOT account (issue 13).

Every statement goes through ``SqlSource.query`` (guard, private tables, session layers)
as the relay's jobs do. Refused or not, after each one:

- the canary table's checksum, its row count and the sequence are unchanged;
- no file was written where the statement aimed (``LOAD_FILE`` as the server sees it, and
  the local path when the server shares this machine);
- no result row holds a server file's content (``/etc/passwd`` as root reads it) or the
  private table's marker value;
- no named lock is held (``IS_USED_LOCK`` from a sentinel connection);
- the sentinel connection is alive (the corpus tries ``KILL`` on it) and the global
  settings it reads are unchanged.

The last tests run stored functions that pass the guard (a function's body is not text the
guard can see) to show the session layers alone: a named lock taken inside one is gone
after the job, a user variable it sets does not reach the next job, its write fails.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import text
from sqlalchemy.engine import make_url

from agent.sources.sql import SqlSource
from shared.errors import JobError

from .test_mysql_guard import _connect

NB, LS, IS, NEL, BOM = "\xa0", "\u2028", "\u3000", "\x85", "\ufeff"
SALARY = 987654321

# {t} canary, {p} a fresh path, {m} a server file, {lock} a lock name, {db} the database,
# {s} the private table, {sid} the sentinel's connection id.
CORPUS = [
    # INTO OUTFILE / DUMPFILE / @var, through every comment and quote trick
    "SELECT 1 INTO OUTFILE '{p}'",
    "SELECT 1 INTO DUMPFILE '{p}'",
    "SELECT * FROM {t} INTO OUTFILE '{p}'",
    "SELECT 1 INTO OUTFILE '{p}' FIELDS TERMINATED BY ','",
    f"SELECT 1 --{NB} INTO OUTFILE '{{p}}' FROM (SELECT 2 AS `{NB}`) q",
    f"SELECT 1 --{NB}\nINTO OUTFILE '{{p}}'",
    f"SELECT 1 --{LS} INTO OUTFILE '{{p}}' FROM (SELECT 2 AS `{LS}`) q",
    f"SELECT 1 --{IS} INTO DUMPFILE '{{p}}' FROM (SELECT 2 AS `{IS}`) q",
    f"SELECT 1 --{NEL} INTO OUTFILE '{{p}}' FROM (SELECT 2 AS `{NEL}`) q",
    f"SELECT 1 --{BOM} INTO OUTFILE '{{p}}' FROM (SELECT 2 AS `{BOM}`) q",
    "SELECT 1 --\x01 INTO OUTFILE '{p}'",
    "SELECT 1 --\x7f INTO OUTFILE '{p}'",
    "SELECT 1 --\x1c INTO OUTFILE '{p}'",
    "SELECT 1 --\x00 INTO OUTFILE '{p}'",
    "SELECT 1 # \x00\nINTO OUTFILE '{p}'",
    "SELECT 1 #\rINTO OUTFILE '{p}'",
    "SELECT 1 /*! INTO OUTFILE '{p}' */",
    "SELECT 1 /*!50000 INTO OUTFILE '{p}' */",
    "SELECT 1 /*M! INTO OUTFILE '{p}' */",
    "SELECT 1 /*M!100000 INTO OUTFILE '{p}' */",
    "SELECT 1 /*!99999 x */ INTO OUTFILE '{p}'",
    "SELECT 1 /* /* */ INTO OUTFILE '{p}' /* */",
    "SELECT 1 /**/INTO/**/OUTFILE '{p}'",
    "(SELECT 1) INTO OUTFILE '{p}'",
    "SELECT 1 UNION SELECT 2 INTO OUTFILE '{p}'",
    "WITH c AS (SELECT 1) SELECT * FROM c INTO DUMPFILE '{p}'",
    "SELECT 0x41 INTO DUMPFILE '{p}'",
    "SELECT 1e1INTO OUTFILE '{p}'",
    "SELECT 1.5INTO OUTFILE '{p}'",
    "SELECT `x`.1e1INTO OUTFILE '{p}' FROM (SELECT 1 AS `1e1`) x",
    "SELECT _utf8mb4'x' INTO OUTFILE '{p}'",
    "SELECT N'x' INTO OUTFILE '{p}'",
    "SELECT 'a\\' INTO OUTFILE '{p}' -- '",
    "SELECT \"a\\\" INTO OUTFILE '{p}' -- \"",
    "SELECT 'it''s' INTO OUTFILE '{p}'",
    "SELECT 1 INTO @mc_v",
    "SELECT 1 INTO @`mc_v`",
    "EXPLAIN SELECT 1 INTO OUTFILE '{p}'",
    # server files and named locks, however the function is written
    "SELECT LOAD_FILE('{m}')",
    "SELECT `LOAD_FILE`('{m}')",
    "SELECT `load_file` ('{m}')",
    "SELECT load_file/**/('{m}')",
    "SELECT load_file\n('{m}')",
    "SELECT LOAD_FILE #c\n ('{m}')",
    "SELECT LOAD_FILE -- c\n ('{m}')",
    "SELECT {db}.`LOAD_FILE`('{m}')",
    f"SELECT 1 --{NB} , LOAD_FILE('{{m}}') FROM (SELECT 2 AS `{NB}`) q",
    "SELECT HEX(LOAD_FILE('{m}'))",
    "SELECT CONVERT(LOAD_FILE('{m}') USING utf8mb4)",
    "SELECT (SELECT LOAD_FILE('{m}'))",
    "(SELECT 1) UNION (SELECT LOAD_FILE('{m}'))",
    "SELECT BENCHMARK(1, LOAD_FILE('{m}'))",
    "SELECT JSON_EXTRACT(LOAD_FILE('{m}'), '$')",
    "SELECT GET_LOCK('{lock}', 0)",
    "SELECT `GET_LOCK`('{lock}', 0)",
    "SELECT get_lock /* */ ('{lock}', 0)",
    "SELECT `get_lock`\t('{lock}', 0)",
    "SELECT RELEASE_LOCK('{lock}')",
    "SELECT RELEASE_ALL_LOCKS()",
    "SELECT MASTER_POS_WAIT('x', 1, 0)",
    "SELECT MASTER_GTID_WAIT('0-1-1', 0)",
    "SELECT SYS_EXEC('touch {p}')",
    "SELECT sys_eval('id')",
    "SELECT LAST_INSERT_ID(42)",
    "SELECT NEXT VALUE FOR {db}.mc_seq",
    "SELECT NEXTVAL({db}.mc_seq)",
    "SELECT SETVAL({db}.mc_seq, 100)",
    "SELECT 1 FROM {t} PROCEDURE ANALYSE()",
    # session state and commands
    "SET GLOBAL general_log = 1",
    "SET SESSION sql_mode = 'ANSI_QUOTES'",
    "SET @@session.sql_mode = 'NO_BACKSLASH_ESCAPES'",
    "SET STATEMENT max_statement_time = 1 FOR SELECT 1",
    "SELECT /*+ SET_VAR(sql_mode='ANSI_QUOTES') */ 1",
    "SELECT @mc_v := 1",
    "SELECT @mc_v:=LOAD_FILE('{m}')",
    "DO GET_LOCK('{lock}', 0)",
    "DO SLEEP(0)",
    "CALL mysql.mc_nope()",
    "HANDLER {t} OPEN",
    "HANDLER {t} READ FIRST",
    "LOAD DATA INFILE '{m}' INTO TABLE {t}",
    "LOAD DATA LOCAL INFILE '/etc/passwd' INTO TABLE {t}",
    "LOAD XML INFILE '{m}' INTO TABLE {t}",
    "KILL {sid}",
    "KILL QUERY {sid}",
    "KILL CONNECTION {sid}",
    "PREPARE s FROM 'DELETE FROM {t}'",
    "EXECUTE s",
    "XA START 'mc'",
    "BEGIN",
    "COMMIT",
    "START TRANSACTION READ WRITE",
    "SAVEPOINT a",
    "LOCK TABLES {t} WRITE",
    "FLUSH PRIVILEGES",
    "FLUSH TABLES WITH READ LOCK",
    "SHUTDOWN",
    "INSTALL SONAME 'ha_connect'",
    "BINLOG 'AAAA'",
    "PURGE BINARY LOGS BEFORE NOW()",
    "RESET MASTER",
    "CHANGE MASTER TO master_host = '127.0.0.1'",
    # several statements
    "SELECT 1; DELETE FROM {t}",
    "SELECT 1;DELETE FROM {t};",
    "SELECT 1; KILL {sid}",
    f"SELECT 1 --{NB} ; DELETE FROM {{t}}",
    "SELECT 1 /*! ; DELETE FROM {t} */",
    "SELECT '\\'; DELETE FROM {t}; -- '",
    "SELECT \"\\\"; DELETE FROM {t}; -- \"",
    "SELECT `a``; DELETE FROM {t}; --` FROM (SELECT 1 AS `a``; DELETE FROM {t}; --`) q",
    "SHOW TABLES; DROP TABLE {t}",
    "BEGIN; DELETE FROM {t}; COMMIT",
    # locks and writes
    "SELECT * FROM {t} FOR UPDATE",
    "SELECT * FROM {t} FOR UPDATE NOWAIT",
    "SELECT * FROM {t} FOR UPDATE SKIP LOCKED",
    "SELECT * FROM {t} LOCK IN SHARE MODE",
    "SELECT * FROM {t} FOR SHARE",
    "UPDATE {t} SET v = 'x'",
    "DELETE FROM {t}",
    "INSERT INTO {t} VALUES (99, 'x')",
    "REPLACE INTO {t} VALUES (1, 'x')",
    "INSERT INTO {t} SELECT 100, 'y'",
    "TRUNCATE {t}",
    "DROP TABLE {t}",
    "ALTER TABLE {t} ADD COLUMN z int",
    "RENAME TABLE {t} TO {t}_x",
    "CREATE TABLE {db}.mc_evil (a int)",
    "CREATE TEMPORARY TABLE mc_tmp (a int)",
    "CREATE USER 'mc_evil'@'%'",
    "GRANT ALL ON *.* TO 'mc_evil'@'%'",
    "ANALYZE DELETE FROM {t}",
    "ANALYZE SELECT LOAD_FILE('{m}')",
    "EXPLAIN DELETE FROM {t}",
    "OPTIMIZE TABLE {t}",
    "REPAIR TABLE {t}",
    "CHECKSUM TABLE {t}",
    # the private table, named through the same tricks
    "SELECT * FROM {s}",
    "SELECT * FROM `{s}`",
    "SELECT * FROM {db}.{s}",
    "SELECT * FROM `{db}`.`{s}`",
    f"SELECT 1 --{NB} , (SELECT salary FROM {{s}} LIMIT 1) FROM (SELECT 2 AS `{NB}`) q",
    "SELECT x FROM (SELECT salary AS x FROM `{s}`) q",
    "WITH w AS (SELECT * FROM {s}) SELECT * FROM w",
    "SELECT * FROM {t} WHERE id IN (SELECT id FROM {s})",
    "SELECT (SELECT salary FROM {s} LIMIT 1)",
    "SELECT 1 /*!, (SELECT salary FROM {s}) */",
    "TABLE {s}",
    "DESCRIBE {s}",
    # harmless reads that mention dangerous words only inside literals and comments
    "SELECT 'INTO OUTFILE {p}' AS s",
    "SELECT 1 /* INTO OUTFILE '{p}' */",
    "SELECT 1 -- INTO OUTFILE '{p}'",
    "SELECT '{s}' AS name",
    "SELECT `INTO` FROM (SELECT 1 AS `INTO`) q",
]

HARMLESS = CORPUS[-5:]
ACCEPTED_CODES = {"WRITE_OPERATION_REJECTED", "SCHEMA_ACCESS_DENIED", "QUERY_FAILED"}


@dataclass
class World:
    source: SqlSource
    sentinel: Any
    sid: int
    db: str
    table: str
    secret: str
    lock: str
    server_file: str
    file_mark: str | None
    checksum: Any
    settings: Any


def _one(conn: Any, sql: str, *args: Any) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql, args or None)
        return cur.fetchone()


def _state(conn: Any, w_db: str, table: str) -> Any:
    return (_one(conn, f"CHECKSUM TABLE {table}"), _one(conn, f"SELECT COUNT(*) FROM {table}"),
            _one(conn, f"SELECT next_not_cached_value FROM {w_db}.mc_seq"),
            _one(conn, "SHOW TABLES FROM `" + w_db + "` LIKE 'mc_evil%'"))  # fmt: skip


def _settings(conn: Any) -> Any:
    return _one(conn, "SELECT @@GLOBAL.sql_mode, @@GLOBAL.general_log, @@GLOBAL.read_only, "
                      "(SELECT COUNT(*) FROM mysql.user WHERE user = 'mc_evil')")  # fmt: skip


@pytest.fixture
def world(mysql_url: str) -> Iterator[World]:
    db = "mc_hc_" + uuid.uuid4().hex[:10]
    admin = sqlalchemy.create_engine(mysql_url, isolation_level="AUTOCOMMIT")
    lock = f"mc_hc_lock_{uuid.uuid4().hex[:8]}"
    with admin.connect() as c:
        c.execute(text(f"CREATE DATABASE {db}"))
        for stmt in (
            f"CREATE TABLE {db}.canary (id int PRIMARY KEY, v varchar(20))",
            f"INSERT INTO {db}.canary VALUES (1, 'a'), (2, 'b'), (3, 'c')",
            f"CREATE TABLE {db}.secret_pay (id int PRIMARY KEY, salary bigint)",
            f"INSERT INTO {db}.secret_pay VALUES (1, {SALARY})",
            f"CREATE SEQUENCE {db}.mc_seq",
            f"CREATE FUNCTION {db}.mc_lockf() RETURNS INT NOT DETERMINISTIC NO SQL RETURN GET_LOCK('{lock}', 0)",
            f"CREATE FUNCTION {db}.mc_varf() RETURNS INT NOT DETERMINISTIC NO SQL "
            "BEGIN SET @mc_leak = 7; RETURN 1; END",
            f"CREATE FUNCTION {db}.mc_writef() RETURNS INT NOT DETERMINISTIC MODIFIES SQL DATA "
            f"BEGIN INSERT INTO {db}.canary VALUES (1000, 'w'); RETURN 1; END",
        ):
            c.execute(text(stmt))
    url = make_url(mysql_url).set(database=db).render_as_string(hide_password=False)
    source = SqlSource("mc_hc", "mysql", url, options={"private_tables": "secret_pay"}, pool_size=2)
    sentinel = _connect(url)
    table = f"{db}.canary"
    file_mark = None
    [content] = _one(sentinel, "SELECT LOAD_FILE('/etc/passwd')")
    if content:
        file_mark = content.decode("utf-8", "replace").splitlines()[0][:20]
    try:
        yield World(source, sentinel, _one(sentinel, "SELECT CONNECTION_ID()")[0], db, table, "secret_pay",
                    lock, "/etc/passwd", file_mark, _state(sentinel, db, table), _settings(sentinel))  # fmt: skip
    finally:
        source.close()
        sentinel.close()
        with admin.connect() as c:
            c.execute(text(f"DROP DATABASE IF EXISTS {db}"))
            c.execute(text("DROP USER IF EXISTS 'mc_evil'@'%'"))
        admin.dispose()


def _run(source: SqlSource, sql: str) -> tuple[list[Any], JobError | None]:
    try:
        _, batches = source.query({"sql": sql}, timeout=5)
        return [row for batch in batches for row in batch], None
    except JobError as exc:
        return [], exc


def _assert_harmless(w: World, sql: str, rows: list[Any], path: str) -> None:
    flat = " ".join(str(v) for row in rows for v in row)
    if w.file_mark:
        assert w.file_mark not in flat, f"a server file was read by {sql!r}"
    assert str(SALARY) not in flat, f"the private table was read by {sql!r}"
    assert _one(w.sentinel, "SELECT 1") == (1,), "the sentinel session is gone"
    assert _one(w.sentinel, "SELECT CONNECTION_ID()")[0] == w.sid, "the sentinel session was killed"
    assert _one(w.sentinel, "SELECT IS_USED_LOCK(%s)", w.lock) == (None,), f"{sql!r} left a named lock"
    assert _one(w.sentinel, "SELECT LOAD_FILE(%s)", path) == (None,), f"{sql!r} wrote {path}"
    assert not os.path.exists(path), f"{sql!r} wrote {path}"
    assert _state(w.sentinel, w.db, w.table) == w.checksum, f"{sql!r} changed data"
    assert _settings(w.sentinel) == w.settings, f"{sql!r} changed a global setting or user"


def test_the_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 70  # (the PostgreSQL half lives in its own file)
    assert len(set(CORPUS)) == len(CORPUS)


def test_hostile_corpus_as_root_changes_reads_and_leaves_nothing(world: World) -> None:
    ran = []
    for i, template in enumerate(CORPUS):
        path = f"/tmp/mc_hc_{uuid.uuid4().hex}_{i}"
        sql = template.format(t=world.table, p=path, m=world.server_file, lock=world.lock, db=world.db,
                              s=world.secret, sid=world.sid)  # fmt: skip
        rows, err = _run(world.source, sql)
        if err is not None:
            assert err.code in ACCEPTED_CODES, (sql, err.code, err.message)
        else:
            ran.append(template)
        _assert_harmless(world, sql, rows, path)
    # The honest reads at the end of the corpus ran: the source works, it is not refusing all.
    assert set(HARMLESS) <= set(ran)
    print(f"{len(CORPUS) - len(ran)} of {len(CORPUS)} refused; ran: {ran}")


def test_a_stored_function_that_takes_a_lock_leaves_none(world: World) -> None:
    rows, err = _run(world.source, f"SELECT {world.db}.mc_lockf()")
    assert err is None and rows == [(1,)]  # the guard cannot see inside the function...
    assert _one(world.sentinel, "SELECT IS_USED_LOCK(%s)", world.lock) == (None,)  # ...the reset can


def test_a_stored_function_cannot_leak_a_variable_or_write(world: World) -> None:
    assert _run(world.source, f"SELECT {world.db}.mc_varf()") == ([(1,)], None)
    for _ in range(3):  # whichever pooled connection serves the next job
        assert _run(world.source, "SELECT @mc_leak") == ([(None,)], None)
    _, err = _run(world.source, f"SELECT {world.db}.mc_writef()")
    assert err is not None and err.code == "WRITE_OPERATION_REJECTED"  # the server's refusal
    assert _state(world.sentinel, world.db, world.table) == world.checksum
