"""MariaDB/MySQL tokenization as the server's lexer does it (``sql/sql_lex.cc``).

The rules, each checked against a real MariaDB 10.11 (tests/sources/test_mysql_guard*.py)
and listed with their sources in docs/SOURCES.md ("How the guard reads MariaDB/MySQL"):

- whitespace is the ASCII bytes ``\\t \\n \\v \\f \\r`` and space only (the charset's
  ``my_isspace``); U+00A0, U+2028 and other Unicode spaces are identifier characters;
- ``--`` starts a comment only when the next *byte* is a space or control character
  (``my_isspace || my_iscntrl``: 0x01-0x20 and 0x7F) or the text ends there; ``--``
  followed by U+00A0 (bytes C2 A0) is two minus signs; ``#`` comments run to ``\\n``;
- ``/* */`` does not nest; ``/*!``, ``/*M!`` (executable comments) and ``/*+`` (optimizer
  hints, which can set session variables) are refused;
- ``'`` and ``"`` delimit strings (``ANSI_QUOTES`` is removed from the session's
  ``sql_mode``), with ``''`` doubling and backslash escapes (``NO_BACKSLASH_ESCAPES`` is
  removed too); `` ` `` delimits identifiers, with `` `` `` doubling and no escapes;
- ``N'..'`` is a string; ``X'..'`` / ``B'..'`` hold hex / binary digits only;
- identifier characters are ``[A-Za-z0-9_$]`` and every non-ASCII character (the lexer's
  ``ident_map`` takes any multi-byte sequence); characters above U+FFFF lex as identifier
  characters and the server then refuses the name (error 1300);
- a run that starts with a digit is a number when no identifier character follows it
  (``1e5``, ``1.5e-3``, ``0x1F``, ``0b101``), else an identifier (``1ea``, ``0x1g``,
  ``1e`` ); right after ``name.`` it is always an identifier;
- NUL is refused (the server ends ``#``/``--`` comments at NUL and then fails), as are
  lone surrogates (they cannot be sent as UTF-8) and non-ASCII characters straight after
  an ``@`` name (the server's ``user@host`` scan stops at some of them).

Tokens are ``sqltokens.Token``; anything the server would not read the same way is a
``SqlTextError``, so the guard refuses it rather than guess.
"""

from __future__ import annotations

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
)  # fmt: skip

SPACE = frozenset(" \t\n\x0b\x0c\r")
_HEX = frozenset("0123456789abcdefABCDEF")
_DIGITS = frozenset("0123456789")
_ASCII_IDENT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_$")
_HOST = _ASCII_IDENT | {"."}


def is_ident_char(ch: str) -> bool:
    return ch in _ASCII_IDENT or ord(ch) >= 0x80


def comment_follows_dashes(sql: str, i: int) -> bool:
    """``sql[i:i+2] == "--"``: does the server take it as a comment start?"""
    if i + 2 >= len(sql):
        return True  # the lexer peeks at the terminating NUL, a control character
    code = ord(sql[i + 2])
    return code <= 0x20 or code == 0x7F


def tokenize_mysql(sql: str) -> list[Token]:
    for ch in ("\x00",):
        if ch in sql:
            raise SqlTextError("the statement holds a NUL character")
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in sql):
        raise SqlTextError("the statement holds a lone UTF-16 surrogate, which is not text")
    out: list[Token] = []
    i, n = 0, len(sql)
    while i < n:
        c, start = sql[i], i
        if c in SPACE:
            while i < n and sql[i] in SPACE:
                i += 1
            out.append(Token(WS, sql[start:i], start))
        elif (c == "-" and sql.startswith("--", i) and comment_follows_dashes(sql, i)) or c == "#":
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
            out.append(Token(COMMENT, sql[start:i], start))
        elif c == "/" and sql.startswith("/*", i):
            if sql.startswith(("/*!", "/*M!", "/*+"), i):
                raise SqlTextError(
                    "MariaDB/MySQL executable comments and optimizer hints (/*! */, /*M! */, "
                    "/*+ */) are not allowed",
                    "WRITE_OPERATION_REJECTED",
                )
            end = sql.find("*/", i + 2)
            if end < 0:
                raise SqlTextError("the statement has an unterminated /* comment")
            i = end + 2
            out.append(Token(COMMENT, sql[start:i], start))
        elif c in "'\"":
            i = _string_end(sql, i, c)
            out.append(Token(STRING, sql[start:i], start))
        elif c in "nN" and sql.startswith("'", i + 1):
            i = _string_end(sql, i + 1, "'")
            out.append(Token(STRING, sql[start:i], start))
        elif c in "xXbB" and sql.startswith("'", i + 1):
            i = _bits_end(sql, i, _HEX if c in "xX" else frozenset("01"))
            out.append(Token(STRING, sql[start:i], start))
        elif c == "`":
            i = _backtick_end(sql, i)
            out.append(Token(IDENT, sql[start:i], start))
        elif c == "@":
            i = _at_end(sql, i)
            out.append(Token(PUNCT, sql[start:i], start))
        elif c == ":" and _param_start(sql, i):
            j = i + 1
            while j < n and (sql[j].isascii() and (sql[j].isalnum() or sql[j] == "_")):
                j += 1
            i = j
            out.append(Token(PARAM, sql[start:i], start))
        elif c == ";":
            i += 1
            out.append(Token(SEMI, ";", start))
        elif c in _DIGITS and not _after_ident_dot(out, sql, i):
            kind, i = _number_or_ident(sql, i)
            out.append(Token(kind, sql[start:i], start))
        elif c == "." and i + 1 < n and sql[i + 1] in _DIGITS and not _glued_word(out, i):
            i = _real_end(sql, i + 1)
            out.append(Token(NUMBER, sql[start:i], start))
        elif is_ident_char(c):
            while i < n and is_ident_char(sql[i]):
                i += 1
            out.append(Token(WORD, sql[start:i], start))
        else:
            i += 1
            out.append(Token(PUNCT, c, start))
    return out


