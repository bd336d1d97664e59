"""Differential test: the PostgreSQL guard's view of a text (how many statements, which
functions it calls, which tables it reads) agrees with what the real server does with it.

hypothesis writes harmless SELECTs mixing every lexical trap: standard strings (``''``
doubling, a ``\\`` that escapes nothing), ``E''`` strings with backslash escapes, ``U&''``
strings and ``U&""`` names with ``\\XXXX``/``\\+XXXXXX`` escapes and ``UESCAPE``, dollar
quotes with tags (and other tags, ``;`` and quotes inside), nested ``/* */`` and ``--``
comments, quoted names with ``""``, aliases glued from letters, digits, ``$`` and
characters outside the Basic Multilingual Plane or non-ASCII spaces (``a😀$x$``), and
sometimes non-ASCII spaces where a naive reader expects white space. Statements are
joined by ``;`` (with empty statements, comments and white space between).

The server is the oracle, through what it records while running the text:

- statements: the text runs over the *simple* protocol (psycopg's plain cursor without
  parameters), which executes every statement in it; each generated statement is a
  SELECT, so the number of result sets is the number of statements the server ran;
- functions: every generated call names one of a few PL/pgSQL functions made in a test
  schema (plain, mixed-case, non-ASCII, with ``$`` or a space in the name; PL/pgSQL, so
  never inlined), and the session runs with ``track_functions = 'all'``: the functions the
  server really called are the rows of ``pg_stat_xact_user_functions`` whose calls grew;
- tables: every generated table reference is ``(SELECT count(*) FROM <t>)`` on a table
  of the test schema without indexes, so the tables the server read are the rows of
  ``pg_stat_xact_user_tables`` whose ``seq_scan`` grew (these views may still hold
  counts of earlier transactions, so the test compares them before and after).

All of it runs in a ``READ ONLY`` transaction that is rolled back. Agreement means: the
guard parses the text exactly when the server does not raise a syntax error; and when
both accept it, the counts and the name sets are equal (names compared in lower case,
as the guard's deny list does; the test's names are unique in lower case). When the
server refuses a text the guard parsed for another reason than syntax (a name that only
exists because a non-ASCII space was glued to it), the guard must have parsed it too.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.sources import pgguard
from tests.conftest import DEFAULT_PG_URL, _service_url

pytestmark = pytest.mark.postgres

FUNCTIONS = ["mcf_a", "mcf_é", "mcf_\U0001f600x", "Mcf_Q", "mcf $sp", "mcf_a$b"]
TABLES = ["mct_a", "Mct_B", "mct_\U0001f600", "mct a"]
NBSP_LIKE = ["\u00a0", "\u2028", "\u3000", "\u2003", "\ufeff"]
ODD = ["\U0001f600", "\U00010348", "é", "漢", *NBSP_LIKE]

_plain_char = st.sampled_from(list("abcXYZ09 ;,()*/-$:'\"\\\n\t%") + ODD)
_tag = st.one_of(st.just(""), st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,3}", fullmatch=True))


@st.composite
def string_literal(draw: st.DrawFn) -> str:
    chars = draw(st.lists(_plain_char, max_size=8))
    return "'" + "".join(chars).replace("'", "''") + "'"


@st.composite
def e_string(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.one_of(
        st.sampled_from(["\\\\", "\\'", "''", "\\n", "\\t", "\\x41", "\\u00e9", "\\U0001F600", "\\;"]),
        _plain_char.filter(lambda c: c not in "\\'")), max_size=8))  # fmt: skip
    return draw(st.sampled_from(["E'", "e'"])) + "".join(parts) + "'"


@st.composite
def dollar_string(draw: st.DrawFn) -> str:
    tag = draw(_tag)
    body = "".join(draw(st.lists(st.one_of(_plain_char, st.sampled_from(["$x$", "$$", "$a$", "';"])), max_size=8)))
    delim = f"${tag}$"
    if delim in body or (body + delim).find(delim) != len(body):
        body = body.replace("$", "")
    return delim + body + delim


def _u_escape(draw: st.DrawFn, text: str, esc: str) -> str:
    out = []
    for ch in text:
        how = draw(st.integers(0, 2))
        if ch == esc:
            out.append(esc + esc)
        elif how == 1 and ord(ch) <= 0xFFFF:
            out.append(f"{esc}{ord(ch):04X}")
        elif how == 2:
            out.append(f"{esc}+{ord(ch):06X}")
        else:
            out.append(ch)
    return "".join(out)


@st.composite
def u_string(draw: st.DrawFn) -> str:
    text = "".join(draw(st.lists(_plain_char.filter(lambda c: c not in "\\!"), max_size=6)))
    if draw(st.booleans()):
        return "U&'" + _u_escape(draw, text, "\\").replace("'", "''") + "'"
    return "U&'" + _u_escape(draw, text, "!").replace("'", "''") + "' UESCAPE '!'"


@st.composite
def comment(draw: st.DrawFn) -> str:
    body = "".join(draw(st.lists(_plain_char.filter(lambda c: c not in "\n\r/*"), max_size=6)))
    kind = draw(st.integers(0, 2))
    if kind == 0:
        return f"--{body}\n"
    if kind == 1:
        return f"/*{body}*/"
    return f"/* {body} /* {body[::-1]} */ ; */"


@st.composite
def gap(draw: st.DrawFn) -> str:
    """White space as the server knows it, or a comment; sometimes a non-ASCII 'space'."""
    if draw(st.integers(0, 30)) == 30:  # rare (hypothesis favours small integers)
        return draw(st.sampled_from(NBSP_LIKE))
    parts = draw(st.lists(st.one_of(st.sampled_from([" ", "\n", "\t", "\r\n", "\f"]), comment()), min_size=1, max_size=2))
    joined = "".join(parts)
    return joined if not joined.startswith("--") else " " + joined


@st.composite
def name_spelling(draw: st.DrawFn, name: str) -> str:
    kind = draw(st.integers(0, 2))
    simple = all(c.isalnum() or c in "_$" or ord(c) > 127 for c in name) and not name[0].isdigit()
    if kind == 0 and simple and name == name.lower():
        return "".join(c.upper() if c.isascii() and draw(st.booleans()) else c for c in name)
    if kind == 1:
        return '"' + name.replace('"', '""') + '"'
    if draw(st.booleans()):
        return 'U&"' + _u_escape(draw, name, "\\") + '"'
    return 'U&"' + _u_escape(draw, name, "!") + "\" UESCAPE '!'"


def qualified(draw: st.DrawFn, schema: str, name: str) -> str:
    spelled = draw(name_spelling(name))
    if draw(st.booleans()):
        return draw(name_spelling(schema)) + draw(st.sampled_from([".", " . ", "/**/./**/"])) + spelled
    return spelled


@st.composite
def alias(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        return '"' + "".join(draw(st.lists(_plain_char, min_size=1, max_size=5))).replace('"', '""') + '"'
    tail = draw(st.lists(st.sampled_from(list("abz09_$") + ODD), max_size=5))
    glued = draw(st.sampled_from(["", "$x$", "$$", "$q$"]))
    return "a" + "".join(tail) + glued


def expression(schema: str) -> st.SearchStrategy[str]:
    text_leaf = st.one_of(string_literal(), e_string(), dollar_string(), u_string())

    @st.composite
    def call(draw: st.DrawFn, inner: st.SearchStrategy[str]) -> str:
        fn = draw(st.sampled_from(FUNCTIONS))
        return qualified(draw, schema, fn) + draw(st.sampled_from(["", " ", "/*(*/"])) + "(" + draw(inner) + ")"

    @st.composite
    def table(draw: st.DrawFn) -> str:
        t = draw(st.sampled_from(TABLES))
        return f"(SELECT count(*) FROM{draw(gap())}{qualified(draw, schema, t)})"

    text_expr = st.recursive(text_leaf, lambda inner: call(inner), max_leaves=3)
    return st.one_of(text_expr, table(), st.just("(1)"))


@st.composite
def statement(draw: st.DrawFn, schema: str) -> str:
    items = []
    for _ in range(draw(st.integers(1, 3))):
        item = draw(expression(schema))
        if draw(st.booleans()):
            item += draw(gap()) + "AS" + draw(gap()) + draw(alias())
        items.append(item)
    sep = draw(gap()) + "," + draw(gap())
    return "SELECT" + draw(gap()) + sep.join(items)


@st.composite
def script(draw: st.DrawFn, schema: str) -> str:
    stmts = draw(st.lists(statement(schema), min_size=1, max_size=3))
    out = draw(st.sampled_from(["", ";", " ;; ", "/* lead */ "]))
    for i, s in enumerate(stmts):
        out += s
        if i < len(stmts) - 1 or draw(st.booleans()):
            out += draw(gap()) + draw(st.sampled_from([";", "; ;", ";\n"])) + draw(gap())
    return out


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[psycopg.Connection[Any], str]]:
    url = _service_url("PostgreSQL", "MC_TEST_POSTGRES_URL", DEFAULT_PG_URL)
    schema = "mc_diff_" + uuid.uuid4().hex[:10]
    admin = psycopg.connect(url.replace("postgresql+psycopg2://", "postgresql://"), autocommit=True)
    admin.execute(f'CREATE SCHEMA "{schema}"')
    for fn in FUNCTIONS:
        q = '"' + fn.replace('"', '""') + '"'
        admin.execute(f'CREATE FUNCTION "{schema}".{q}(x text) RETURNS text LANGUAGE plpgsql VOLATILE '
                      "AS $f$BEGIN RETURN x; END$f$")  # fmt: skip
    for t in TABLES:
        q = '"' + t.replace('"', '""') + '"'
        admin.execute(f'CREATE TABLE "{schema}".{q} (a int)')
        admin.execute(f'INSERT INTO "{schema}".{q} VALUES (1)')
    conn = psycopg.connect(url.replace("postgresql+psycopg2://", "postgresql://"))
    try:
        yield conn, schema
    finally:
        conn.close()
        admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        admin.close()


_FUNC_STATS = "SELECT funcname, calls FROM pg_stat_xact_user_functions WHERE schemaname = %s"
_TABLE_STATS = "SELECT relname, seq_scan FROM pg_stat_xact_user_tables WHERE schemaname = %s"


def _stats(cur: psycopg.Cursor[Any], sql: str, schema: str) -> dict[str, int]:
    cur.execute(sql, (schema,))
    return {str(r[0]).lower(): int(r[1] or 0) for r in cur.fetchall()}


def _grown(before: dict[str, int], after: dict[str, int]) -> set[str]:
    return {k for k, v in after.items() if v > before.get(k, 0)}


def run_on_server(conn: psycopg.Connection[Any], schema: str, text: str) -> tuple[int, set[str], set[str]]:
    """(result sets, functions called, tables scanned) as the server reports them. The
    xact stats views may still hold counts of earlier transactions not yet flushed
    (PostgreSQL 15+), so what counts is what grew while the text ran."""
    cur = conn.cursor()
    try:
        cur.execute("BEGIN READ ONLY")
        cur.execute("SET LOCAL track_functions = 'all'")
        cur.execute(f"SET LOCAL search_path = \"{schema}\", pg_catalog")
        funcs0, tables0 = _stats(cur, _FUNC_STATS, schema), _stats(cur, _TABLE_STATS, schema)
        cur.execute(text)  # no parameters: the simple protocol, every statement runs
        results = 1
        while cur.nextset():
            results += 1
        funcs = _grown(funcs0, _stats(cur, _FUNC_STATS, schema))
        tables = _grown(tables0, _stats(cur, _TABLE_STATS, schema))
        return results, funcs, tables
    finally:
        conn.rollback()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_the_guard_sees_what_the_server_runs(server: tuple[psycopg.Connection[Any], str], data: st.DataObject) -> None:
    conn, schema = server
    text = data.draw(script(schema))
    try:
        parsed: pgguard.Parsed | None = pgguard.parse(text)
    except pgguard.PgParseError:
        parsed = None
    try:
        results, funcs, tables = run_on_server(conn, schema, text)
    except psycopg.errors.SyntaxError:
        assert parsed is None, f"the server refused a text the guard parsed: {text!r}"
        return
    except psycopg.Error:
        # Past the parser: a name that does not exist (a non-ASCII "space" glued to a name
        # makes another name, or a type). The server could read the text; so must the guard.
        assert parsed is not None, f"the guard refused a text the server parsed: {text!r}"
        return
    assert parsed is not None, f"the guard refused a text the server ran: {text!r}"
    assert len(parsed.statements) == results, text
    guard_funcs = {f[-1] for f in parsed.functions} - {"count"}
    assert guard_funcs == funcs, text
    assert {r[1].lower() for r in parsed.relations} == tables, text


def test_the_issues_text_is_four_statements_for_both(server: tuple[psycopg.Connection[Any], str]) -> None:
    conn, schema = server
    text = "SELECT 1 AS a\U0001f600$x$; SELECT mcf_a('x'); SELECT 2; SELECT 1 AS b\U0001f600$x$"
    results, funcs, _ = run_on_server(conn, schema, text)
    parsed = pgguard.parse(text)
    assert results == len(parsed.statements) == 4
    assert funcs == {f[-1] for f in parsed.functions} == {"mcf_a"}
