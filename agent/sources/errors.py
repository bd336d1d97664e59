"""Driver exceptions translated into the contract's job errors, in one place.

psycopg (3, and 2 for tools), PyMySQL and sqlite3 each say "wrong password", "cannot reach the server",
"statement cancelled" and "read-only transaction" in their own way; this module turns
them into ``JobError`` codes (AUTH_FAILED, SOURCE_UNAVAILABLE, CANCELLED, TIMEOUT,
WRITE_OPERATION_REJECTED, QUERY_FAILED) with the driver's first line as the sentence.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from typing import Any

from shared.errors import JobError

from ..logs import redact

_PG_CODES = {
    "28P01": "AUTH_FAILED",
    "28000": "AUTH_FAILED",
    "25006": "WRITE_OPERATION_REJECTED",
    "57P01": "SOURCE_UNAVAILABLE",
    "57P03": "SOURCE_UNAVAILABLE",
    "3D000": "SOURCE_UNAVAILABLE",
}
_MYSQL_CODES = {
    1045: "AUTH_FAILED",
    1044: "AUTH_FAILED",
    1049: "SOURCE_UNAVAILABLE",
    2002: "SOURCE_UNAVAILABLE",
    2003: "SOURCE_UNAVAILABLE",
    2005: "SOURCE_UNAVAILABLE",
    2006: "SOURCE_UNAVAILABLE",
    2013: "SOURCE_UNAVAILABLE",
    1317: "CANCELLED",
    1792: "WRITE_OPERATION_REJECTED",
    1836: "WRITE_OPERATION_REJECTED",
    3024: "TIMEOUT",
    1969: "TIMEOUT",
}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return redact(text[0] if text else type(exc).__name__)[:500]


def map_db_error(exc: BaseException, *, connecting: bool = False) -> JobError:
    """The job error for a driver (or SQLAlchemy-wrapped driver) exception."""
    orig: Any = getattr(exc, "orig", None) or exc
    message = _first_line(orig)
    code = _code_for(orig, message)
    if code is None:
        code = "SOURCE_UNAVAILABLE" if connecting else "QUERY_FAILED"
    if code == "CANCELLED":
        message = "the query was cancelled at the database"
    elif code == "TIMEOUT":
        message = "the query ran past its time limit and was stopped at the database"
    elif code == "WRITE_OPERATION_REJECTED":
        message = f"the database refused a write in a read-only transaction: {message}"
    elif code == "AUTH_FAILED":
        message = f"the database refused the credentials: {message}"
    elif code == "SOURCE_UNAVAILABLE":
        message = f"the database cannot be reached: {message}"
    return JobError(code, message)


def _code_for(orig: Any, message: str) -> str | None:
    module = type(orig).__module__ or ""
    if module.startswith("psycopg"):  # psycopg 3 (the agent's) and psycopg2
        pgcode = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
        if pgcode == "57014":
            return "TIMEOUT" if "statement timeout" in message else "CANCELLED"
        if pgcode in _PG_CODES:
            return _PG_CODES[pgcode]
        if pgcode is None and "authentication failed" in message:
            return "AUTH_FAILED"
        if pgcode is None and type(orig).__name__ in ("OperationalError", "InterfaceError"):
            return "SOURCE_UNAVAILABLE"
        return None
    if module.startswith(("pymysql", "MySQLdb")):
        args = getattr(orig, "args", ())
        num = args[0] if args and isinstance(args[0], int) else None
        return _MYSQL_CODES.get(num) if num is not None else None
    if module.startswith("pyodbc"):
        return _odbc_code(orig, message)
    if isinstance(orig, sqlite3.Error):
        low = message.lower()
        if "interrupted" in low:
            return "CANCELLED"
        if "readonly" in low or "read-only" in low or "query_only" in low:
            return "WRITE_OPERATION_REJECTED"
        if "unable to open database" in low:
            return "SOURCE_UNAVAILABLE"
        return None
    return None


_ODBC_STATES = {
    "28000": "AUTH_FAILED", "28P01": "AUTH_FAILED", "08001": "SOURCE_UNAVAILABLE",
    "08004": "SOURCE_UNAVAILABLE", "08S01": "SOURCE_UNAVAILABLE", "IM002": "SOURCE_UNAVAILABLE",
    "HYT01": "SOURCE_UNAVAILABLE", "HY008": "CANCELLED", "HY018": "CANCELLED",
    "HYT00": "TIMEOUT", "25006": "WRITE_OPERATION_REJECTED",
}  # fmt: skip


def _odbc_code(orig: Any, message: str) -> str | None:
    """pyodbc says ``(SQLSTATE, text)``; the text carries the database's own error."""
    args = getattr(orig, "args", ())
    state = str(args[0]) if args else ""
    low = message.lower()
    if state == "57014":
        return "TIMEOUT" if "statement timeout" in low else "CANCELLED"
    if "(1969)" in low or "(3024)" in low or "max_statement_time" in low:
        return "TIMEOUT"
    if "(1317)" in low or "interrupted" in low:
        return "CANCELLED"
    if "read only" in low or "read-only" in low or "readonly" in low or "(1792)" in low:
        return "WRITE_OPERATION_REJECTED"
    if "access denied" in low or "authentication failed" in low or "login failed" in low:
        return "AUTH_FAILED"
    return _ODBC_STATES.get(state)


@contextlib.contextmanager
def invalidate_on_error(fairy: Any) -> Iterator[None]:
    """Use a pooled connection; on any failure drop it from the pool (it may be half
    broken) and surface the failure as a ``JobError`` with the contract's code."""
    try:
        yield
    except JobError:
        fairy.invalidate()
        raise
    except Exception as exc:
        fairy.invalidate()
        raise map_db_error(exc) from exc
