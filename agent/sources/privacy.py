"""Private tables and columns: hidden from discovery, refused in queries.

An admin marks names private on the agent (``--option private_tables=a,b``,
``--option private_columns=t.c``); the relay and the platform never see them. The check is
lexical, on ``sqltext`` tokens (so a name inside a string literal or a comment does not
count, and a quoted identifier does), and errs on the side of refusing:

- a private table named anywhere (any schema, any case, quoted or not) is refused;
- when a table with private columns is named, the query is refused if it names one of
  those columns, selects ``*`` / ``t.*``, uses the table or its alias as a whole-row
  value (``SELECT e FROM employees e``, ``row_to_json(e)``), or is ``TABLE t`` /
  ``DESCRIBE t`` / ``SHOW ... t``.

For PostgreSQL (and an ODBC source whose database is PostgreSQL) the check reads the
server's own parse tree instead (``_check_postgres``, on ``pgguard``): table references
are ``RangeVar`` nodes, so no quoting trick can hide one from it.

Limits (see docs/SOURCES.md): a view, function or synonym over a private table is not
recognised under its own name (mark it private too); catalogue views
(``information_schema``) still list private names; the real fence is the database
account's grants, this is a second one that works on names.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from shared.errors import JobError

from . import pgguard
from .readonly import CONCRETE_DIALECTS
from .sqloptions import SqlOptions, bare_name
from .sqltext import IDENT, PUNCT, WORD, Token, code_tokens, tokenize

_CLAUSE_END = frozenset({
    "SELECT", "WHERE", "GROUP", "HAVING", "ORDER", "LIMIT", "UNION", "EXCEPT", "INTERSECT",
    "WINDOW", "ON", "USING", "RETURNING", "QUALIFY", "OFFSET", "FETCH",
})  # fmt: skip
_NOT_ALIAS = _CLAUSE_END | frozenset({
    "JOIN", "LEFT", "RIGHT", "INNER", "OUTER", "FULL", "CROSS", "NATURAL", "FOR", "TABLESAMPLE",
    "LATERAL", "WITH", "AS", "STRAIGHT_JOIN", "USE", "FORCE", "IGNORE", "PARTITION", "FROM",
})  # fmt: skip
_STAR_BEFORE = frozenset({"SELECT", "DISTINCT", "ALL", ",", "."})


def _denied(message: str) -> JobError:
    return JobError("SCHEMA_ACCESS_DENIED", message, retryable=False)


def has_private(opts: SqlOptions) -> bool:
    return bool(opts.private_tables or opts.private_columns)


def identifier(tok: Token) -> str | None:
    """The lower-case name a WORD or quoted IDENT token stands for, else None."""
    if tok.kind == WORD:
        return tok.text.lower()
    if tok.kind == IDENT and len(tok.text) >= 2:
        quote = tok.text[0]
        inner = tok.text[1:-1]
        closing = "]" if quote == "[" else quote
        return inner.replace(closing * 2, closing).lower()
    return None


def check_private(sql: str, dialect: str, opts: SqlOptions) -> None:
    """Raise ``SCHEMA_ACCESS_DENIED`` if ``sql`` may read a private table or column."""
    if not has_private(opts):
        return
    for each in CONCRETE_DIALECTS if dialect not in CONCRETE_DIALECTS else (dialect,):
        if each == "postgres":
            _check_postgres(sql, opts, lenient=dialect != "postgres")
            continue
        _check(code_tokens(tokenize(sql, each)), opts)


def _check_postgres(sql: str, opts: SqlOptions, *, lenient: bool) -> None:
    """PostgreSQL: on the server's own parse tree (``pgguard``), not on tokens. Every
    ``RangeVar`` anywhere (subqueries, CTEs, joins, EXPLAIN) is a table reference, with
    its quoting and ``U&`` escapes resolved; a private one is refused whatever its schema.
    For a table with private columns: any column reference whose last name is private,
    any ``*``, the table or its alias used as a whole row, a column alias list that could
    rename its columns, or a ``USING (col)`` on a private column is refused."""
    from pglast import ast

    try:
        parsed = pgguard.parse(sql)
    except pgguard.PgParseError:
        if lenient:
            return  # PostgreSQL could not run any of it; the other dialects decide
        raise
    nodes = list(pgguard.walk(parsed.statements))
    rels = [n for n in nodes if isinstance(n, ast.RangeVar)]
    hidden = {bare_name(t) for t in opts.private_tables}
    for rel in rels:
        if rel.relname.lower() in hidden:
            raise _denied(f"the query names {rel.relname.lower()!r}, a table this agent keeps private")
    guarded: dict[str, set[str]] = {}
    for table, column in opts.private_columns:
        guarded.setdefault(bare_name(table), set()).add(column)
    named = [r for r in rels if r.relname.lower() in guarded]
    if not named:
        return
    secret = set().union(*(guarded[r.relname.lower()] for r in named))
    watched = {r.relname.lower() for r in named} | {r.alias.aliasname.lower() for r in named if r.alias}
    for rel in named:
        if rel.alias is not None and rel.alias.colnames:
            raise _denied(f"a column alias list on {rel.relname!r}, which has private columns, is not allowed")
    for node in nodes:
        if isinstance(node, ast.ColumnRef):
            _pg_column(node, secret, watched)
        elif isinstance(node, ast.JoinExpr) and node.usingClause:
            used = {str(getattr(u, "sval", u)).lower() for u in node.usingClause}
            for column in sorted(used & secret):
                raise _denied(f"the query joins on {column!r}, a column this agent keeps private")


def _pg_column(node: Any, secret: set[str], watched: set[str]) -> None:
    from pglast import ast

    fields = list(node.fields or ())
    if any(isinstance(f, ast.A_Star) for f in fields):
        raise _denied("'*' would read private columns; name the columns you need")
    names = [str(f.sval).lower() for f in fields if isinstance(f, ast.String)]
    if names and names[-1] in secret:
        raise _denied(f"the query names {names[-1]!r}, a column this agent keeps private")
    if names and names[-1] in watched:
        raise _denied(
            f"the query uses {names[-1]!r} as a whole row of a table with private columns; "
            "name the columns you need"
        )


def _check(tokens: list[Token], opts: SqlOptions) -> None:
    names = [identifier(t) for t in tokens]
    present = {n for n in names if n is not None}
    tables = {bare_name(t) for t in opts.private_tables}
    for hit in sorted(tables & present):
        raise _denied(f"the query names {hit!r}, a table this agent keeps private")
    guarded: dict[str, set[str]] = {}
    for table, column in opts.private_columns:
        guarded.setdefault(bare_name(table), set()).add(column)
    first = tokens[0].upper if tokens else ""
    for table in sorted(set(guarded) & present):
        for column in sorted(guarded[table] & present):
            raise _denied(f"the query names {table}.{column}, a column this agent keeps private")
        if first in ("TABLE", "DESCRIBE", "DESC", "SHOW"):
            raise _denied(f"{first} on {table!r} would show its private columns; name the columns")
        _check_star(tokens, table)
        _check_whole_row(tokens, names, table)


def _check_star(tokens: list[Token], table: str) -> None:
    for i, tok in enumerate(tokens):
        if tok.kind == PUNCT and tok.text == "*" and i > 0 and tokens[i - 1].upper in _STAR_BEFORE:
            raise _denied(
                f"'*' would read the private columns of {table!r}; name the columns you need"
            )


def _check_whole_row(tokens: list[Token], names: list[str | None], table: str) -> None:
    """The table (or its alias) used as a value, not as ``x.column`` or a FROM entry."""
    declared: set[int] = set()
    in_from = [False]  # one flag per parenthesis depth
    for i, tok in enumerate(tokens):
        if tok.kind == PUNCT and tok.text in "()":
            if tok.text == "(":
                in_from.append(False)
            elif len(in_from) > 1:
                in_from.pop()
        elif tok.kind == WORD and tok.upper in ("FROM", "JOIN"):
            in_from[-1] = True
        elif tok.kind == WORD and tok.upper in _CLAUSE_END:
            in_from[-1] = False
        elif names[i] == table and _at(tokens, i + 1) != "." and in_from[-1]:
            declared.add(i)
    aliases: set[str] = set()
    for i in list(declared):
        j = i + 2 if _upper(tokens, i + 1) == "AS" else i + 1
        alias = names[j] if j < len(tokens) else None
        if alias is not None and _upper(tokens, j) not in _NOT_ALIAS:
            aliases.add(alias)
            declared.add(j)
    watched = aliases | {table}
    for i, name in enumerate(names):
        if name in watched and i not in declared and _at(tokens, i + 1) != ".":
            raise _denied(
                f"the query uses {tokens[i].text!r} as a whole row of {table!r}, which has "
                "private columns; name the columns you need"
            )


def _at(tokens: list[Token], i: int) -> str:
    return tokens[i].text if 0 <= i < len(tokens) else ""


def _upper(tokens: list[Token], i: int) -> str:
    return tokens[i].upper if 0 <= i < len(tokens) else ""


def filter_discovery(tables: Iterable[dict[str, Any]], opts: SqlOptions) -> list[dict[str, Any]]:
    """Discovery without private tables, private columns, or keys that would name them."""
    if not has_private(opts):
        return list(tables)
    hidden = {bare_name(t) for t in opts.private_tables}
    cols: dict[str, set[str]] = {}
    for table, column in opts.private_columns:
        cols.setdefault(bare_name(table), set()).add(column)
    out: list[dict[str, Any]] = []
    for t in tables:
        name = str(t.get("name", "")).lower()
        if name in hidden:
            continue
        secret = cols.get(name, set())
        entry = dict(t)
        entry["columns"] = [c for c in t.get("columns") or [] if str(c.get("name", "")).lower() not in secret]
        entry["primaryKey"] = [c for c in t.get("primaryKey") or [] if str(c).lower() not in secret]
        entry["foreignKeys"] = [
            fk
            for fk in t.get("foreignKeys") or []
            if str(fk.get("referredTable") or "").lower() not in hidden
            and not {str(c).lower() for c in fk.get("columns") or []} & secret
            and not {str(c).lower() for c in fk.get("referredColumns") or []}
            & cols.get(str(fk.get("referredTable") or "").lower(), set())
        ]
        out.append(entry)
    return out
