"""The read-only statement guard for PostgreSQL, on PostgreSQL's own parser.

``pglast`` wraps libpg_query, which is the server's grammar and scanner (``scan.l``,
``gram.y``) compiled as a library, so the guard reads the text as the server does: where
a string, a dollar quote, a comment or an identifier ends (characters outside the Basic
Multilingual Plane and non-ASCII spaces included), what ``U&"..."`` and ``"..."`` names
are after their escapes and quotes, and how many statements there are.

It admits exactly one statement of these kinds: ``SELECT``/``VALUES``/``TABLE``/``WITH``
(a ``SelectStmt``), ``SHOW`` and ``EXPLAIN`` without ``ANALYZE``. It walks the whole tree
and refuses, wherever they are: ``SELECT INTO``, locking clauses (``FOR UPDATE/SHARE``),
``INSERT``/``UPDATE``/``DELETE``/``MERGE`` (data-modifying CTEs), and every call of a
function on ``DENIED_FUNCTIONS`` / ``DENIED_PREFIXES``: by the name the server resolves
(unquoted names folded to lower case, quoted ones as written, ``U&`` escapes resolved; the
list is compared in lower case, so a quoted ``"PG_READ_FILE"`` is refused too). Why each is
on the list: docs/SECURITY.md, "Read-only on PostgreSQL".

This guard is one lock of four; the others (``pgconn``) hold without it.
"""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pglast import ast, parser

from shared.errors import JobError

# What runs a file read/write, a program, SQL given as text, a signal, a lock, a settings
# change, a write through a side door (sequences, large objects, WAL, replication), or
# reads a table named in a string (which private_tables could not see).
DENIED_FUNCTIONS = frozenset({
    # server files
    "pg_read_file", "pg_read_binary_file", "pg_stat_file", "pg_current_logfile",
    "pg_hba_file_rules", "pg_ident_file_mappings", "pg_show_all_file_settings",
    "pg_logdir_ls", "loread", "lowrite",
    # run SQL given as text (and read tables named in text)
    "query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema",
    "cursor_to_xml", "cursor_to_xmlschema", "table_to_xml", "table_to_xmlschema",
    "table_to_xml_and_xmlschema", "schema_to_xml", "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema", "database_to_xml", "database_to_xmlschema",
    "database_to_xml_and_xmlschema", "ts_stat", "ts_rewrite",
    # other sessions and the server
    "pg_terminate_backend", "pg_cancel_backend", "pg_signal_backend", "pg_reload_conf",
    "pg_rotate_logfile", "pg_promote", "pg_log_backend_memory_contexts",
    "pg_log_standby_snapshot", "pg_nextoid",
    # settings
    "set_config",
    # writes through side doors
    "nextval", "setval", "pg_notify", "txid_current", "pg_current_xact_id",
    "gin_clean_pending_list", "pg_stat_statements_reset", "pg_truncate_visibility_map",
})  # fmt: skip
DENIED_PREFIXES = (
    "pg_ls_", "pg_file_", "lo_", "dblink", "pg_advisory", "pg_try_advisory", "pg_create_",
    "pg_drop_", "pg_copy_", "pg_replication_", "pg_logical_", "pg_switch_", "pg_backup_",
    "pg_start_backup", "pg_stop_backup", "pg_stat_reset", "pg_wal_replay_", "pg_xlog_",
    "pg_import_", "binary_upgrade_", "brin_",
)  # fmt: skip
# Views that read the server's configuration files, and the catalogues holding credentials
# (password hashes, foreign-server user mappings), which only a superuser could read.
DENIED_RELATIONS = frozenset({
    "pg_hba_file_rules", "pg_ident_file_mappings", "pg_file_settings", "pg_authid", "pg_shadow",
    "pg_user_mapping", "pg_user_mappings",
})  # fmt: skip

