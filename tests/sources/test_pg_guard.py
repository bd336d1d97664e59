"""The PostgreSQL statement guard (agent/sources/pgguard.py) on PostgreSQL's own parser.

No database here: what the guard *reads* is checked against the server in
test_pg_guard_differential.py, and what a job *does* in test_pg_hostile_corpus.py.
"""

from __future__ import annotations

import pytest

from agent.sources import pgguard
from agent.sources.readonly import check_read_only
from shared.errors import JobError

SMILE = "\U0001f600"

# The issue's examples, each refused for the reason it stands for.
ISSUE = [
    (f"SELECT 1 AS a{SMILE}$x$; COMMIT; DELETE FROM t; SELECT 1 AS b{SMILE}$x$", "only one statement"),
    (f"SELECT 1 AS a{SMILE}$x$; COPY (SELECT 1) TO PROGRAM 'touch /tmp/x'; SELECT 1 AS b{SMILE}$x$", "only one statement"),
    ("COPY (SELECT 1) TO PROGRAM 'touch /tmp/x'", "this one is COPY"),
    ("SELECT \"pg_read_file\"('/etc/passwd')", "pg_read_file()"),
    ("SELECT pg_catalog.\"pg_ls_dir\"('/tmp')", "pg_ls_dir()"),
    ("SELECT \"pg_terminate_backend\"(pid) FROM pg_stat_activity", "pg_terminate_backend()"),
    ("SELECT \"pg_advisory_lock\"(42)", "pg_advisory_lock()"),
    ("SELECT query_to_xml_and_xmlschema('select pg_read_file(''/etc/passwd'')', true, true, '')",
     "query_to_xml_and_xmlschema()"),
]  # fmt: skip

SPELLINGS = [
    "SELECT PG_READ_FILE('/etc/passwd')",
    "SELECT \"PG_READ_FILE\"('/etc/passwd')",
    "SELECT U&\"pg_read_fil\\0065\"('/etc/passwd')",
    "SELECT U&\"!0070g_read_file\" UESCAPE '!'('/etc/passwd')",
    "SELECT pg_catalog . /* x */ pg_read_file ('/etc/passwd')",
    "SELECT * FROM pg_catalog.pg_read_file('/etc/passwd')",
    "SELECT (SELECT x FROM pg_read_file('/etc/passwd') x)",
    "SELECT 1 WHERE EXISTS (SELECT pg_read_file('/etc/passwd'))",
    "WITH a AS (SELECT pg_read_file('/etc/passwd')) SELECT * FROM a",
    "SELECT lo_import('/etc/passwd')",
    "SELECT lo_export(1, '/tmp/x')",
    "SELECT dblink_exec('dbname=test', 'DELETE FROM t')",
    "SELECT set_config('default_transaction_read_only', 'off', false)",
    "SELECT nextval('s')",
    "SELECT pg_notify('c', 'x')",
    "SELECT ts_stat('SELECT v FROM secret')",
    "SELECT table_to_xml('secret', true, true, '')",
    "SELECT pg_try_advisory_lock(1)",
    "SELECT pg_reload_conf()",
    "SELECT * FROM pg_ls_waldir()",
    "SELECT * FROM pg_file_settings",
    "SELECT ('/etc/passwd'::text).pg_read_file", "SELECT (x).\"pg_read_file\" FROM t",
    "SELECT t.x.pg_read_file FROM t", "SELECT (s).nextval FROM t", "SELECT ('x'::text).lo_import",
]  # fmt: skip

STATEMENTS = [
    "SET ROLE postgres", "RESET ALL", "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    "COMMIT", "BEGIN", "START TRANSACTION READ WRITE", "DISCARD ALL", "DO $$BEGIN END$$",
    "PREPARE p AS SELECT 1", "EXECUTE p", "LISTEN c", "NOTIFY c", "CALL p()", "LOCK TABLE t",
    "DECLARE c CURSOR FOR SELECT 1", "FETCH c", "VACUUM t", "ANALYZE t", "CHECKPOINT",
    "SELECT 1 INTO t2", "SELECT * FROM t FOR UPDATE", "SELECT * FROM t FOR KEY SHARE",
    "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
    "WITH u AS (UPDATE t SET v = 1 RETURNING *) SELECT 1",
    "WITH i AS (INSERT INTO t VALUES (1) RETURNING *) SELECT 1",
    "EXPLAIN ANALYZE DELETE FROM t", "EXPLAIN (ANALYZE) SELECT 1", "EXPLAIN (analyse true) SELECT 1",
    "EXPLAIN INSERT INTO t VALUES (1)", "CREATE TABLE x (a int)", "TRUNCATE t", "DELETE FROM t",
    "EXPLAIN CREATE TABLE x AS SELECT 1", "EXPLAIN EXECUTE p", "SELECT rolpassword FROM pg_authid",
    "SELECT * FROM pg_catalog.pg_shadow", "SELECT umoptions FROM pg_user_mappings",
]  # fmt: skip

