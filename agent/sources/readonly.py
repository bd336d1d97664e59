"""The read-only statement guard: admit exactly one read statement, reject the rest.

This is the first of the locks (the others are at the database: a read-only transaction
or session, ``mode=ro`` for SQLite, the ODBC access mode, and a transaction that is
always rolled back; see ``sql`` and ``sqlodbc``). It works on ``sqltext`` tokens, so
keywords inside literals, comments and quoted identifiers neither trigger nor hide
anything, and words inside identifiers (``update_date``, ``created_by``) are not keywords.

Admitted: one statement starting with SELECT, WITH (no data-modifying CTE), VALUES,
TABLE, SHOW, EXPLAIN (without ANALYZE), DESCRIBE/DESC, optionally in parentheses and with
trailing semicolons. Everything else fails with ``WRITE_OPERATION_REJECTED`` and a
sentence saying why. T-SQL runs several statements without any ``;`` between them, so
for ``mssql`` the words that start a statement are refused anywhere. ``generic`` (an ODBC
source whose database is not known) must pass the checks of every dialect, since the same
text splits differently in each (``#``, ``--x``, backslashes, ``[...]``, ``$$``).
"""

from __future__ import annotations

import itertools

from shared.errors import JobError

from . import pgguard
from .sqltext import IDENT, PUNCT, SEMI, WORD, Token, code_tokens, tokenize, unquote_ident

READ_STARTS = frozenset({"SELECT", "WITH", "VALUES", "TABLE", "SHOW", "EXPLAIN", "DESCRIBE", "DESC"})
CONCRETE_DIALECTS = ("postgres", "mysql", "sqlite", "mssql")

# Words that make a statement write (or lock, or leave the transaction) wherever they occur.
# (Statement-level commands such as COPY, CALL, SET, LOCK or PRAGMA are already refused by
# the allow-list of first words; these are the ones that can hide inside a read's shape.)
WRITE_WORDS = frozenset({
    "INSERT", "UPDATE", "DELETE", "MERGE", "UPSERT", "CREATE", "DROP", "ALTER", "TRUNCATE",
    "GRANT", "REVOKE", "INTO", "OUTFILE", "DUMPFILE",
})  # fmt: skip

# T-SQL: a new statement may follow a SELECT with no ';' (``SELECT 1 EXEC sp_x``), and
# table hints may take update locks. None of these words belongs in a read.
MSSQL_WORDS = frozenset({
    "EXEC", "EXECUTE", "SET", "DECLARE", "BEGIN", "COMMIT", "ROLLBACK", "SAVE", "USE", "DBCC",
    "BACKUP", "RESTORE", "KILL", "SHUTDOWN", "DENY", "BULK", "OPENROWSET", "OPENQUERY",
    "OPENDATASOURCE", "RECONFIGURE", "CHECKPOINT", "CALL", "COPY", "ENABLE", "DISABLE",
    "UPDLOCK", "XLOCK", "TABLOCKX", "HOLDLOCK", "GO",
})  # fmt: skip

# Functions with side effects that a read-only transaction does not stop everywhere
# (or that read the server's files).
WRITE_FUNCTIONS = frozenset({
    "NEXTVAL", "SETVAL", "SET_CONFIG", "PG_TERMINATE_BACKEND", "PG_CANCEL_BACKEND",
    "PG_RELOAD_CONF", "PG_ROTATE_LOGFILE", "PG_READ_FILE", "PG_READ_BINARY_FILE", "PG_LS_DIR",
    "PG_STAT_FILE", "PG_NOTIFY", "LOAD_FILE", "GET_LOCK", "RELEASE_LOCK", "RELEASE_ALL_LOCKS",
    "LOAD_EXTENSION", "WRITEFILE", "READFILE", "EDIT", "FTS3_TOKENIZER", "QUERY_TO_XML",
    "PG_FILE_WRITE", "PG_PROMOTE", "TXID_CURRENT", "PG_CURRENT_XACT_ID", "XP_CMDSHELL",
})  # fmt: skip
# MariaDB/MySQL functions refused by name however the name is written (bare, `quoted`,
# db.qualified, with spaces or comments before the parenthesis); see docs/SECURITY.md
# "Read-only on MariaDB/MySQL and SQL Server" for why each is here.
MYSQL_FUNCTIONS = frozenset({
    "LOAD_FILE", "GET_LOCK", "RELEASE_LOCK", "RELEASE_ALL_LOCKS", "MASTER_POS_WAIT",
    "SOURCE_POS_WAIT", "MASTER_GTID_WAIT", "WAIT_FOR_EXECUTED_GTID_SET",
    "WAIT_UNTIL_SQL_THREAD_AFTER_GTIDS", "LAST_INSERT_ID", "NEXTVAL", "SETVAL", "LASTVAL",
    "SYS_EXEC", "SYS_EVAL", "SYS_GET", "SYS_SET", "SYS_BINEVAL", "DO_SYSTEM", "LIB_MYSQLUDF_SYS_INFO",
})  # fmt: skip
# MariaDB/MySQL words that make a SELECT call out (SELECT ... PROCEDURE ANALYSE()). Other
# commands (SET, DO, CALL, HANDLER, LOAD DATA, KILL...) can only start a statement, and the
# first word must be a read's; without a ';' MariaDB cannot start a second statement.
MYSQL_WORDS = frozenset({"PROCEDURE"})
WRITE_FUNCTION_PREFIXES = (
    "LO_", "DBLINK", "PG_ADVISORY", "PG_TRY_ADVISORY", "PG_CREATE_", "PG_DROP_",
    "PG_REPLICATION_", "PG_LOGICAL_", "PG_SWITCH_", "PG_BACKUP_", "PG_START_BACKUP",
    "PG_STOP_BACKUP", "PG_STAT_RESET", "PG_WAL_REPLAY_", "PG_IMPORT_",
)  # fmt: skip