_READ_KINDS = {ast.SelectStmt: "SELECT", ast.VariableShowStmt: "SHOW", ast.ExplainStmt: "EXPLAIN"}
_WRITES = {ast.InsertStmt: "INSERT", ast.UpdateStmt: "UPDATE", ast.DeleteStmt: "DELETE",
           ast.MergeStmt: "MERGE"}  # fmt: skip
_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _reject(message: str) -> JobError:
    return JobError("WRITE_OPERATION_REJECTED", message, retryable=False)


class PgParseError(JobError):
    """The text is not PostgreSQL the server would run (nothing in it would run)."""

    def __init__(self, message: str) -> None:
        super().__init__("QUERY_FAILED", message, retryable=False)


@dataclass
class Parsed:
    """What the server will see: the statement(s), the functions called, the relations."""

    statements: list[Any]
    functions: list[tuple[str, ...]] = field(default_factory=list)  # as resolved, lower-cased
    # Names that may be calls in attribute notation: ``(expr).f`` and ``t.col.f`` are
    # ``f(expr)`` when ``f`` is not a field (PostgreSQL's "functional notation").
    attribute_calls: list[tuple[str, ...]] = field(default_factory=list)
    relations: list[tuple[str | None, str]] = field(default_factory=list)
    text: str = ""  # the single statement without trailing ';' (when there is one)


# ------------------------------------------------------------------ parameters


def param_tokens(sql: str) -> list[tuple[int, int, str]]:
    """``(start, end, name)`` of every ``:name`` the server's scanner sees as a ``:`` token
    glued to a name (never ``::``, never inside a literal, comment or quoted name)."""
    try:
        tokens = parser.scan(sql)
    except parser.ParseError as exc:
        raise _parse_failed(exc) from exc
    out: list[tuple[int, int, str]] = []
    for tok, nxt in itertools.pairwise(tokens):
        if tok.name == "ASCII_58" and nxt.start == tok.end + 1:
            name = sql[nxt.start : nxt.end + 1]
            if _PARAM_NAME.fullmatch(name):
                out.append((tok.start, nxt.end + 1, name))
    return out