def _param_start(sql: str, i: int) -> bool:
    """``:name`` (the agent's parameter syntax), not ``::name`` nor ``:=``."""
    nxt = sql[i + 1] if i + 1 < len(sql) else ""
    if not (nxt.isascii() and (nxt.isalpha() or nxt == "_")):
        return False
    return not (i > 0 and sql[i - 1] == ":")


def _string_end(sql: str, i: int, quote: str) -> int:
    # get_text(): a backslash takes the next character whatever it is; a doubled quote
    # is one quote character.
    j, n = i + 1, len(sql)
    while j < n:
        ch = sql[j]
        if ch == "\\":
            j += 2
            continue
        if ch == quote:
            if j + 1 < n and sql[j + 1] == quote:
                j += 2
                continue
            return j + 1
        j += 1
    raise SqlTextError("the statement has an unterminated string literal")


def _backtick_end(sql: str, i: int) -> int:
    j = i + 1
    while True:
        end = sql.find("`", j)
        if end < 0:
            raise SqlTextError("the statement has an unterminated `quoted` name")
        if sql.startswith("``", end):
            j = end + 2
            continue
        return end + 1


def _bits_end(sql: str, i: int, digits: frozenset[str]) -> int:
    j = i + 2
    while j < len(sql) and sql[j] in digits:
        j += 1
    if j >= len(sql) or sql[j] != "'":
        raise SqlTextError(f"the statement has a malformed {sql[i]}'...' literal")
    return j + 1


def _at_end(sql: str, i: int) -> int:
    # "@name" / "@@name": the server reads "@" then a user@host-style run of ASCII letters,
    # digits, '.', '_', '$'; a non-ASCII character right after it is refused, since the
    # server's scan and ours could part there.
    j = i + 1
    if j < len(sql) and sql[j] == "@":
        j += 1
    k = j
    while k < len(sql) and sql[k] in _HOST:
        k += 1
    if k < len(sql) and ord(sql[k]) >= 0x80:
        raise SqlTextError("a @variable name with non-ASCII characters must be `quoted`")
    return j


def _glued_word(out: list[Token], i: int) -> bool:
    """An unquoted name ends right at ``i`` (the server then reads ``name.x`` as a qualified
    name; after a `quoted` name it goes back to its start state, so `t`.5 is a number)."""
    return bool(out) and out[-1].kind == WORD and out[-1].pos + len(out[-1].text) == i


def _after_ident_dot(out: list[Token], sql: str, i: int) -> bool:
    """``name.`` glued to the digit at ``i``: the server reads an identifier there."""
    if not out or out[-1].kind != PUNCT or out[-1].text != "." or out[-1].pos != i - 1:
        return False
    return _glued_word(out[:-1], i - 1)


def _number_or_ident(sql: str, i: int) -> tuple[str, int]:
    n = len(sql)
    if sql.startswith(("0x", "0b"), i):
        digits = _HEX if sql[i + 1] == "x" else frozenset("01")
        j = i + 2
        while j < n and sql[j] in digits:
            j += 1
        if j - i >= 3 and (j >= n or not is_ident_char(sql[j])):
            return NUMBER, j
        return WORD, _ident_end(sql, i)
    j = i
    while j < n and sql[j] in _DIGITS:
        j += 1
    if j >= n or not is_ident_char(sql[j]):
        if j < n and sql[j] == ".":
            return NUMBER, _real_end(sql, j + 1)
        return NUMBER, j
    if sql[j] in "eE":
        k = j + 1
        if k < n and sql[k] in "+-":
            k += 1
        if k < n and sql[k] in _DIGITS:
            while k < n and sql[k] in _DIGITS:
                k += 1
            return NUMBER, k
    return WORD, _ident_end(sql, i)


def _ident_end(sql: str, i: int) -> int:
    while i < len(sql) and is_ident_char(sql[i]):
        i += 1
    return i


def _real_end(sql: str, j: int) -> int:
    """After the '.' of a real number: digits, then an optional exponent that must have digits."""
    n = len(sql)
    while j < n and sql[j] in _DIGITS:
        j += 1
    if j < n and sql[j] in "eE":
        k = j + 1
        if k < n and sql[k] in "+-":
            k += 1
        if k >= n or sql[k] not in _DIGITS:
            raise SqlTextError("the statement has a number with an empty exponent")
        while k < n and sql[k] in _DIGITS:
            k += 1
        return k
    return j
