"""The MariaDB/MySQL session layers that hold even if the statement guard is wrong.

- **One statement per call.** The client never asks for ``CLIENT_MULTI_STATEMENTS``: the
  bit is masked out of whatever the admin's URL or options pass (``mask_connect_args``),
  mysqlclient's default-on multi-statements are switched off with
  ``COM_SET_OPTION``, and every new connection proves it: ``SELECT 1; SELECT 2`` must
  fail at the server, or the connection is refused (``on_connect``).
- **The text rules the guard assumes.** ``sql_mode`` loses the modes that change where
  literals, comments and names end (``ANSI_QUOTES``, ``NO_BACKSLASH_ESCAPES``, ``ORACLE``,
  ``IGNORE_SPACE`` and the combination modes that include them); the result is read back
  and checked, and asserted again every time the connection goes back to the pool.
- **A read-only transaction per job** (``START TRANSACTION READ ONLY``, in ``sqlstream``),
  always rolled back.
- **Returned clean.** After each job the connection is reset (``COM_RESET_CONNECTION``
  with PyMySQL: named locks, user variables, temporary tables, prepared statements and
  session variables go; then ``autocommit`` and ``sql_mode`` are set again). Other drivers
  get ``RELEASE_ALL_LOCKS()`` and the ``sql_mode`` again. A connection that cannot be
  reset is dropped, never pooled.
- **Driver options that would undo this are refused**: ``init_command``,
  ``read_default_file``/``read_default_group`` (an option file can hold an
  init-command), ``sql_mode``, ``local_infile``, ``autocommit``, ``client_flag`` with the
  multi-statements bit, and a ``charset`` other than utf8mb4 (the guard reads Unicode
  text; a multi-byte charset such as GBK can hide a quote inside a character).
"""

from __future__ import annotations

from typing import Any

from shared.errors import JobError

MULTI_STATEMENTS = 1 << 16  # CLIENT_MULTI_STATEMENTS in the handshake capability flags
COM_RESET_CONNECTION = 0x1F
MYSQL_OPTION_MULTI_STATEMENTS_OFF = 1

# Modes that change how the lexer reads text (or that imply such modes).
TEXT_MODES = frozenset({
    "ANSI_QUOTES", "NO_BACKSLASH_ESCAPES", "IGNORE_SPACE", "ORACLE", "ANSI", "DB2", "MSSQL",
    "MAXDB", "POSTGRESQL", "MYSQL323", "MYSQL40", "NO_FIELD_OPTIONS",
})  # fmt: skip
MUST_NOT_HOLD = ("ANSI_QUOTES", "NO_BACKSLASH_ESCAPES", "ORACLE", "IGNORE_SPACE")
FORBIDDEN_ARGS = frozenset({
    "init_command", "read_default_file", "read_default_group", "sql_mode", "local_infile",
    "autocommit", "defer_connect", "conv", "cursorclass", "server_public_key",
})  # fmt: skip
MODE_KEY = "mc_sql_mode"


def check_driver_args(args: dict[str, Any]) -> None:
    """``ValueError`` (one sentence) for a driver argument that would undo a session layer."""
    for key, value in args.items():
        low = key.strip().lower()
        if low in FORBIDDEN_ARGS:
            raise ValueError(f"option {key} is not accepted for a MariaDB/MySQL source (it would "
                             "weaken the read-only session)")
        if low == "client_flag" and _int(value) & MULTI_STATEMENTS:
            raise ValueError("option client_flag may not turn on multi-statements")
        if low == "charset" and str(value).strip().lower() != "utf8mb4":
            raise ValueError("option charset must be utf8mb4 for a MariaDB/MySQL source")


def _int(value: Any) -> int:
    try:
        return int(str(value), 0)
    except ValueError:
        return 0


def mask_connect_args(_dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
    """SQLAlchemy ``do_connect``: the final driver arguments (URL query included)."""
    try:
        check_driver_args({k: v for k, v in cparams.items() if k != "client_flag"})
    except ValueError as exc:
        raise JobError("SOURCE_UNAVAILABLE", str(exc), retryable=False) from exc
    cparams["client_flag"] = _int(cparams.get("client_flag", 0)) & ~MULTI_STATEMENTS
    cparams["charset"] = "utf8mb4"


def safe_sql_mode(current: str) -> str:
    return ",".join(m for m in current.split(",") if m and m.strip().upper() not in TEXT_MODES)


def on_connect(conn: Any, record: Any) -> None:
    """A new connection: multi-statements off and proven off, ``sql_mode`` made safe."""
    if hasattr(conn, "set_server_option") and type(conn).__module__.startswith("MySQLdb"):
        conn.set_server_option(MYSQL_OPTION_MULTI_STATEMENTS_OFF)  # mysqlclient turns it on
    cur = conn.cursor()
    try:
        _prove_single_statement(conn, cur)
        cur.execute("SELECT @@SESSION.sql_mode")
        mode = safe_sql_mode(str(cur.fetchone()[0] or ""))
        assert_sql_mode(cur, mode)
    finally:
        cur.close()
    conn.commit()
    if record is not None:
        record.info[MODE_KEY] = mode


def _prove_single_statement(conn: Any, cur: Any) -> None:
    try:
        cur.execute("SELECT 1; SELECT 2")
    except Exception as exc:  # the error we want: 1064, a syntax error
        if _errno(exc) == 1064:
            return
        raise
    raise JobError(
        "SOURCE_UNAVAILABLE",
        "the MariaDB/MySQL connection runs several statements per call; the agent refuses it",
        retryable=False,
    )


def _errno(exc: BaseException) -> int | None:
    args = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def assert_sql_mode(cur: Any, mode: str) -> None:
    """Set ``sql_mode`` and check what the server made of it (combination modes expand)."""
    cur.execute("SET SESSION sql_mode = %s", (mode,))
    cur.execute("SELECT @@SESSION.sql_mode")
    now = str(cur.fetchone()[0] or "").upper().split(",")
    bad = [m for m in MUST_NOT_HOLD if m in now]
    if bad:
        raise JobError("SOURCE_UNAVAILABLE", f"sql_mode still holds {', '.join(bad)}", retryable=False)


def reset(conn: Any, record_info: dict[str, Any]) -> None:
    """Return a connection clean: reset it (or release named locks), then the settings again.
    Any failure propagates: the caller drops the connection."""
    mode = record_info.get(MODE_KEY)
    if hasattr(conn, "_execute_command") and hasattr(conn, "_read_ok_packet"):  # PyMySQL
        conn._execute_command(COM_RESET_CONNECTION, b"")
        conn._read_ok_packet()
    else:
        conn.rollback()
        with conn.cursor() as cur:
            cur.execute("DO RELEASE_ALL_LOCKS()")
    with conn.cursor() as cur:
        if mode is None:
            cur.execute("SELECT @@SESSION.sql_mode")
            mode = safe_sql_mode(str(cur.fetchone()[0] or ""))
            record_info[MODE_KEY] = mode
        cur.execute("SET SESSION autocommit = 0, sql_mode = %s", (mode,))
