"""The statement guard: a corpus of tricky writes is rejected, honest reads are admitted."""

from __future__ import annotations

import pytest

from agent.sources.readonly import check_read_only
from agent.sources.sqltext import translate_params
from shared.errors import JobError

READS = [
    ("SELECT 1", "generic"),
    ("select * from t where name = 'DROP TABLE x; DELETE'", "generic"),
    ("SELECT 1;", "generic"),
    ("SELECT 1 ; ; ", "generic"),
    ("  -- a comment; DROP TABLE x\nSELECT 2", "generic"),
    ("/* DELETE FROM t; */ SELECT 3", "generic"),
    ("WITH a AS (SELECT 1 AS x) SELECT x FROM a", "postgres"),
    ("VALUES (1), (2)", "postgres"),
    ("TABLE items", "postgres"),
    ("SHOW server_version", "postgres"),
    ("EXPLAIN SELECT * FROM t", "postgres"),
    ("DESCRIBE items", "mysql"),
    ("(SELECT 1) UNION (SELECT 2)", "generic"),
    ('SELECT "update", "insert into" FROM "delete"', "postgres"),
    ("SELECT `drop` FROM `create`", "mysql"),
    ("SELECT $$; DROP TABLE x; $$ AS s", "postgres"),
    ("SELECT $tag$ it's; DELETE $tag$", "postgres"),
    ("SELECT E'it\\'s; DROP' AS s", "postgres"),
    ("SELECT 'a\\'; DROP TABLE x; --' AS s", "mysql"),
    ("SELECT x::int FROM t WHERE y = :y", "postgres"),
    ("SELECT created_at, updated_by, deleted FROM t", "generic"),
    ("SELECT replace(name, 'a', 'b') FROM t", "generic"),
    ("SELECT 1 # comment; DROP TABLE x", "mysql"),
    ("SELECT pg_sleep(1)", "postgres"),
    ("SELECT comment FROM posts", "generic"),
]

WRITES = [
    ("INSERT INTO t VALUES (1)", "generic"),
    ("UPDATE t SET a = 1", "generic"),
    ("DELETE FROM t", "generic"),
    ("MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE", "postgres"),
    ("CREATE TABLE x (a int)", "generic"),
    ("DROP TABLE t", "generic"),
    ("ALTER TABLE t ADD c int", "generic"),
    ("TRUNCATE t", "generic"),
    ("GRANT ALL ON t TO bob", "generic"),
    ("REVOKE ALL ON t FROM bob", "generic"),
    ("COPY t TO '/tmp/x'", "postgres"),
    ("CALL proc()", "generic"),
    ("EXEC sp_who", "generic"),
    ("SET search_path = evil", "postgres"),
    ("LOCK TABLE t", "postgres"),
    ("SELECT 1; DROP TABLE t", "generic"),
    ("SELECT 1; SELECT 2", "generic"),
    ("SELECT * INTO newtable FROM t", "postgres"),
    ("SELECT * FROM t INTO OUTFILE '/tmp/x'", "mysql"),
    ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", "postgres"),
    ("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", "postgres"),
    ("SELECT * FROM t FOR UPDATE", "postgres"),
    ("SELECT * FROM t FOR SHARE", "postgres"),
    ("SELECT * FROM t FOR NO KEY UPDATE", "postgres"),
    ("SELECT * FROM t LOCK IN SHARE MODE", "mysql"),
    ("EXPLAIN ANALYZE DELETE FROM t", "postgres"),
    ("EXPLAIN (ANALYZE) SELECT 1", "postgres"),
    ("SELECT 1 /*! ; DROP TABLE t */", "mysql"),
    ("SELECT 1--1; DROP TABLE t", "mysql"),
    ("SELECT 'unterminated", "generic"),
    ("SELECT 1 /* unterminated", "generic"),
    ("SELECT nextval('s')", "postgres"),
    ("SELECT pg_terminate_backend(123)", "postgres"),
    ("select set_config('x', 'y', false)", "postgres"),
    ("DO $$ BEGIN DELETE FROM t; END $$", "postgres"),
    ("VACUUM", "postgres"),
    ("PRAGMA writable_schema = 1", "sqlite"),
    ("ATTACH DATABASE 'x' AS y", "sqlite"),
    ("BEGIN; DELETE FROM t; COMMIT", "generic"),
    ("REPLACE INTO t VALUES (1)", "mysql"),
    ("HANDLER t OPEN", "mysql"),
    ("LOAD DATA INFILE 'x' INTO TABLE t", "mysql"),
]


@pytest.mark.parametrize(("sql", "dialect"), READS)
def test_reads_are_admitted(sql: str, dialect: str) -> None:
    check_read_only(sql, dialect)


@pytest.mark.parametrize(("sql", "dialect"), WRITES)
def test_writes_are_rejected(sql: str, dialect: str) -> None:
    with pytest.raises(JobError) as info:
        check_read_only(sql, dialect)
    assert info.value.code == "WRITE_OPERATION_REJECTED"
    assert info.value.message and "\n" not in info.value.message


def test_text_postgresql_cannot_parse_is_a_query_error_with_the_parsers_words() -> None:
    with pytest.raises(JobError) as info:
        check_read_only("SELECT $a$ unterminated", "postgres")
    assert info.value.code == "QUERY_FAILED"
    assert "unterminated dollar-quoted string" in info.value.message


def test_empty_statement_is_a_query_error() -> None:
    with pytest.raises(JobError) as info:
        check_read_only("  -- nothing\n", "generic")
    assert info.value.code == "WRITE_OPERATION_REJECTED" or info.value.code == "QUERY_FAILED"


def test_named_parameters_translate_per_driver_and_skip_literals() -> None:
    sql = "SELECT ':nope', x::text, '50%' FROM t WHERE a = :a AND b LIKE :b -- :c"
    text, values = translate_params(sql, {"a": 1, "b": "x%", "extra": 3}, style="pyformat", dialect="postgres")
    assert text == "SELECT ':nope', x::text, '50%%' FROM t WHERE a = %(a)s AND b LIKE %(b)s -- :c"
    assert values == {"a": 1, "b": "x%"}
    text, _ = translate_params("SELECT :a", {"a": 1}, style="named", dialect="sqlite")
    assert text == "SELECT :a"


def test_missing_parameter_names_it() -> None:
    with pytest.raises(JobError) as info:
        translate_params("SELECT :missing", {}, style="pyformat", dialect="mysql")
    assert info.value.code == "QUERY_FAILED" and ":missing" in info.value.message


@pytest.mark.parametrize("dialect", ["mysql", "sqlite", "mssql", "generic", "postgres"])
@pytest.mark.parametrize("sql", ["SELEC * FROM t", "SLECT 1", "'x'", "42", "foo bar"])
def test_text_that_is_not_a_statement_is_a_query_error_not_a_write(sql: str, dialect: str) -> None:
    """A typo is QUERY_FAILED with a sentence saying it is not a statement (or, on
    PostgreSQL, the parser's own words), never WRITE_OPERATION_REJECTED."""
    with pytest.raises(JobError) as info:
        check_read_only(sql, dialect)
    assert info.value.code == "QUERY_FAILED", info.value.message
    assert "syntax" in info.value.message.lower(), info.value.message


@pytest.mark.parametrize("sql", ["DELETE FROM t", "update t set a = 1", "SET x = 1", "DO 1", "VACUUM"])
def test_a_command_other_than_a_read_is_still_a_write(sql: str) -> None:
    with pytest.raises(JobError) as info:
        check_read_only(sql, "generic")
    assert info.value.code == "WRITE_OPERATION_REJECTED", info.value.message