# Words that start a statement other than a read in some dialect: a text starting with one
# is refused as a write; a text starting with anything else is not a statement at all (a
# typo such as ``SELEC``) and fails QUERY_FAILED, as the database itself would answer.
COMMAND_WORDS = frozenset({
    "ALTER", "ANALYZE", "ANALYSE", "ATTACH", "BACKUP", "BEGIN", "BINLOG", "BULK", "CACHE",
    "CALL", "CHANGE", "CHECK", "CHECKPOINT", "CHECKSUM", "CLOSE", "CLUSTER", "COMMENT",
    "COMMIT", "COPY", "CREATE", "DBCC", "DEALLOCATE", "DECLARE", "DELETE", "DENY", "DETACH",
    "DISABLE", "DISCARD", "DO", "DROP", "ENABLE", "END", "EXEC", "EXECUTE", "FETCH", "FLUSH",
    "GET", "GO", "GRANT", "HANDLER", "HELP", "IMPORT", "INSERT", "INSTALL", "KILL", "LISTEN",
    "LOAD", "LOCK", "MERGE", "MOVE", "NOTIFY", "OPEN", "OPTIMIZE", "PRAGMA", "PREPARE",
    "PRINT", "PURGE", "RAISERROR", "REASSIGN", "RECONFIGURE", "REFRESH", "REINDEX", "RELEASE",
    "RENAME", "REPAIR", "REPLACE", "RESET", "RESIGNAL", "RESTORE", "REVERT", "REVOKE",
    "ROLLBACK", "SAVE", "SAVEPOINT", "SECURITY", "SET", "SETUSER", "SHUTDOWN", "SIGNAL",
    "START", "STOP", "TRUNCATE", "UNINSTALL", "UNLISTEN", "UNLOCK", "UPDATE", "UPSERT", "USE",
    "VACUUM", "WAITFOR", "XA",
})  # fmt: skip


def _not_a_statement(message: str) -> JobError:
    return JobError("QUERY_FAILED", message, retryable=False)


def _reject(message: str) -> JobError:
    return JobError("WRITE_OPERATION_REJECTED", message, retryable=False)


def check_read_only(sql: str, dialect: str = "generic") -> None:
    """Raise ``JobError(WRITE_OPERATION_REJECTED)`` unless ``sql`` is one read statement."""
    if not isinstance(sql, str) or not sql.strip():
        raise JobError("QUERY_FAILED", "the query has no SQL text", retryable=False)
    for each in CONCRETE_DIALECTS if dialect not in CONCRETE_DIALECTS else (dialect,):
        if each == "postgres":  # PostgreSQL's own parser (pgguard)
            pgguard.check_read_only(sql, lenient_parse=dialect != "postgres")
            continue
        _check(sql, each)


