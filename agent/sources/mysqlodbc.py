"""MariaDB/MySQL values through MariaDB Connector/ODBC, as the direct path (PyMySQL,
``mysqlvalues.decoders``) gives them.

pyodbc reads DATE, DATETIME/TIMESTAMP and TIME into Python's types in C, and a value
Python cannot hold failed the whole job there: the all-zero and partial dates
(``NO_ZERO_DATE``/``NO_ZERO_IN_DATE`` off: ``0000-00-00``, ``2024-05-00 10:00:00``), and a
TIME outside 0-24 h (``-838:59:59``, ``100:00:00``). BIT(n>1) came out as bytes (base64).

pyodbc fixes ``cursor.description`` at execute but looks its output converters up at the
first fetch, so ``after_execute`` (between the two) sets the converters on the connection:
with one, pyodbc hands over the driver's text for the value (``b'2024-00-00'``,
``b'-838:59:59.000000'``), which goes through the direct path's own converters:

- DATE, DATETIME, TIMESTAMP: a date/datetime as before (the same objects pyodbc made,
  by ``fromisoformat`` first), the all-zero date NULL, a partial one its ISO-shaped text;
- TIME: a ``timedelta`` (an ``interval`` column), past 24 h and below zero too;
- BIT(n>1): the unsigned integer (an ``integer`` column); BIT(1) is SQL_BIT, which pyodbc
  already reads as a boolean. BIT and BINARY both reach pyodbc as SQL_BINARY; only the
  driver's type name (``SQLColAttribute``, ``SQL_DESC_TYPE_NAME``) tells them apart, and
  pyodbc does not expose it nor the statement handle. ``_type_names`` asks the driver
  manager through ctypes with the handle read from pyodbc's ``Cursor`` struct, after
  checking that struct's layout; where that is not possible, BIT stays bytes.

Only for MariaDB Connector/ODBC to a MariaDB/MySQL server (``SQL_DRIVER_NAME`` and
``SQL_DBMS_NAME``, asked once per pooled connection): the text handed to a converter is
that driver's behaviour. The converters live on the pyodbc connection, which the pool
reuses: they are set afresh for every job and cleared when the job ends
(``sqlodbc.end_job``), so discovery, tests and other jobs read as pyodbc does.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import functools
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .base import Row

SQL_TYPE_DATE, SQL_TYPE_TIME, SQL_TYPE_TIMESTAMP = 91, 92, 93
_BIT_MAX = 64  # BIT(n): n <= 64, the column size the driver reports for it
_SQL_DESC_TYPE_NAME = 14


class ResultFix:
    """What a result set needs after pyodbc: column types, BIT columns' values."""

    __slots__ = ("bits", "types")

    def __init__(self, types: dict[int, str], bits: Sequence[int]) -> None:
        self.types = types
        self.bits = tuple(bits)

    def rows(self, rows: Sequence[Any]) -> list[Row]:
        """pyodbc's rows as tuples, BIT values as unsigned integers."""
        if not self.bits:
            return [tuple(r) for r in rows]
        bits = self.bits
        out: list[Row] = []
        for row in rows:
            values = list(row)
            for i in bits:
                v = values[i]
                if v is not None:
                    values[i] = int.from_bytes(v, "big")  # mysqlvalues.mysql_bit
            out.append(tuple(values))
        return out

    def columns(self, columns: list[dict[str, str]]) -> list[dict[str, str]]:
        for i, kind in self.types.items():
            columns[i]["type"] = kind
        return columns


def is_mariadb_odbc(dbms: str, driver: str) -> bool:
    """MariaDB Connector/ODBC (``SQL_DRIVER_NAME``) talking to MariaDB/MySQL (``dbms``,
    ``SQL_DBMS_NAME`` as ``sqlodbc.flavour_of`` reads it: ``mysql``)."""
    driver = driver.lower()
    return dbms == "mysql" and ("maodbc" in driver or "mariadb" in driver)


def after_execute(conn: Any, cursor: Any) -> ResultFix | None:
    """Set this job's converters (before the first fetch) on a MariaDB Connector/ODBC
    connection (``sqlodbc.after_execute`` tells); the result's fixes, if any."""
    conn.clear_output_converters()
    for sql_type, convert in _converters().items():
        conn.add_output_converter(sql_type, convert)
    description = cursor.description
    if not description:
        return None
    types = {i: "interval" for i, d in enumerate(description) if d[1] is dt.time}
    # BIT(2..64) is SQL_BINARY with the size in bits; ask the driver only about those.
    maybe = [i for i, d in enumerate(description)
             if d[1] is bytearray and isinstance(d[3], int) and 2 <= d[3] <= _BIT_MAX]  # fmt: skip
    bits: list[int] = []
    if maybe:
        names = _type_names(cursor, maybe, len(description))
        bits = [i for i in maybe if names.get(i) == "bit"]
        types.update(dict.fromkeys(bits, "integer"))
    return ResultFix(types, bits) if types or bits else None


