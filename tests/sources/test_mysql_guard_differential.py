"""Differential test: the guard's MariaDB lexer against the real MariaDB parser (issue 13).

Hypothesis writes ``SELECT <list>`` texts from pieces chosen to part lexers: every quote
(``'`` ``"`` `````), backslashes and doubled quotes, ``--`` followed by every kind of
character (ASCII space and controls, U+00A0, U+2028, U+3000...), ``#``, ``/* */``,
``/*!``/``/*M!``, charset introducers, hex and bit literals, digit-led names, characters
outside the BMP, non-ASCII spaces, commas and semicolons, inside and between the items.

The oracle. For a text the guard can read, its tokens give a meaning that the server's
answer can confirm or refute:

- *statement count*: the server gets the text through ``PREPARE s FROM @text``, which
  parses it without running it and refuses more than one statement. If the guard saw a
  second statement (code after a ``;``) but the server prepared the text, they disagree.
- *select-list length*: when both accept the text, ``EXECUTE s`` runs it (only literals
  survive PREPARE: any name that is not an alias is an unknown column) and the number of
  result columns must equal 1 + the commas the guard found outside parentheses. A comma
  hidden in (or freed from) a string, a comment or a quoted name changes that number.
- *function calls*: ``UUID_SHORT()`` stands in for a dangerous function (it is harmless,
  and it moves a server-wide counter, so the calls the server ran are countable: read the
  counter before and after ``EXECUTE``). The generator writes it bare, `` `quoted` ``,
  with spaces, newlines or comments before the ``(``, inside strings and comments. The
  server must never run more calls than the guard's ``function_calls`` found.
- *readability*: a text the server prepares must not be one the guard calls unterminated
  (that direction means the guard's literal or comment ended elsewhere). The guard's
  deliberate refusals (``/*!``, ``/*M!``, ``/*+``) are not compared.

A server error where the guard saw a valid statement is safe (the job fails) and is not a
disagreement. Runs in well under a minute (a few hundred examples, three round trips each).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pymysql
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agent.sources.mysqllex import tokenize_mysql
from agent.sources.readonly import function_calls
from agent.sources.sqltext import PUNCT, SEMI, SqlTextError, code_tokens

from .test_mysql_guard import _connect

DASH_FOLLOWERS = [" ", "\t", "\n", "\r", "\x01", "\x0b", "\x1f", "\x7f", "\xa0", "\u2028", "\u3000",
                  "\x85", "\ufeff", "x", "-", "'", "\U0001f600"]  # fmt: skip
CHARS = st.sampled_from(
    [*"aZ0 ,;'\"`\\#-*/!()\n\r\t%$._", "\xa0", "\u2028", "\u3000", "é", "\U0001f600", "\U00010348", "M!"]
)
NOISE = st.sampled_from(
    ["--" + f for f in DASH_FOLLOWERS] + ["#", "/*", "*/", "/*!", "/*M!", "/*!50000", "'", '"', "`", "\\", "\\'",
     "''", '""', "``", "\n", " ", "\xa0", "\u3000", ",", "1", "1e", "e1", ".", "0x", "a", "é", "\U0001f600",
     "_utf8mb4", "N", "X", "B", "$", "(", ")", "-", ";"]
)  # fmt: skip


def _quoted(quote: str) -> st.SearchStrategy[str]:
    body = st.lists(st.one_of(CHARS, st.just(quote * 2), st.just("\\" + quote)), max_size=6).map("".join)
    return body.map(lambda b: quote + b + quote)


CALL = st.tuples(
    st.sampled_from(["UUID_SHORT", "uuid_short", "`UUID_SHORT`", "`uuid_short`", "test.uuid_short"]),
    st.sampled_from(["", " ", "\n", "\t", "/* ( */", "-- c\n", "#\n", "\xa0"]),
).map(lambda t: f"{t[0]}{t[1]}()")
LITERAL = st.one_of(
    CALL, CALL.map(lambda c: f"'{c}'"), CALL.map(lambda c: f"/* {c} */ 1"), CALL.map(lambda c: f"--\xa0{c}"),
    st.integers(0, 99).map(str), st.sampled_from(["1.5", ".5", "1e3", "1.5e-3", "0x41", "0b1", "X'0A'", "b'1'"]),
    _quoted("'"), _quoted('"'), _quoted("'").map(lambda s: "_utf8mb4" + s), _quoted("'").map(lambda s: "N" + s),
)  # fmt: skip
ALIAS = st.one_of(
    st.just(""),
    _quoted("`").map(lambda s: " AS " + s),
    _quoted("'").map(lambda s: " AS " + s),
    st.sampled_from(["a", "é", "a\xa0b", "x\u2028", "$x", "1a", "\U0001f600"]).map(lambda s: " AS " + s),
)
COMMENT = st.one_of(
    st.tuples(st.sampled_from(DASH_FOLLOWERS), st.lists(CHARS, max_size=5).map("".join)).map(
        lambda t: "--" + t[0] + t[1] + "\n"
    ),
    st.lists(CHARS, max_size=5).map(lambda c: "#" + "".join(c) + "\n"),
    st.lists(CHARS, max_size=5).map(lambda c: "/*" + "".join(c) + "*/"),
)
GAP = st.lists(st.one_of(st.sampled_from([" ", "\n", "\t", "\xa0"]), COMMENT, NOISE), max_size=3).map("".join)
ITEM = st.tuples(LITERAL, ALIAS, GAP).map("".join)
TEXT = st.tuples(st.lists(ITEM, min_size=1, max_size=4), GAP).map(lambda t: "SELECT " + ",".join(t[0]) + t[1])


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest) -> Iterator[Any]:
    url = request.getfixturevalue("mysql_url")
    conn = _connect(url)
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture(scope="module")
def mysql_url() -> str:  # module scope: one connection for every example
    from tests.conftest import DEFAULT_MYSQL_URL, _service_url

    return _service_url("MariaDB/MySQL", "MC_TEST_MYSQL_URL", DEFAULT_MYSQL_URL)


def guard_calls(sql: str) -> int:
    """How many UUID_SHORT calls the guard sees (a text it cannot read: none)."""
    try:
        return function_calls(code_tokens(tokenize_mysql(sql))).count("UUID_SHORT")
    except SqlTextError:
        return 0


def guard_view(sql: str) -> tuple[str, int]:
    """("refused", 0) | ("unreadable", 0) | ("many", 0) | ("one", select-list length)."""
    try:
        tokens = code_tokens(tokenize_mysql(sql))
    except SqlTextError as exc:
        return ("refused" if exc.code == "WRITE_OPERATION_REJECTED" else "unreadable"), 0
    semis = [i for i, t in enumerate(tokens) if t.kind == SEMI]
    if semis and any(t.kind != SEMI for t in tokens[semis[0]:]):
        return "many", 0
    depth, commas = 0, 0
    for t in tokens[: semis[0] if semis else None]:
        if t.kind == PUNCT and t.text == "(":
            depth += 1
        elif t.kind == PUNCT and t.text == ")":
            depth -= 1
        elif t.kind == PUNCT and t.text == "," and depth == 0:
            commas += 1
    return "one", commas + 1


def server_view(conn: Any, sql: str, calls: list[int] | None = None) -> int | None:
    """The select-list length the server runs, or None when it refuses the text; the
    UUID_SHORT() calls it ran are appended to ``calls``."""
    with conn.cursor() as cur:
        cur.execute("SET @mc_text = %s", (sql,))
        try:
            cur.execute("PREPARE mc_s FROM @mc_text")
        except pymysql.MySQLError:
            return None
        cur.execute("SELECT UUID_SHORT()")
        before = cur.fetchone()[0]
        try:
            cur.execute("EXECUTE mc_s")
            cur.fetchall()
            return len(cur.description or ())
        except pymysql.MySQLError:
            return None
        finally:
            cur.execute("SELECT UUID_SHORT()")
            if calls is not None:
                calls.append(cur.fetchone()[0] - before - 1)
            cur.execute("DEALLOCATE PREPARE mc_s")


def _compare(conn: Any, sql: str) -> None:
    ours, columns = guard_view(sql)
    if ours == "refused":
        return  # by design (executable comments, optimizer hints)
    ran: list[int] = []
    theirs = server_view(conn, sql, ran)
    if ran and ours != "unreadable":
        assert ran[0] <= guard_calls(sql), f"the server ran {ran[0]} calls the guard did not see: {sql!r}"
    if theirs is None:
        return  # the server refuses: the job would fail, which is safe
    assert ours != "unreadable", f"the server ran a text the guard calls unterminated: {sql!r}"
    assert ours != "many", f"the server ran as one statement a text the guard splits: {sql!r}"
    assert columns == theirs, f"the guard sees {columns} select items, the server {theirs}: {sql!r}"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])  # fmt: skip
@given(TEXT)
@example("SELECT 1 --\xa0 , 2 FROM (SELECT 3 AS `\xa0`) q")
@example("SELECT 1 --\xa0x\n, 2")
@example("SELECT 1 -- x\n, 2")
@example("SELECT 'a\\', 2' , 3")
@example('SELECT "a\\", 2" , 3')
@example("SELECT `a``, b` , 3 FROM (SELECT 1 AS `a``, b`) q")
@example("SELECT _utf8mb4'x,y', N'z', X'2C'")
@example("SELECT 1 /* , */, 2 # ,\n, 3")
@example("SELECT 1e1, 1ea")
@example("SELECT 1 AS a\u3000b, 2")
@example("SELECT '\U0001f600,', 2")
@example("SELECT 1;")
@example("SELECT `uuid_short` /* ( */ (), 'uuid_short()', 1 -- uuid_short()\n")
@example("SELECT 1 --\xa0uuid_short()")
@example("SELECT 1 #x\r, 2\n, 3")
def test_guard_and_server_agree(server: Any, sql: str) -> None:
    _compare(server, sql)


def test_the_oracle_can_see_a_disagreement(server: Any) -> None:
    # The shape: a lexer that takes "--<U+00A0>" as a comment (the old guard) sees
    # one select item; the server runs two. The comparison must notice such a lexer.
    sql = "SELECT 1 --\xa0 , 2 FROM (SELECT 3 AS `\xa0`) q"
    assert server_view(server, sql) == 2
    assert guard_view(sql) == ("one", 2)
    old_reading = sql.split("--", 1)[0] + "FROM (SELECT 3 AS x) q"
    assert guard_view(old_reading) == ("one", 1)  # what the old guard saw: a disagreement
    assert server_view(server, "SELECT 1; SELECT 2") is None
    assert server_view(server, "SELECT 'a,b', `c,d` FROM (SELECT 1 AS `c,d`) q") == 2