def translate_params(sql: str, params: Mapping[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """``:name`` -> ``%(name)s`` for psycopg's client-side merge, every other ``%`` doubled.
    The ``:name`` tokens are the server scanner's (``param_tokens``)."""
    params = dict(params or {})
    used: dict[str, Any] = {}
    parts: list[str] = []
    at = 0
    for start, end, name in param_tokens(sql):
        if name not in params:
            raise JobError("QUERY_FAILED", f"the query uses :{name} but no value was given for it", retryable=False)
        used[name] = params[name]
        parts += [sql[at:start].replace("%", "%%"), f"%({name})s"]
        at = end
    parts.append(sql[at:].replace("%", "%%"))
    return "".join(parts), used


def odbc_text(sql: str, params: Mapping[str, Any] | None) -> tuple[str, list[Any]]:
    """For an ODBC source whose database is PostgreSQL: the single statement's text with
    its comments replaced by a space (drivers split at any ``;``, even in a comment),
    ``:name`` -> ``?`` with the values in order; a bare ``?`` (the jsonb operators) is
    refused, as drivers read it as a marker. All on the server scanner's view."""
    text = parse(sql).text
    try:
        tokens = parser.scan(text)
    except parser.ParseError as exc:
        raise _parse_failed(exc) from exc
    params = dict(params or {})
    marks = {start: (end, name) for start, end, name in param_tokens(text)}
    out: list[str] = []
    values: list[Any] = []
    at = 0
    for tok in tokens:
        if tok.start < at:
            continue  # the name after a ':' already taken
        out.append(text[at : tok.start])  # white space only: comments are tokens here
        if tok.name in ("C_COMMENT", "SQL_COMMENT"):
            out.append(" ")
            at = tok.end + 1
            continue
        if tok.start in marks:
            end, name = marks[tok.start]
            if name not in params:
                raise JobError("QUERY_FAILED", f"the query uses :{name} but no value was given for it", retryable=False)
            out.append("?")
            values.append(params[name])
            at = end
            continue
        piece = text[tok.start : tok.end + 1]
        if "?" in piece and not piece.startswith(("'", '"', "$", "U&", "u&", "E'", "e'", "B'", "b'", "X'", "x'", "N'", "n'")):
            raise JobError("QUERY_FAILED", "a bare '?' is read as a parameter marker by ODBC drivers; "
                           "use :name parameters (and another operator than ?)", retryable=False)  # fmt: skip
        out.append(piece)
        at = tok.end + 1
    return "".join(out), values


def _placeholders(sql: str) -> str:
    """The text with each ``:name`` replaced by ``$n``, so the parser can read it."""
    out, at = [], 0
    for i, (start, end, _name) in enumerate(param_tokens(sql), 1):
        out += [sql[at:start], f"${i}".ljust(end - start)]
        at = end
    out.append(sql[at:])
    return "".join(out)


# ------------------------------------------------------------------ parsing


def _parse_failed(exc: parser.ParseError) -> PgParseError:
    where = exc.args[1] if len(exc.args) > 1 and exc.args[1] is not None else None
    at = f" (at character {where + 1})" if where is not None else ""  # 1-based, as the server
    return PgParseError(f"PostgreSQL's parser refused the query: {exc.args[0] if exc.args else exc}{at}")


# pglast turns libpg_query's tree into Python objects by C recursion with no depth check:
# ``SELECT 1 UNION SELECT 1 ...`` 20,000 times crashed the process on an 8 MiB stack. A
# text that could be that deep (a level costs at least two characters) is first parsed to
# JSON, whose writer stops cleanly ("stack depth limit exceeded"), then converted on a
# thread whose stack is far larger than any tree that passed that check needs.
_DEEP_TEXT = 1024  # <= 512 levels: fits the smallest thread stacks (1 MiB on Windows)
_BIG_STACK = 256 << 20
_stack_lock = threading.Lock()


def _parse_tree(text: str) -> list[Any]:
    if len(text) < _DEEP_TEXT:
        return list(parser.parse_sql(text))
    parser.parse_sql_json(text)
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["tree"] = list(parser.parse_sql(text))
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller's thread
            box["error"] = exc

    with _stack_lock:
        try:
            old = threading.stack_size(_BIG_STACK)
        except (ValueError, RuntimeError):  # a platform that refuses the size: the JSON gate still holds most
            old = threading.stack_size()
        try:
            worker = threading.Thread(target=run, name="pg-parse", daemon=True)
            worker.start()
        finally:
            threading.stack_size(old)
    worker.join()
    if "error" in box:
        raise box["error"]
    return box["tree"]


def parse(sql: str) -> Parsed:
    """Parse ``sql`` (``:name`` parameters allowed) as the server would."""
    text = _placeholders(sql)
    try:
        stmts = _parse_tree(text)
    except parser.ParseError as exc:
        raise _parse_failed(exc) from exc
    parsed = Parsed(statements=[s.stmt for s in stmts])
    if len(stmts) == 1:
        raw = stmts[0]
        loc, length = raw.stmt_location, raw.stmt_len
        parsed.text = sql[loc : loc + length] if length else sql[loc:]
    for node in walk(parsed.statements):
        if isinstance(node, ast.FuncCall):
            parsed.functions.append(tuple(_str(n).lower() for n in node.funcname or ()))
        elif isinstance(node, ast.RangeVar):
            parsed.relations.append((node.schemaname, node.relname))
        for name in _attribute_names(node):
            parsed.attribute_calls.append((name,))
    return parsed


def _attribute_names(node: Any) -> list[str]:
    """Field names that PostgreSQL may run as a one-argument function: every name in an
    indirection (``(x).f``) and the last of a qualified column (``t.x.f``, ``t.f``)."""
    if isinstance(node, ast.A_Indirection):
        return [_str(i).lower() for i in node.indirection or () if isinstance(i, ast.String)]
    if isinstance(node, ast.ColumnRef):
        names = [f for f in node.fields or () if isinstance(f, ast.String)]
        if len(names) >= 2 and len(names) == len(node.fields):
            return [_str(names[-1]).lower()]
    return []


def _str(node: Any) -> str:
    return str(getattr(node, "sval", node))


def walk(node: Any) -> Iterator[Any]:
    """Every AST node under ``node`` (lists, tuples and node attributes), depth first."""
    stack = [node]
    while stack:
        cur = stack.pop()
        if isinstance(cur, (list, tuple)):
            stack.extend(cur)
        elif isinstance(cur, ast.Node):
            yield cur
            for name in cur:
                value = getattr(cur, name)
                if isinstance(value, (ast.Node, list, tuple)):
                    stack.append(value)


# ------------------------------------------------------------------ the guard


def check_read_only(sql: str, *, lenient_parse: bool = False) -> Parsed | None:
    """Raise ``WRITE_OPERATION_REJECTED`` unless ``sql`` is one read statement; a text the
    parser refuses is ``QUERY_FAILED`` with the parser's message (``lenient_parse``: for a
    source whose database is unknown, such text passes here, since PostgreSQL itself could
    not run any of it, and the other dialects' checks decide)."""
    try:
        parsed = parse(sql)
    except PgParseError:
        if lenient_parse:
            return None
        raise
    if not parsed.statements:
        raise JobError("QUERY_FAILED", "the query has no SQL statement", retryable=False)
    if len(parsed.statements) > 1:
        raise _reject(f"only one statement is allowed per job (found {len(parsed.statements)})")
    stmt = parsed.statements[0]
    if type(stmt) not in _READ_KINDS:
        raise _reject(
            "only read statements are allowed (SELECT, VALUES, TABLE, WITH, SHOW, EXPLAIN); "
            f"this one is {_kind(stmt)}"
        )
    for node in walk(stmt):
        _check_node(node)
    return parsed


def _kind(stmt: Any) -> str:
    name = type(stmt).__name__
    return {"TransactionStmt": "transaction control", "VariableSetStmt": "SET/RESET",
            "CopyStmt": "COPY", "DoStmt": "a DO block", "CallStmt": "CALL"}.get(name, name)  # fmt: skip


def _check_node(node: Any) -> None:
    if type(node) in _WRITES:
        raise _reject(f"the statement contains {_WRITES[type(node)]}, which writes to the database")
    if isinstance(node, ast.SelectStmt):
        if node.intoClause is not None:
            raise _reject("SELECT ... INTO creates a table and is not allowed")
        if node.lockingClause:
            raise _reject("SELECT ... FOR UPDATE/SHARE takes row locks and is not allowed")
    elif isinstance(node, ast.ExplainStmt):
        if not isinstance(node.query, ast.SelectStmt):
            raise _reject(f"EXPLAIN is allowed for queries only; this one explains {_kind(node.query)}")
        for opt in node.options or ():
            if str(opt.defname).lower() in ("analyze", "analyse"):
                raise _reject("EXPLAIN ANALYZE runs the statement and is not allowed")
    elif isinstance(node, ast.FuncCall):
        name = _str(node.funcname[-1]).lower()
        if name in DENIED_FUNCTIONS or name.startswith(DENIED_PREFIXES):
            raise _reject(f"the function {name}() has side effects or reaches outside the query and is not allowed")
    elif isinstance(node, ast.RangeVar) and node.relname.lower() in DENIED_RELATIONS:
        raise _reject(f"{node.relname} holds the server's configuration or credentials and is not allowed")
    for name in _attribute_names(node):
        if _denied_attribute(name):
            raise _reject(f"{name} in attribute notation calls {name}(), which is not allowed")


# Large-object functions by exact name (a column may well be called lo_something).
_LO_FUNCTIONS = frozenset({
    "lo_import", "lo_export", "lo_get", "lo_put", "lo_create", "lo_creat", "lo_unlink",
    "lo_from_bytea", "lo_open", "lo_close", "lo_lseek", "lo_lseek64", "lo_tell", "lo_tell64",
    "lo_truncate", "lo_truncate64",
})  # fmt: skip


def _denied_attribute(name: str) -> bool:
    if name in DENIED_FUNCTIONS or name in _LO_FUNCTIONS:
        return True
    return name.startswith(tuple(p for p in DENIED_PREFIXES if p != "lo_"))


# ------------------------------------------------------------------ the server's word

# VOLATILE functions of PostgreSQL and its extensions that a read may call: they change
# no state outside the query (clocks, random numbers, sizes, WAL positions, sleeping).
VOLATILE_ALLOWED = frozenset({
    "random", "clock_timestamp", "timeofday", "gen_random_uuid", "pg_sleep", "pg_sleep_for",
    "pg_sleep_until", "currval", "lastval", "current_query", "pg_relation_size",
    "pg_table_size", "pg_total_relation_size", "pg_indexes_size", "pg_database_size",
    "pg_tablespace_size", "pg_is_in_recovery", "pg_current_wal_lsn", "pg_current_wal_insert_lsn",
    "pg_current_wal_flush_lsn", "pg_last_wal_receive_lsn", "pg_last_wal_replay_lsn",
    "pg_last_xact_replay_timestamp", "pg_is_wal_replay_paused", "pg_get_wal_replay_pause_state",
    "pg_blocking_pids", "pg_safe_snapshot_blocking_pids", "pg_lock_status", "pg_partition_tree",
    "pg_partition_ancestors", "pg_notification_queue_usage", "pg_xact_commit_timestamp",
    "pg_xact_commit_timestamp_origin", "pg_xact_status", "txid_status", "pg_jit_available",
    "pg_collation_actual_version", "pg_database_collation_actual_version", "pg_stat_have_stats",
    "pg_sequence_last_value", "pg_last_committed_xact", "pg_get_wal_resource_managers",
    "gen_random_bytes", "gen_salt", "uuid_generate_v1", "uuid_generate_v1mc", "uuid_generate_v4",
    "system", "bernoulli",  # TABLESAMPLE handlers (internal arguments): also common column names
})  # fmt: skip

_VOLATILE_SQL = (
    "SELECT DISTINCT lower(p.proname) FROM pg_catalog.pg_proc p "
    "LEFT JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_proc'::regclass "
    "AND d.objid = p.oid AND d.deptype = 'e' "
    "WHERE lower(p.proname) = ANY(%s) AND p.provolatile = 'v' "
    "AND (p.pronamespace = 'pg_catalog'::regnamespace OR d.objid IS NOT NULL)"
)


def check_functions_at_server(cursor: Any, functions: list[tuple[str, ...]]) -> None:
    """The second, semantic check, run in the job's transaction before the query: ask the
    server which of the called names are VOLATILE functions of PostgreSQL itself or of an
    installed extension (``pg_proc.provolatile``, ``pg_depend`` deptype 'e'), and refuse
    any not on ``VOLATILE_ALLOWED``. It catches what a name list misses (a new release's
    function, an extension's). Functions the database's own users wrote are left to the
    read-only transaction and their grants: most are VOLATILE by default and harmless."""
    names = sorted({f[-1] for f in functions if f} - VOLATILE_ALLOWED)
    if not names:
        return
    cursor.execute(_VOLATILE_SQL, (names,))
    found = sorted(str(r[0]) for r in cursor.fetchall())
    if found:
        raise _reject(
            f"the function {found[0]}() is VOLATILE in PostgreSQL's catalogue (it may change "
            "state) and is not on the agent's list of volatile functions a read may call"
        )


def streamable(parsed: Parsed) -> bool:
    """A ``SelectStmt`` goes into ``DECLARE ... CURSOR FOR`` (and may be wrapped for COPY)."""
    return len(parsed.statements) == 1 and isinstance(parsed.statements[0], ast.SelectStmt)