READS = [
    "SELECT 1", "SELECT 1;", "SELECT 1 ; ; ", "  -- lead\nSELECT 1", "(SELECT 1)", "VALUES (1), (2)",
    "TABLE t", "SHOW search_path", "EXPLAIN SELECT * FROM t", "EXPLAIN (VERBOSE, FORMAT JSON) SELECT 1",
    "WITH a AS (SELECT 1) SELECT * FROM a", "SELECT 'pg_read_file(1)'", "SELECT $$DELETE FROM t$$",
    "SELECT 1 AS \"pg_read_file\"", "SELECT update_date, created_by FROM t",
    "SELECT id FROM t WHERE id = :id AND v::text = :v", "SELECT pg_sleep(0)", "SELECT now(), random()",
    "SELECT * FROM t LIMIT 0 -- FOR UPDATE only in a comment",
    "SELECT t.lo_price, t.x, (t).y, s.t.c, (t.j).pg_ok FROM s.t",
]  # fmt: skip


@pytest.mark.parametrize(("sql", "why"), ISSUE)
def test_the_issues_examples_are_refused_for_their_reason(sql: str, why: str) -> None:
    with pytest.raises(JobError) as err:
        check_read_only(sql, "postgres")
    assert err.value.code == "WRITE_OPERATION_REJECTED"
    assert why in err.value.message


@pytest.mark.parametrize("sql", SPELLINGS)
def test_dangerous_functions_are_refused_however_spelled(sql: str) -> None:
    with pytest.raises(JobError) as err:
        check_read_only(sql, "postgres")
    assert err.value.code == "WRITE_OPERATION_REJECTED"


@pytest.mark.parametrize("sql", STATEMENTS)
def test_statements_that_are_not_reads_are_refused(sql: str) -> None:
    with pytest.raises(JobError) as err:
        check_read_only(sql, "postgres")
    assert err.value.code == "WRITE_OPERATION_REJECTED", err.value.message


@pytest.mark.parametrize("sql", READS)
def test_reads_pass(sql: str) -> None:
    check_read_only(sql, "postgres")


def test_an_odbc_source_of_unknown_kind_uses_the_postgres_guard_too() -> None:
    with pytest.raises(JobError) as err:
        check_read_only("SELECT \"pg_read_file\"('/etc/passwd')", "generic")
    assert err.value.code == "WRITE_OPERATION_REJECTED"


@pytest.mark.parametrize(
    ("sql", "words"),
    [("SELECT 1 FROM", "syntax error at end of input"),
     ("SELECT 'x", "unterminated quoted string"),
     ("SELECT 1 /* open", "unterminated /* comment"),
     ("SELECT :", "syntax error")],
)  # fmt: skip
def test_a_parse_error_is_query_failed_with_the_parsers_message(sql: str, words: str) -> None:
    with pytest.raises(JobError) as err:
        check_read_only(sql, "postgres")
    assert err.value.code == "QUERY_FAILED"
    assert words in err.value.message and "PostgreSQL's parser" in err.value.message
    assert "\n" not in err.value.message and "Traceback" not in err.value.message


def test_parameters_are_the_scanners_colon_tokens() -> None:
    sql = "SELECT :a, ':b', x::int, \"c:d\", $$:e$$, /* :f */ 100 % 7, y[1:n] FROM t WHERE z = :a -- :g"
    text, values = pgguard.translate_params(sql, {"a": 1, "n": 2})
    assert values == {"a": 1, "n": 2}
    assert text == ("SELECT %(a)s, ':b', x::int, \"c:d\", $$:e$$, /* :f */ 100 %% 7, y[1%(n)s] "
                    "FROM t WHERE z = %(a)s -- :g")  # fmt: skip
    with pytest.raises(JobError, match=":zz but no value"):
        pgguard.translate_params("SELECT :zz", {})


def test_the_parse_view_lists_functions_and_relations_as_the_server_names_them() -> None:
    parsed = pgguard.parse(
        'SELECT "Upper"(a), pg_catalog.lower(b), U&"\\0061bs"(c) FROM s."T" JOIN u ON true '
        "WHERE x IN (SELECT y FROM v) AND :p = 1"
    )
    assert sorted(parsed.functions) == [("abs",), ("pg_catalog", "lower"), ("upper",)]  # lower-cased
    assert sorted(parsed.relations, key=str) == sorted([("s", "T"), (None, "u"), (None, "v")], key=str)
    assert pgguard.streamable(parsed)
    assert parsed.text.endswith(":p = 1")


