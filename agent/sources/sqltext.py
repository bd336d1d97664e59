"""A small SQL tokenizer, and named parameters (``:name``) translated per driver.

It knows what hides text from a naive scan: comments (``--``, ``/* */`` nested in
PostgreSQL, ``#`` in MySQL), string literals (``''`` doubling, backslash escapes in MySQL
and ``E''`` strings), quoted identifiers (``"x"``, `` `x` ``, ``[x]``) and PostgreSQL
dollar quotes (``$tag$ ... $tag$``). The read-only guard and the parameter translation
both work on its tokens, so neither is fooled by a keyword or a colon inside a literal.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .mysqllex import tokenize_mysql
from .sqltokens import (
    COMMENT,
    IDENT,
    NUMBER,
    PARAM,
    PUNCT,
    SEMI,
    STRING,
    WORD,
    WS,
    SqlTextError,
    Token,
)

DIALECTS = ("postgres", "mysql", "sqlite", "mssql", "generic")

_WORD = re.compile(r"[A-Za-z_\x80-\uffff][A-Za-z0-9_$\x80-\uffff]*")
_NUMBER = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_PARAM = re.compile(r":([A-Za-z_][A-Za-z0-9_]*)")
_DOLLAR = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")


def tokenize(sql: str, dialect: str = "generic") -> list[Token]:
    """Split ``sql`` into tokens; raise ``SqlTextError`` on anything unterminated."""
    if dialect == "mysql":
        return tokenize_mysql(sql)
    mysql, pg = dialect == "mysql", dialect == "postgres"
    nested = pg or dialect == "mssql"  # block comments nest in PostgreSQL and T-SQL
    out: list[Token] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        start = i
        if c.isspace():
            while i < n and sql[i].isspace():
                i += 1
            out.append(Token(WS, sql[start:i], start))
        elif c == "-" and sql.startswith("--", i) and (
            not mysql or i + 2 >= n or sql[i + 2].isspace() or sql[i + 2] < " "
        ):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
            out.append(Token(COMMENT, sql[start:i], start))
        elif c == "#" and mysql:
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
            out.append(Token(COMMENT, sql[start:i], start))
        elif c == "/" and sql.startswith("/*", i):
            if mysql and (sql.startswith("/*!", i) or sql.startswith("/*M!", i)):
                raise SqlTextError(
                    "MySQL/MariaDB executable comments (/*! ... */, /*M! ... */) are not allowed",
                    "WRITE_OPERATION_REJECTED",
                )
            i = _block_comment_end(sql, i, nested=nested)
            out.append(Token(COMMENT, sql[start:i], start))
        elif c == "'" or (c == '"' and mysql):
            i = _quoted_end(sql, i, c, backslash=mysql)
            out.append(Token(STRING, sql[start:i], start))
        elif c in "eE" and pg and sql.startswith("'", i + 1):
            i = _quoted_end(sql, i + 1, "'", backslash=True)
            out.append(Token(STRING, sql[start:i], start))
        elif c == '"' or (c == "`" and dialect in ("mysql", "sqlite", "generic")):
            i = _quoted_end(sql, i, c, backslash=False)
            out.append(Token(IDENT, sql[start:i], start))
        elif c == "[" and dialect in ("sqlite", "mssql", "generic"):
            i = _bracket_end(sql, i, doubled=dialect != "sqlite")
            out.append(Token(IDENT, sql[start:i], start))
        elif c == "$" and pg and (m := _DOLLAR.match(sql, i)) and not _after_word(out, i):
            tag = m.group(0)
            end = sql.find(tag, m.end())
            if end < 0:
                raise SqlTextError(f"the statement has an unterminated {tag} quoted string")
            i = end + len(tag)
            out.append(Token(STRING, sql[start:i], start))
        elif c == ":" and (m := _PARAM.match(sql, i)) and not sql.startswith("::", i) and not (
            i > 0 and sql[i - 1] == ":"
        ):
            i = m.end()
            out.append(Token(PARAM, sql[start:i], start))
        elif c == ";":
            i += 1
            out.append(Token(SEMI, ";", start))
        elif m := _WORD.match(sql, i):
            i = m.end()
            out.append(Token(WORD, sql[start:i], start))
        elif c.isdigit() or (c == "." and i + 1 < n and sql[i + 1].isdigit()):
            m = _NUMBER.match(sql, i)
            i = m.end() if m else i + 1
            out.append(Token(NUMBER, sql[start:i], start))
        else:
            i += 1
            out.append(Token(PUNCT, c, start))
    return out


def _after_word(tokens: list[Token], i: int) -> bool:
    # "a$b$" glued to a word is part of an identifier in PostgreSQL, not a dollar quote.
    return bool(tokens) and tokens[-1].kind == WORD and tokens[-1].pos + len(tokens[-1].text) == i


def _bracket_end(sql: str, i: int, *, doubled: bool) -> int:
    # T-SQL escapes "]" inside [brackets] by doubling it; SQLite has no escape at all.
    j = i + 1
    while True:
        end = sql.find("]", j)
        if end < 0:
            raise SqlTextError("the statement has an unterminated [identifier]")
        if doubled and sql.startswith("]]", end):
            j = end + 2
            continue
        return end + 1


def _block_comment_end(sql: str, i: int, *, nested: bool) -> int:
    depth, j = 0, i
    while j < len(sql):
        if sql.startswith("/*", j):
            depth = depth + 1 if nested or depth == 0 else depth
            j += 2
        elif sql.startswith("*/", j):
            depth -= 1
            j += 2
            if depth == 0:
                return j
        else:
            j += 1
    raise SqlTextError("the statement has an unterminated /* comment")


def _quoted_end(sql: str, i: int, quote: str, *, backslash: bool) -> int:
    j = i + 1
    while j < len(sql):
        ch = sql[j]
        if backslash and ch == "\\":
            j += 2
            continue
        if ch == quote:
            if j + 1 < len(sql) and sql[j + 1] == quote:
                j += 2
                continue
            return j + 1
        j += 1
    what = "string literal" if quote == "'" else f"{quote}quoted{quote} text"
    raise SqlTextError(f"the statement has an unterminated {what}")


def unquote_ident(tok: Token) -> str | None:
    """The name a WORD or quoted IDENT token stands for (quotes and doubling removed), else None."""
    if tok.kind == WORD:
        return tok.text
    if tok.kind == IDENT and len(tok.text) >= 2:
        closing = "]" if tok.text[0] == "[" else tok.text[0]
        return tok.text[1:-1].replace(closing * 2, closing)
    return None


def code_tokens(tokens: list[Token]) -> list[Token]:
    """Tokens without whitespace and comments."""
    return [t for t in tokens if t.kind not in (WS, COMMENT)]


def translate_params(
    sql: str, params: Mapping[str, Any] | None, *, style: str, dialect: str
) -> tuple[str, Any]:
    """Rewrite ``:name`` for the driver: ``pyformat`` (psycopg2, PyMySQL), ``named`` (sqlite3)
    or ``qmark`` (pyodbc; the values come back as a list in order of use).

    For ``pyformat`` every literal ``%`` is doubled, since those drivers interpolate the
    whole text. For ``qmark`` a bare ``?`` in the text is refused: ODBC drivers would read
    it as a parameter marker. A ``:name`` with no value is an error that names it.
    """
    params = dict(params or {})
    used: dict[str, Any] = {}
    ordered: list[Any] = []
    parts: list[str] = []
    for tok in tokenize(sql, dialect):
        if tok.kind == PARAM:
            name = tok.text[1:]
            if name not in params:
                raise SqlTextError(f"the query uses :{name} but no value was given for it")
            used[name] = params[name]
            if style == "qmark":
                ordered.append(params[name])
                parts.append("?")
            else:
                parts.append(f"%({name})s" if style == "pyformat" else tok.text)
        elif style == "pyformat":
            parts.append(tok.text.replace("%", "%%"))
        elif style == "qmark" and tok.kind == PUNCT and tok.text == "?":
            raise SqlTextError(
                "a bare '?' is read as a parameter marker by ODBC drivers; "
                "use :name parameters (and another operator than ?)"
            )
        else:
            parts.append(tok.text)
    return "".join(parts), (ordered if style == "qmark" else used)