def _check(sql: str, dialect: str) -> None:
    try:
        tokens = code_tokens(tokenize(sql, dialect))
    except JobError as exc:
        raise _reject(f"the statement was rejected: {exc.message}") from exc
    statement = _single_statement(tokens)
    words = [t for t in statement if t.kind == WORD]
    first = next((t for t in statement if not (t.kind == PUNCT and t.text == "(")), None)
    if first is None or first.kind != WORD or first.upper not in READ_STARTS:
        shown = first.text[:40] if first is not None else "nothing"
        if first is None or first.kind != WORD or first.upper not in COMMAND_WORDS:
            raise _not_a_statement(
                f"syntax error: the text does not start with an SQL statement (it starts with "
                f"{shown!r}); a query starts with SELECT, WITH, VALUES, TABLE, SHOW, EXPLAIN or DESCRIBE"
            )
        raise _reject(
            f"only read statements are allowed (SELECT, WITH, VALUES, TABLE, SHOW, EXPLAIN, "
            f"DESCRIBE); this one starts with {shown!r}"
        )
    for idx, tok in enumerate(statement):
        nxt = statement[idx + 1] if idx + 1 < len(statement) else None
        call = nxt is not None and nxt.kind == PUNCT and nxt.text == "("
        if call and tok.kind in (WORD, IDENT):
            _check_function(tok, dialect)
        if dialect == "mysql":
            _check_mysql(statement, idx, tok)
        if tok.kind != WORD:
            continue
        up = tok.upper
        if up in WRITE_WORDS and not (up == "INSERT" and call and dialect == "mysql"):
            # (MySQL's INSERT(str, pos, len, new) is a string function, not a write.)
            raise _reject(f"the statement contains {up}, which writes or changes the database")
        if dialect == "mssql" and up in MSSQL_WORDS:
            raise _reject(f"the statement contains {up}, which T-SQL runs as a statement or lock")
        if up == "FOR" and _next_words(statement, idx, 1) in (["SHARE"], ["NO"], ["KEY"]):
            raise _reject("SELECT ... FOR SHARE takes row locks and is not allowed")
        if up == "LOCK" and _next_words(statement, idx, 1) == ["IN"]:
            raise _reject("LOCK IN SHARE MODE takes locks and is not allowed")
    if first.upper == "EXPLAIN" and any(w.upper in ("ANALYZE", "ANALYSE") for w in words):
        raise _reject("EXPLAIN ANALYZE runs the statement and is not allowed")


def function_calls(statement: list[Token]) -> list[str]:
    """The upper-case names the guard takes as called in ``statement`` (code tokens): a
    bare or quoted name followed by ``(``, qualifier ignored."""
    return [
        (unquote_ident(tok) or "").upper()
        for tok, nxt in itertools.pairwise(statement)
        if tok.kind in (WORD, IDENT) and nxt.kind == PUNCT and nxt.text == "("
    ]


def _check_function(tok: Token, dialect: str) -> None:
    """A name followed by ``(`` (comments and spaces between were dropped with the other
    non-code tokens, as the server's IGNORE_SPACE would): refused by what it names."""
    name = (unquote_ident(tok) or "").upper()
    if name in WRITE_FUNCTIONS or name.startswith(WRITE_FUNCTION_PREFIXES) or (
        dialect == "mysql" and name in MYSQL_FUNCTIONS
    ):
        raise _reject(f"the function {name.lower()}() has side effects and is not allowed")


def _check_mysql(statement: list[Token], idx: int, tok: Token) -> None:
    if tok.kind == PUNCT and tok.text == ":" and idx + 1 < len(statement) and statement[idx + 1].text == "=":
        raise _reject("':=' assigns a user variable, which outlives the job; it is not allowed")
    if tok.kind != WORD:
        return
    up = tok.upper
    if up in MYSQL_WORDS:
        raise _reject(f"the statement contains {up}, which makes MariaDB/MySQL call a procedure")
    if up in ("NEXT", "PREVIOUS") and _next_words(statement, idx, 2) == ["VALUE", "FOR"]:
        raise _reject(f"{up} VALUE FOR reads or advances a sequence and is not allowed")


def _single_statement(tokens: list[Token]) -> list[Token]:
    semis = [i for i, t in enumerate(tokens) if t.kind == SEMI]
    if not semis:
        return tokens
    if all(t.kind == SEMI for t in tokens[semis[0] :]):
        return tokens[: semis[0]]
    raise _reject("only one statement is allowed per job (found more after a ';')")


def _next_words(tokens: list[Token], idx: int, count: int) -> list[str]:
    out: list[str] = []
    for t in tokens[idx + 1 :]:
        if t.kind != WORD or len(out) >= count:
            break
        out.append(t.upper)
    return out