# ---------------------------------------------------------------- private tables (privacy.py)

PRIVATE_OPTS = {"private_tables": "secrets", "private_columns": "hr.people.salary"}


@pytest.mark.parametrize(
    "sql",
    [
        f"SELECT 1 AS a{SMILE}$x$, (SELECT v FROM secrets LIMIT 1) AS b{SMILE}$x$",  # the issue's hidden region
        "SELECT * FROM hr.secrets", 'SELECT * FROM "secrets"', "SELECT * FROM U&\"secr\\0065ts\"",
        'SELECT * FROM "SECRETS"', "SELECT (SELECT count(*) FROM secrets)",
        "WITH s AS (SELECT * FROM other.secrets) SELECT 1", "EXPLAIN SELECT * FROM secrets",
        "SELECT 1 FROM t JOIN LATERAL (SELECT * FROM secrets) s ON true",
        "SELECT 1 WHERE EXISTS (SELECT 1 FROM /* */ secrets)",
        "SELECT salary FROM hr.people", "SELECT p.salary FROM hr.people p", 'SELECT "salary" FROM people',
        "SELECT * FROM people", "SELECT p.* FROM people p", "SELECT p FROM people p",
        "SELECT row_to_json(p) FROM people p", "SELECT people FROM people", "TABLE people",
        "SELECT x FROM people AS p(x)", "SELECT 1 FROM people JOIN other USING (salary)",
        "SELECT id FROM people ORDER BY salary", "SELECT (p).id FROM people p",
        "SELECT id FROM (SELECT * FROM people) q",
    ],
)  # fmt: skip
def test_private_names_are_found_in_the_parse_tree(sql: str) -> None:
    from agent.sources.privacy import check_private
    from agent.sources.sqloptions import parse_sql_options

    with pytest.raises(JobError) as err:
        check_private(sql, "postgres", parse_sql_options(PRIVATE_OPTS))
    assert err.value.code == "SCHEMA_ACCESS_DENIED"


@pytest.mark.parametrize(
    "sql",
    ["SELECT 'secrets', $$salary$$ FROM t", "SELECT p.id, name, 'salary' AS word FROM people p",
     "SELECT count(*) FROM people", "SELECT id /* salary */ FROM people -- secrets",
     "SELECT s.id FROM notsecrets s", "SELECT secrets_id FROM t"],
)  # fmt: skip
def test_names_in_literals_comments_and_other_names_are_not_private(sql: str) -> None:
    from agent.sources.privacy import check_private
    from agent.sources.sqloptions import parse_sql_options

    check_private(sql, "postgres", parse_sql_options(PRIVATE_OPTS))


def test_odbc_text_for_postgres_is_cut_on_the_servers_tokens() -> None:
    text, values = pgguard.odbc_text(
        f"SELECT :a AS a{SMILE}$x$, ':b' /* ; :c */, x::int -- ;\n, $$;?$$ FROM t WHERE y = :a ;", {"a": 1}
    )
    assert text == f"SELECT ? AS a{SMILE}$x$, ':b'  , x::int  \n, $$;?$$ FROM t WHERE y = ?"
    assert values == [1, 1]
    with pytest.raises(JobError, match="bare '\\?'"):
        pgguard.odbc_text("SELECT '{}'::jsonb ? 'a'", {})


def test_a_deeply_nested_text_is_refused_or_read_never_a_crash() -> None:
    """pglast converts the tree by C recursion: on a normal stack ``SELECT 1 UNION ...``
    20,000 times killed the process. Run in a child, so a crash would be seen as one."""
    import subprocess
    import sys

    code = (
        "from agent.sources import pgguard\n"
        "from shared.errors import JobError\n"
        "import threading\n"
        "texts = [' UNION '.join(['SELECT 1'] * 20000), 'SELECT ' + '-'.join(['1'] * 60000),\n"
        "         'SELECT 1' + '::int' * 30000, 'SELECT ' + '(' * 20000 + '1' + ')' * 20000]\n"
        "def run():\n"
        "    for t in texts:\n"
        "        try:\n"
        "            pgguard.check_read_only(t)\n"
        "            print('read')\n"
        "        except JobError as e:\n"
        "            print(e.code)\n"
        "w = threading.Thread(target=run); w.start(); w.join()\n"
    )
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False, cwd=root)
    assert out.returncode == 0, out.stderr[-500:]
    assert out.stdout.split() == ["read", "QUERY_FAILED", "read", "QUERY_FAILED"]
