"""Hot-path statements run on the driver's cursor, not through SQLAlchemy's execution.

A small job costs the relay about a dozen statements. Through ``Connection.execute`` each
costs ~19 µs of Python before SQLite spends ~2 µs on it (parameter processing, the
execution context, the result object); on the driver's own cursor the whole statement
takes ~2-3 µs (docs/BENCHMARKS.md). So the statements every job runs are written once as
SQL text with ``:name`` parameters, and ``execute`` runs them on the DBAPI connection
beneath the SQLAlchemy ``Connection``: inside the same transaction (and savepoint) as
everything else the store call does, committed or rolled back with it.

The text is plain SQL both dialects accept (``ON CONFLICT DO NOTHING``, ``RETURNING``:
SQLite 3.35+ and PostgreSQL); ``Sql`` keeps a ``%(name)s`` copy for psycopg2. Driver
errors are re-raised as SQLAlchemy's (``IntegrityError`` and the rest), as the rest of
the store sees them. Everything else keeps going through SQLAlchemy Core.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

_NAMED = re.compile(r"(?<![:\w]):(\w+)")


class Sql:
    """One statement's text for each paramstyle (sqlite3: ``:name``; psycopg2: ``%(name)s``)."""

    __slots__ = ("pg", "sqlite")

    def __init__(self, text: str) -> None:
        self.sqlite = " ".join(text.split())
        self.pg = _NAMED.sub(r"%(\1)s", self.sqlite.replace("%", "%%"))


def execute(conn: Connection, stmt: Sql, params: dict[str, Any]) -> Any:
    """Run ``stmt`` on ``conn``'s driver connection; returns the driver's cursor."""
    dialect = conn.dialect
    sql = stmt.pg if dialect.name == "postgresql" else stmt.sqlite
    cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cur.execute(sql, params)
    except dialect.loaded_dbapi.Error as exc:
        cur.close()
        # hide_parameters: a chunk's bytes or a sealed query never end up in a log line
        raise DBAPIError.instance(
            sql, params, exc, dialect.loaded_dbapi.Error, hide_parameters=True, dialect=dialect
        ) from exc
    return cur


def one(conn: Connection, stmt: Sql, params: dict[str, Any]) -> tuple[Any, ...] | None:
    """The first row (a tuple) or None."""
    cur = execute(conn, stmt, params)
    try:
        return cur.fetchone()  # type: ignore[no-any-return]
    finally:
        cur.close()


def tuples(conn: Connection, stmt: Sql, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Every row, as tuples."""
    cur = execute(conn, stmt, params)
    try:
        return cur.fetchall()  # type: ignore[no-any-return]
    finally:
        cur.close()


def rows(conn: Connection, stmt: Sql, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Every row, as dicts keyed by column name."""
    cur = execute(conn, stmt, params)
    try:
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    finally:
        cur.close()


def count(conn: Connection, stmt: Sql, params: dict[str, Any]) -> int:
    """How many rows a write touched."""
    cur = execute(conn, stmt, params)
    try:
        return int(cur.rowcount)
    finally:
        cur.close()


def as_bytes(value: Any) -> Any:
    """psycopg2 hands ``bytea`` back as a memoryview; SQLAlchemy would have made bytes."""
    return bytes(value) if isinstance(value, memoryview) else value
