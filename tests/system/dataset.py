"""A few thousand awkward rows in SQLite, PostgreSQL and MariaDB, and how to compare them.

The same deterministic rows (decimals, dates, timestamps, NULLs, unicode, bytes) go into
each database; system tests read them through relay + agent and compare every value with
a direct read through the plain DBAPI driver, converted by the contract's value rules.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import sqlite3
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from shared.rows import json_safe

ROWS = 3000
_NAMES = ["Zoë Ørsted", "日本語テキスト", "emoji 🚀🎉", 'quote "and", comma', "line\nbreak",
          "plain", "tab\there", "ß∂ƒ©", ""]  # fmt: skip


def make_rows(n: int = ROWS) -> list[tuple[Any, ...]]:
    """(id, name, amount, issued, created, ratio, note, active, raw) tuples."""
    base = dt.datetime(2024, 1, 1, 8, 30, 0)
    out = []
    for i in range(1, n + 1):
        out.append(
            (
                i,
                f"{_NAMES[i % len(_NAMES)]} #{i}",
                decimal.Decimal(i * 7919 % 1_000_000) / decimal.Decimal(100) - decimal.Decimal("1234.56"),
                dt.date(2020, 1, 1) + dt.timedelta(days=i % 2000),
                base + dt.timedelta(minutes=17 * i, microseconds=(i * 37) % 1_000_000),
                (i % 97) / 7.0,
                None if i % 7 == 0 else f"note {i}",
                i % 3 == 0,
                bytes([(i * k) % 256 for k in range(1, 9)]),
            )
        )
    return out


SELECT_COLUMNS = "id, name, amount, issued, created, ratio, note, active, raw"


def create_sqlite(path: Path, table: str = "items") -> None:
    rows = make_rows()
    con = sqlite3.connect(path)
    try:
        # Dates as ISO text and decimals as text: SQLite has no such types, and text keeps
        # the values exact for the comparison.
        con.execute(
            f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, name TEXT NOT NULL, amount TEXT,"
            " issued TEXT, created TEXT, ratio REAL, note TEXT, active INTEGER, raw BLOB)"
        )
        con.executemany(
            f"INSERT INTO {table} VALUES (?,?,?,?,?,?,?,?,?)",
            [(r[0], r[1], str(r[2]), r[3].isoformat(), r[4].isoformat(sep=" "), r[5], r[6],
              int(r[7]), r[8]) for r in rows],
        )
        con.commit()
    finally:
        con.close()


def sqlite_read(path: Path, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    con = sqlite3.connect(path)
    try:
        cur = con.execute(sql)
        return [d[0] for d in cur.description], cur.fetchall()
    finally:
        con.close()


# ---------------------------------------------------------------- PostgreSQL


def _pg_connect(url: str) -> Any:
    import psycopg2

    u = urlsplit(url)
    return psycopg2.connect(
        host=u.hostname, port=u.port or 5432, user=u.username, password=u.password or None,
        dbname=u.path.lstrip("/"), connect_timeout=5,
    )  # fmt: skip


def create_postgres(url: str, schema: str) -> None:
    rows = make_rows()
    con = _pg_connect(url)
    try:
        with con, con.cursor() as cur:
            cur.execute(f"CREATE SCHEMA {schema}")
            cur.execute(
                f"CREATE TABLE {schema}.items (id integer PRIMARY KEY, name text NOT NULL,"
                " amount numeric(14,2), issued date, created timestamp, ratio double precision,"
                " note text, active boolean, raw bytea, created_tz timestamptz, uid uuid,"
                " doc jsonb)"
            )
            cur.executemany(
                f"INSERT INTO {schema}.items VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                [(*r, r[4].replace(tzinfo=dt.UTC), str(uuid.UUID(int=r[0] * 7919)),
                  f'{{"n": {r[0]}, "tags": ["a", "ü"]}}') for r in rows],
            )
    finally:
        con.close()


def drop_postgres(url: str, schema: str) -> None:
    con = _pg_connect(url)
    try:
        with con, con.cursor() as cur:
            cur.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        con.close()


def pg_read(url: str, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    con = _pg_connect(url)
    try:
        with con.cursor() as cur:
            cur.execute(sql)
            return [d[0] for d in cur.description], cur.fetchall()
    finally:
        con.close()


def pg_scalar(url: str, sql: str) -> Any:
    return pg_read(url, sql)[1][0][0]


# ---------------------------------------------------------------- MariaDB


def _my_connect(url: str) -> Any:
    import pymysql

    u = urlsplit(url)
    return pymysql.connect(
        host=u.hostname, port=u.port or 3306, user=u.username, password=u.password or "",
        database=u.path.lstrip("/") or None, connect_timeout=5, charset="utf8mb4",
    )  # fmt: skip


def create_mysql(url: str, table: str) -> None:
    rows = make_rows()
    con = _my_connect(url)
    try:
        with con.cursor() as cur:
            cur.execute(
                f"CREATE TABLE {table} (id int PRIMARY KEY, name varchar(200) NOT NULL,"
                " amount decimal(14,2), issued date, created datetime(6), ratio double,"
                " note text, active boolean, raw varbinary(16))"
                " CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
            )
            cur.executemany(f"INSERT INTO {table} VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)", rows)
        con.commit()
    finally:
        con.close()


def drop_mysql(url: str, table: str) -> None:
    con = _my_connect(url)
    try:
        with con.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {table}")
        con.commit()
    finally:
        con.close()


def mysql_read(url: str, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    con = _my_connect(url)
    try:
        with con.cursor() as cur:
            cur.execute(sql)
            return [d[0] for d in cur.description], list(cur.fetchall())
    finally:
        con.close()


# ---------------------------------------------------------------- comparison


def same_value(expected: Any, got: Any) -> bool:
    """Does the API's JSON value ``got`` represent the source value ``expected`` exactly?"""
    if isinstance(expected, dt.datetime) and expected.tzinfo is not None:
        # Aware timestamps may come back in another zone: compare the instants.
        return isinstance(got, str) and dt.datetime.fromisoformat(got) == expected
    if isinstance(expected, float):
        if not math.isfinite(expected):
            return got is None
        return isinstance(got, (int, float)) and float(got) == expected
    if isinstance(expected, bool):
        return got in (expected, int(expected))
    if isinstance(expected, (bytes, memoryview)):
        return got == json_safe(bytes(expected))
    if isinstance(expected, str) and isinstance(got, (dict, list)):
        # A json column the direct driver left as text.
        import json

        return json.loads(expected) == got
    return got == json_safe(expected)


def mismatches(
    columns: list[str], expected: list[tuple[Any, ...]], got: list[dict[str, Any]], limit: int = 10
) -> list[str]:
    """Human-readable differences between a direct read and the API's rows (empty = same)."""
    problems: list[str] = []
    if len(got) != len(expected):
        problems.append(f"row count: expected {len(expected)}, got {len(got)}")
    for i, (want, row) in enumerate(zip(expected, got, strict=False)):
        if list(row.keys()) != columns:
            problems.append(f"row {i}: keys {list(row.keys())} != columns {columns}")
        for col, w in zip(columns, want, strict=True):
            if not same_value(w, row.get(col)):
                problems.append(f"row {i} column {col}: expected {w!r}, got {row.get(col)!r}")
        if len(problems) >= limit:
            break
    return problems