def end_job(conn: Any) -> None:
    """Back to pyodbc's own reading (nothing of this job's stays on the connection)."""
    conn.clear_output_converters()


@functools.cache
def _converters() -> dict[int, Callable[[bytes], Any]]:
    from .mysqlvalues import mysql_datetime

    return {SQL_TYPE_DATE: _date_converter(), SQL_TYPE_TIMESTAMP: mysql_datetime(),
            SQL_TYPE_TIME: _time_converter()}  # fmt: skip


def _date_converter() -> Callable[[bytes], Any]:
    """``mysqlvalues.mysql_date`` (PyMySQL's ``convert_date`` + the odd dates), with
    ``date.fromisoformat`` first for the usual ``YYYY-MM-DD``."""
    from .mysqlvalues import mysql_date

    slow, from_iso = mysql_date(), dt.date.fromisoformat

    def convert(raw: bytes) -> Any:
        if len(raw) == 10 and raw[4] == 45 and raw[7] == 45 and raw.isascii():  # b"-"
            try:
                return from_iso(raw.decode("ascii"))
            except ValueError:
                pass
        return slow(raw)

    return convert


def _time_converter() -> Callable[[bytes], Any]:
    """PyMySQL's ``convert_timedelta`` (what the direct path reads TIME with), the usual
    ``HH:MM:SS`` and ``HH:MM:SS.ffffff`` without its regex."""
    from pymysql.converters import convert_timedelta

    delta = dt.timedelta

    def convert(raw: bytes) -> Any:
        n = len(raw)
        if (n == 8 or (n == 15 and raw[8] == 46)) and raw[2] == 58 and raw[5] == 58:  # . :
            h, m, s, f = raw[0:2], raw[3:5], raw[6:8], raw[9:] or b"0"
            if h.isdigit() and m.isdigit() and s.isdigit() and f.isdigit():  # ASCII digits
                return delta(0, int(h) * 3600 + int(m) * 60 + int(s), int(f))
        return convert_timedelta(raw)

    return convert


# ---------------------------------------------------------------- the driver's type names


def _type_names(cursor: Any, columns: Sequence[int], count: int) -> dict[int, str]:
    """``SQL_DESC_TYPE_NAME`` of ``columns`` (0-based), lower case; {} where not known."""
    api = _odbc_api()
    hstmt = _statement_handle(cursor) if api is not None else None
    if api is None or hstmt is None:
        return {}
    num_cols, col_attribute = api
    n = ctypes.c_short()
    if num_cols(hstmt, ctypes.byref(n)) not in (0, 1) or n.value != count:
        return {}  # not the statement pyodbc described
    out: dict[int, str] = {}
    for i in columns:
        buf, size, number = ctypes.create_string_buffer(128), ctypes.c_short(), ctypes.c_ssize_t()
        args = (buf, len(buf), ctypes.byref(size), ctypes.byref(number))
        if col_attribute(hstmt, i + 1, _SQL_DESC_TYPE_NAME, *args) in (0, 1):
            out[i] = buf.value.decode("ascii", "replace").lower()
    return out


def _statement_handle(cursor: Any) -> int | None:
    """pyodbc's ``Cursor`` is ``PyObject_HEAD; Connection* cnxn; HSTMT hstmt; ...`` (4.x
    and 5.x): the handle is trusted only when the slot before it holds this cursor's
    connection object."""
    base = id(cursor) + object.__basicsize__
    word = ctypes.sizeof(ctypes.c_void_p)
    try:
        if ctypes.c_void_p.from_address(base).value != id(cursor.connection):
            return None
        return ctypes.c_void_p.from_address(base + word).value or None
    except Exception:  # noqa: BLE001 - a closed cursor, another layout: BIT stays bytes
        return None


@functools.cache
def _odbc_api() -> tuple[Any, Any] | None:
    """``SQLNumResultCols`` and ``SQLColAttribute`` of the driver manager pyodbc uses: looked
    up through pyodbc's own module (its dependencies are searched) where dlsym allows."""
    try:
        import pyodbc

        if sys.platform == "win32":
            lib = ctypes.WinDLL("odbc32")  # type: ignore[attr-defined,unused-ignore]
        else:
            lib = ctypes.CDLL(pyodbc.__file__)
        num_cols, col_attribute = lib.SQLNumResultCols, lib.SQLColAttribute
    except (OSError, AttributeError, ImportError):
        return None
    num_cols.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_short)]
    num_cols.restype = ctypes.c_short
    col_attribute.argtypes = [ctypes.c_void_p, ctypes.c_ushort, ctypes.c_ushort, ctypes.c_void_p,
                              ctypes.c_short, ctypes.POINTER(ctypes.c_short), ctypes.c_void_p]  # fmt: skip
    col_attribute.restype = ctypes.c_short
    return num_cols, col_attribute
