"""The MariaDB/MySQL guard reads text as the server's lexer does (issue 13, classes 2 and 3).

Unit checks of ``mysqllex`` rules, the same rules confirmed against the real MariaDB (the
server's column count for ``SELECT 1 --<c>x\\n, 2`` says whether ``--<c>`` opened a comment),
and the issue's attacks, run as real jobs with the root account: refused, and no file.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest

from agent.sources.mysqllex import tokenize_mysql
from agent.sources.readonly import check_read_only
from agent.sources.sql import SqlSource
from agent.sources.sqltext import COMMENT, NUMBER, WORD, code_tokens
from shared.errors import JobError

# Every character that could follow "--": ASCII, C1 controls, Unicode spaces, and beyond.
DASH_FOLLOWERS = [chr(c) for c in range(1, 0x80)] + [
    "\x85", "\xa0", "\u1680", "\u2000", "\u2028", "\u2029", "\u202f", "\u3000", "\ufeff", "\U0001f600",
]  # fmt: skip


def _connect(url: str) -> pymysql.connections.Connection:
    from sqlalchemy.engine import make_url

    u = make_url(url)
    return pymysql.connect(
        host=u.host or "127.0.0.1", port=u.port or 3306, user=u.username or "root",
        password=u.password or "", database=u.database, charset="utf8mb4", autocommit=True,
    )  # fmt: skip


@pytest.fixture
def server(mysql_url: str) -> Iterator[Any]:
    conn = _connect(mysql_url)
    try:
        yield conn
    finally:
        conn.close()


def _columns(conn: Any, sql: str) -> int | None:
    """The number of result columns, or None when the server refuses the text."""
    with conn.cursor() as cur:
        try:
            cur.execute(sql)
        except pymysql.MySQLError:
            return None
        cur.fetchall()
        return len(cur.description or ())


def _guard_columns(sql: str) -> int | None:
    try:
        tokens = code_tokens(tokenize_mysql(sql))
    except JobError:
        return None
    return 1 + sum(1 for t in tokens if t.text == ",")


@pytest.mark.parametrize("follower", DASH_FOLLOWERS, ids=lambda c: f"U+{ord(c):04X}")
def test_dash_dash_comment_rule(follower: str) -> None:
    try:
        tokens = tokenize_mysql(f"SELECT 1 --{follower}x\n, 2")
    except JobError:
        tokens = []  # a quote or backtick opened by the follower, unterminated
    commented = any(t.kind == COMMENT and t.pos == len("SELECT 1 ") for t in tokens)
    assert commented == (ord(follower) <= 0x20 or ord(follower) == 0x7F)


def test_dash_dash_rule_agrees_with_the_server(server: Any) -> None:
    differ = []
    for follower in DASH_FOLLOWERS:
        sql = f"SELECT 1 --{follower}x\n, 2"
        ours = _guard_columns(sql)
        theirs = _columns(server, sql)
        # The server may refuse text we read as valid (an unknown column "x"): that is safe.
        # It must never run a shape we did not see.
        if theirs is not None and ours != theirs:
            differ.append((f"U+{ord(follower):04X}", ours, theirs))
    assert differ == []


@pytest.mark.parametrize("space", ["\xa0", "\u2028", "\u3000", "\x1c", "\x85", "\ufeff"])
def test_unicode_spaces_are_identifier_characters(server: Any, space: str) -> None:
    # The server reads "a<space>b" as one name; so must we (no keyword can hide after it).
    assert [t.kind for t in code_tokens(tokenize_mysql(f"a{space}b"))] in ([WORD], [WORD, "punct", WORD])
    if ord(space) >= 0x80:
        assert [t.text for t in code_tokens(tokenize_mysql(f"a{space}b"))] == [f"a{space}b"]
        assert _columns(server, f"SELECT 1 AS a{space}b") == 1


@pytest.mark.parametrize(
    ("text", "kinds"),
    [
        ("1e5", [NUMBER]), ("1e+5x", [NUMBER, WORD]), ("1ea", [WORD]), ("1e", [WORD]), ("1x", [WORD]),
        ("0x1F", [NUMBER]), ("0x1g", [WORD]), ("0X1F", [WORD]), ("0b101", [NUMBER]), ("0b12", [WORD]),
        ("1.5e3", [NUMBER]), (".5", [NUMBER]), ("$a", [WORD]), ("a$b", [WORD]), ("\u00e9t\u00e9", [WORD]),
        ("t.1e1", [WORD, "punct", WORD]), ("`t`.1e1", ["ident", NUMBER]),
    ],
)  # fmt: skip
def test_numbers_and_names(text: str, kinds: list[str]) -> None:
    assert [t.kind for t in code_tokens(tokenize_mysql(text))] == kinds


def test_numbers_and_names_agree_with_the_server(server: Any) -> None:
    # A digit-led name is a column alias to the server exactly when it is a WORD to us.
    for text in ("1e5", "1ea", "1x", "0x1F", "0x1g", "0b101", "0b12", "1.5e3", "1e+5x"):
        tokens = code_tokens(tokenize_mysql(f"SELECT {text}"))
        ours = 1 if len(tokens) == 2 else 2  # a number, or "number alias"
        with server.cursor() as cur:
            try:
                cur.execute(f"SELECT {text}")
                theirs: int | None = len(cur.description) if tokens[1].kind == NUMBER else None
            except pymysql.MySQLError:
                theirs = None  # an unknown column: the server read a name
        if tokens[1].kind == WORD:
            assert theirs is None, text
        else:
            assert theirs == 1 and ours in (1, 2), text


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1 /*! INTO OUTFILE '/tmp/x' */",
        "SELECT 1 /*!50000 INTO OUTFILE '/tmp/x' */",
        "SELECT 1 /*M! INTO OUTFILE '/tmp/x' */",
        "SELECT 1 /*M!100000 INTO OUTFILE '/tmp/x' */",
        "SELECT /*+ SET_VAR(sql_mode='ANSI_QUOTES') */ 1",
        "SELECT 'abc",
        "SELECT 'a\\'",
        "SELECT `abc",
        "SELECT 1 /* open",
        "SELECT X'0g'",
        "SELECT B'012'",
        "SELECT 1\x00",
        "SELECT 1 # c \x00 INTO OUTFILE '/tmp/x'",
        "SELECT '\ud800'",
        "SELECT @a\u00e9 INTO",
    ],
)
def test_unreadable_or_hidden_text_is_refused(sql: str) -> None:
    with pytest.raises(JobError) as err:
        check_read_only(sql, "mysql")
    assert err.value.code == "WRITE_OPERATION_REJECTED"


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1 -- x\n",
        "SELECT 1 #x",
        "SELECT 'it''s', \"a\\\"b\", `we``ird`",
        "SELECT _utf8mb4'x', N'y', X'0A', B'1', 0x0A, 0b1",
        "SELECT 1 /* INTO OUTFILE */",
        "SELECT CAST(1 AS CHAR CHARACTER SET utf8mb4)",
        "SELECT INSERT('abc', 1, 1, 'x')",
        "SELECT IS_USED_LOCK('x'), IS_FREE_LOCK('x'), SLEEP(0)",
        "SELECT t.1e1INTO FROM t",
        "SELECT `into` FROM (SELECT 1 AS `into`) t",
        "SELECT 1--1",
        "SELECT @@version, @x",
    ],
)
def test_honest_reads_pass(sql: str) -> None:
    check_read_only(sql, "mysql")


# ----------------------------------------------------------- the issue's attacks, as jobs


@pytest.fixture
def root_source(mysql_url: str) -> Iterator[SqlSource]:
    src = SqlSource("mc_guard", "mysql", mysql_url)
    try:
        yield src
    finally:
        src.close()


def _attacks(path: str) -> list[str]:
    nb = "\xa0"
    return [
        f"SELECT 1 --{nb} INTO OUTFILE '{path}' FROM (SELECT 2 AS `{nb}`) q",
        f"SELECT 1 --{nb}\nINTO OUTFILE '{path}'",
        f"SELECT 1 --\u2028 INTO DUMPFILE '{path}' FROM (SELECT 2 AS `\u2028`) q",
        "SELECT `LOAD_FILE`('/etc/passwd')",
        "SELECT `load_file` ('/etc/passwd')",
        "SELECT LOAD_FILE/**/('/etc/passwd')",
        "SELECT test.`LOAD_FILE`('/etc/passwd')",
        "SELECT `GET_LOCK`('mc_guard_lock', 1)",
        "SELECT GET_LOCK\n('mc_guard_lock', 1)",
        "SELECT `RELEASE_ALL_LOCKS`()",
    ]


def test_the_issue_attacks_fail_safely_as_root(root_source: SqlSource, server: Any) -> None:
    path = f"/tmp/mc_guard_{uuid.uuid4().hex}"
    for sql in _attacks(path):
        with pytest.raises(JobError) as err:
            _, batches = root_source.query({"sql": sql}, timeout=5)
            list(batches)
        assert err.value.code == "WRITE_OPERATION_REJECTED", sql
    assert not os.path.exists(path)
    assert _columns(server, f"SELECT LOAD_FILE('{path}')") == 1
    with server.cursor() as cur:
        cur.execute("SELECT LOAD_FILE(%s), IS_USED_LOCK('mc_guard_lock')", (path,))
        assert cur.fetchone() == (None, None)
