"""MariaDB/MySQL values as the agent writes them: PyMySQL's converters, some replaced
(``decoders``, ``field_converters``), and the converters the ODBC path reuses
(``agent/sources/mysqlodbc.py``). docs/SOURCES.md, "MariaDB values";
tests/sources/test_mysql_types.py.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from shared import exactjson


def decoders(conn: Any) -> None:
    """PyMySQL's value converters, four replaced:

    - DATETIME and TIMESTAMP read by ``datetime.fromisoformat`` (C) where that gives what
      PyMySQL's own ``convert_datetime`` (a regex and int() per field) gives; it was ~16 %
      of the agent's CPU on a 7-column table.
    - DATE, DATETIME and TIMESTAMP values Python cannot hold (``NO_ZERO_DATE`` off): the
      all-zero date is NULL, a partial one (``2024-05-00 10:00:00``) the server's text in
      ISO shape (``2024-05-00T10:00:00``); PyMySQL handed both over as the raw text.
    - BIT as an unsigned integer (PyMySQL: the raw big-endian bytes, written as base64);
      a BIT(1) column becomes a boolean in ``field_converters``.
    - MySQL's JSON (protocol type 245) parsed, as PostgreSQL's json is: PyMySQL has no
      converter for it and hands over the text, which was written as one JSON string under
      a column typed ``json``. Integers past 64 bits stay exact (``shared.exactjson``).
      MariaDB sends its JSON columns as LONGTEXT (a string column, a string value), so
      this is checked against PyMySQL's own converter table, not a MySQL server.
    """
    decoders = getattr(conn, "decoders", None)
    if type(conn).__module__.startswith("pymysql") and isinstance(decoders, dict):
        from pymysql.constants import FIELD_TYPE

        decoders[FIELD_TYPE.DATETIME] = decoders[FIELD_TYPE.TIMESTAMP] = mysql_datetime()
        decoders[FIELD_TYPE.DATE] = mysql_date()
        decoders[FIELD_TYPE.JSON] = mysql_json
        decoders[FIELD_TYPE.BIT] = mysql_bit


def field_converters(cursor: Any) -> None:
    """Converters that need the column, not only its protocol type, set on PyMySQL's
    result before its first row is read: BIT(1) (a flag, as SQL Server's bit is) reads as
    a boolean. ``sqlmeta`` types the column from the same length."""
    result = getattr(cursor, "_result", None)
    fields, converters = getattr(result, "fields", None), getattr(result, "converters", None)
    if not fields or not isinstance(converters, list) or len(converters) != len(fields):
        return
    for i, field in enumerate(fields):
        if field.type_code == 16 and field.length == 1:  # FIELD_TYPE.BIT
            converters[i] = (None, mysql_bit_flag)


def binary_columns(cursor: Any) -> list[int]:
    """The columns PyMySQL reads as bytes: text types with the binary charset (63), i.e.
    BINARY, VARBINARY and the BLOBs, known from the metadata even when no row shows it."""
    fields = getattr(getattr(cursor, "_result", None), "fields", None) or ()
    return [i for i, f in enumerate(fields) if f.charsetnr == 63 and f.type_code in _TEXT_TYPES]


# VARCHAR, TINY/MEDIUM/LONG_BLOB, BLOB, VAR_STRING, STRING (PyMySQL's TEXT_TYPES but BIT).
_TEXT_TYPES = frozenset({15, 249, 250, 251, 252, 253, 254})


def mysql_bit(data: bytes) -> int:
    """A BIT(n) value, big-endian bytes, as the unsigned integer (BIT(64) up to 2**64-1)."""
    return int.from_bytes(data, "big")


def mysql_bit_flag(data: bytes) -> bool:
    return data != b"\x00"


def mysql_json(text: str | bytes) -> Any:
    """A MySQL JSON value as ``json.loads`` reads it (the text when it is not JSON)."""
    try:
        return exactjson.loads(text)
    except exactjson.JSONDecodeError:
        return text


@functools.cache
def mysql_datetime() -> Callable[[Any], Any]:
    """PyMySQL's ``convert_datetime``, cheaper for the text MariaDB/MySQL send,
    ``YYYY-MM-DD HH:MM:SS[.f]`` (1-6 fraction digits); anything else, and any value
    ``fromisoformat`` would read differently (an offset, hour 24, a week date), goes to
    ``convert_datetime`` itself (``tests/agent/sources/test_sql_sources.py``). PyMySQL
    hands a DATETIME's text over as ``str`` (decoded as ASCII; until 2026-12 only ``bytes``
    took the cheap path, so with the real driver it never did)."""
    from datetime import datetime

    from pymysql.converters import convert_datetime

    from_iso = datetime.fromisoformat

    def slow(obj: Any) -> Any:
        return _mysql_odd_date(convert_datetime(obj))

    def convert(obj: Any) -> Any:
        if type(obj) is str:
            text = obj
        elif type(obj) is bytes:
            try:
                text = obj.decode("ascii")
            except UnicodeDecodeError:
                return slow(obj)
        else:
            return slow(obj)
        n = len(text)
        if (n == 19 or (21 <= n <= 26 and text[19] == ".")) and text[4] == "-" and text[7] == "-" \
                and text[10] == " " and text[13] == ":" and text[16] == ":" and text[11:13] != "24":  # fmt: skip
            try:
                value = from_iso(text)
            except ValueError:
                return slow(obj)
            if value.tzinfo is None:
                return value
        return slow(obj)

    return convert


def _mysql_odd_date(value: Any) -> Any:
    """What PyMySQL could not make a date of (it returns the text): the all-zero date
    (``0000-00-00``, ``0000-00-00 00:00:00[.000000]``) as None, a partial one as its
    text with the ISO ``T`` between date and time."""
    if type(value) is bytes:
        value = value.decode("ascii", "replace")
    elif type(value) is not str:
        return value
    if value.startswith("0000-00-00") and not value.strip("0-:. "):
        return None
    return value.replace(" ", "T", 1)


@functools.cache
def mysql_date() -> Callable[[Any], Any]:
    """PyMySQL's ``convert_date``, with the zero and partial dates of ``_mysql_odd_date``."""
    from pymysql.converters import convert_date

    def convert(obj: Any) -> Any:
        return _mysql_odd_date(convert_date(obj))

    return convert
