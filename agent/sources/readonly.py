"""The read-only statement guard: admit exactly one read statement, reject the rest.

This is the first of two locks (the second is the read-only transaction at the database,
in ``sql``). It works on ``sqltext`` tokens, so keywords inside literals, comments and
quoted identifiers neither trigger nor hide anything. Admitted: one statement starting
with SELECT, WITH (no data-modifying CTE), VALUES, TABLE, SHOW, EXPLAIN (without
ANALYZE), DESCRIBE/DESC, optionally in parentheses and with one trailing semicolon.
Everything else fails with ``WRITE_OPERATION_REJECTED`` and a sentence saying why.
"""

from __future__ import annotations

from shared.errors import JobError

from .sqltext import PUNCT, SEMI, WORD, Token, code_tokens, tokenize

READ_STARTS = frozenset({"SELECT", "WITH", "VALUES", "TABLE", "SHOW", "EXPLAIN", "DESCRIBE", "DESC"})

# Words that make a statement write (or lock, or leave the transaction) wherever they occur.
# (Statement-level commands such as COPY, CALL, SET, LOCK or PRAGMA are already refused by
# the allow-list of first words; these are the ones that can hide inside a read's shape.)
WRITE_WORDS = frozenset({
    "INSERT", "UPDATE", "DELETE", "MERGE", "UPSERT", "CREATE", "DROP", "ALTER", "TRUNCATE",
    "GRANT", "REVOKE", "INTO", "OUTFILE", "DUMPFILE",
})  # fmt: skip

# Functions with side effects that a read-only transaction does not stop everywhere.
WRITE_FUNCTIONS = frozenset({
    "NEXTVAL", "SETVAL", "SET_CONFIG", "PG_TERMINATE_BACKEND", "PG_CANCEL_BACKEND",
    "PG_RELOAD_CONF", "PG_ROTATE_LOGFILE", "PG_READ_FILE", "PG_READ_BINARY_FILE", "PG_LS_DIR",
    "PG_STAT_FILE", "LO_IMPORT", "LO_EXPORT", "LO_UNLINK", "LO_CREATE", "LO_PUT",
    "DBLINK", "DBLINK_EXEC", "PG_ADVISORY_LOCK", "PG_ADVISORY_XACT_LOCK", "PG_TRY_ADVISORY_LOCK",
    "PG_NOTIFY", "LOAD_FILE", "GET_LOCK", "LOAD_EXTENSION", "WRITEFILE", "READFILE",
    "QUERY_TO_XML", "PG_FILE_WRITE",
})  # fmt: skip


def _reject(message: str) -> JobError:
    return JobError("WRITE_OPERATION_REJECTED", message, retryable=False)


def check_read_only(sql: str, dialect: str = "generic") -> None:
    """Raise ``JobError(WRITE_OPERATION_REJECTED)`` unless ``sql`` is one read statement."""
    if not isinstance(sql, str) or not sql.strip():
        raise JobError("QUERY_FAILED", "the query has no SQL text", retryable=False)
    try:
        tokens = code_tokens(tokenize(sql, dialect))
    except JobError as exc:
        raise _reject(f"the statement was rejected: {exc.message}") from exc
    statement = _single_statement(tokens)
    words = [t for t in statement if t.kind == WORD]
    first = next((t for t in statement if not (t.kind == PUNCT and t.text == "(")), None)
    if first is None or first.kind != WORD or first.upper not in READ_STARTS:
        shown = first.text[:40] if first is not None else "nothing"
        raise _reject(
            f"only read statements are allowed (SELECT, WITH, VALUES, TABLE, SHOW, EXPLAIN, "
            f"DESCRIBE); this one starts with {shown!r}"
        )
    for idx, tok in enumerate(statement):
        if tok.kind != WORD:
            continue
        up = tok.upper
        if up in WRITE_WORDS:
            raise _reject(f"the statement contains {up}, which writes or changes the database")
        nxt = statement[idx + 1] if idx + 1 < len(statement) else None
        if up in WRITE_FUNCTIONS and nxt is not None and nxt.text == "(":
            raise _reject(f"the function {tok.text}() has side effects and is not allowed")
        if up == "FOR" and _next_words(statement, idx, 1) in (["SHARE"], ["NO"], ["KEY"]):
            raise _reject("SELECT ... FOR SHARE takes row locks and is not allowed")
        if up == "LOCK" and _next_words(statement, idx, 1) == ["IN"]:
            raise _reject("LOCK IN SHARE MODE takes locks and is not allowed")
    if first.upper == "EXPLAIN" and any(w.upper in ("ANALYZE", "ANALYSE") for w in words):
        raise _reject("EXPLAIN ANALYZE runs the statement and is not allowed")


def _single_statement(tokens: list[Token]) -> list[Token]:
    semis = [i for i, t in enumerate(tokens) if t.kind == SEMI]
    if not semis:
        return tokens
    if semis[0] == len(tokens) - 1 or all(t.kind == SEMI for t in tokens[semis[0] :]):
        return tokens[: semis[0]]
    raise _reject("only one statement is allowed per job (found more after a ';')")


def _next_words(tokens: list[Token], idx: int, count: int) -> list[str]:
    out: list[str] = []
    for t in tokens[idx + 1 :]:
        if t.kind != WORD or len(out) >= count:
            break
        out.append(t.upper)
    return out
