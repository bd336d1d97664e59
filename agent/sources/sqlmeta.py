"""What SQL sources say about themselves: column types, connection tests, discovery.

Discovery goes through SQLAlchemy's inspector (the multi-table ``get_multi_*`` calls, one
query per kind of fact instead of one per table); row estimates come from the catalogue
(``pg_class.reltuples``, ``information_schema.tables.table_rows``), never from counting.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Collection, Sequence
from typing import Any

from shared.errors import JobError
from shared.rows import type_name_for_python

from .base import Column, Row
from .errors import invalidate_on_error, map_db_error
from .sqlhandle import SqlHandle

MAX_TABLES = 10_000

_PG_TYPES: dict[int, str] = {
    16: "boolean", 20: "integer", 21: "integer", 23: "integer", 26: "integer",
    700: "number", 701: "number", 1700: "decimal", 25: "string", 1043: "string",
    1042: "string", 19: "string", 18: "string", 1082: "date", 1114: "datetime",
    1184: "datetime", 1083: "time", 1266: "time", 1186: "interval", 17: "bytes",
    2950: "uuid", 114: "json", 3802: "json",
    1000: "array", 1005: "array", 1007: "array", 1016: "array", 1009: "array",
    1015: "array", 1021: "array", 1022: "array", 1231: "array", 1182: "array",
    1115: "array", 1185: "array", 2951: "array", 199: "array", 3807: "array",
}  # fmt: skip
_MYSQL_TYPES: dict[int, str] = {
    0: "decimal", 246: "decimal", 1: "integer", 2: "integer", 3: "integer", 8: "integer",
    9: "integer", 13: "integer", 4: "number", 5: "number", 10: "date", 7: "datetime",
    12: "datetime", 11: "interval", 15: "string", 253: "string", 254: "string",
    249: "string", 250: "string", 251: "string", 252: "string", 245: "json", 16: "integer",
    247: "string", 248: "string", 255: "bytes",
}  # fmt: skip


def _read_as_text(oid: int) -> bool:
    from .pgconn import read_as_text

    return read_as_text(oid)


def columns_from_description(
    dialect: str, description: Sequence[Any] | None, sample: Sequence[Row],
    *, binary: Collection[int] = (),
) -> list[Column]:
    """Column names and types from the cursor, refined by the first rows' values.
    ``binary``: the columns the driver's metadata says hold bytes (MySQL's charset 63)."""
    if not description:
        return []
    table = _PG_TYPES if dialect == "postgres" else _MYSQL_TYPES if dialect == "mysql" else {}
    out: list[Column] = []
    for i, d in enumerate(description):
        code = d[1]
        kind = table.get(code, "unknown") if isinstance(code, int) else "unknown"
        if i in binary:
            kind = "bytes"
        elif dialect == "mysql" and code == 16 and d[3] == 1:
            kind = "boolean"  # BIT(1), read as a flag (mysqlvalues.field_converters)
        if kind == "unknown" and dialect == "postgres" and isinstance(code, int) and _read_as_text(code):
            kind = "string"  # a type psycopg2 did not know: its text, always a string
        seen = next((row[i] for row in sample if row[i] is not None), None)
        if seen is not None and (kind == "unknown" or (kind == "string" and isinstance(seen, bytes))):
            kind = type_name_for_python(seen)
        elif code == 16 and dialect == "mysql" and isinstance(seen, bytes):
            kind = "bytes"  # BIT as a driver without the agent's converters reads it (mysqlclient)
        out.append({"name": str(d[0]), "type": kind})
    return out


_VERSION_SQL = {"postgres": "SHOW server_version", "mysql": "SELECT VERSION()"}
_TABLES_SQL = {
    "postgres": "SELECT count(*) FROM information_schema.tables WHERE table_schema NOT IN "
    "('pg_catalog', 'information_schema')",
    "mysql": "SELECT count(*) FROM information_schema.tables WHERE table_schema = DATABASE()",
    "sqlite": "SELECT count(*) FROM sqlite_master WHERE type IN ('table', 'view') "
    "AND name NOT LIKE 'sqlite_%'",
}


def test(source: SqlHandle) -> dict[str, Any]:
    """Connect, run ``SELECT 1``, read the server version and count the tables."""
    started = time.perf_counter()
    fairy = source.raw_connection()
    with invalidate_on_error(fairy):
        cur = fairy.dbapi_connection.cursor()
        cur.execute("SELECT 1")
        cur.fetchall()
        latency = round((time.perf_counter() - started) * 1000)
        if source.dialect == "sqlite":
            version = sqlite3.sqlite_version
        else:
            cur.execute(_VERSION_SQL[source.dialect])
            version = str(cur.fetchone()[0])
        cur.execute(_TABLES_SQL[source.dialect])
        tables = int(cur.fetchone()[0])
        cur.close()
    _release(fairy, source.dialect)
    return {"connected": True, "latencyMs": latency, "serverVersion": version, "tablesFound": tables}


def _release(fairy: Any, dialect: str) -> None:
    try:
        if dialect != "sqlite":
            fairy.dbapi_connection.rollback()
        fairy.close()
    except Exception:  # noqa: BLE001 - any failure here means "discard it"
        fairy.invalidate()


def discover(source: SqlHandle, request: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per table or view: schema, name, kind, rowEstimate, columns, keys."""
    try:
        return _discover(source, request)
    except JobError:
        raise
    except Exception as exc:
        raise map_db_error(exc) from exc


def _discover(source: SqlHandle, request: dict[str, Any]) -> list[dict[str, Any]]:
    from sqlalchemy import inspect
    from sqlalchemy.engine.reflection import ObjectKind

    insp = inspect(source.engine)
    schemas = _schemas(source.dialect, insp, request)
    tables: list[dict[str, Any]] = []
    for schema in schemas:
        names = insp.get_table_names(schema=schema)
        views = set(insp.get_view_names(schema=schema))
        if source.dialect == "postgres":
            views |= set(insp.get_materialized_view_names(schema=schema))
        if not names and not views:
            continue
        cols = insp.get_multi_columns(schema=schema, kind=ObjectKind.ANY)
        pks = insp.get_multi_pk_constraint(schema=schema, kind=ObjectKind.ANY)
        fks = insp.get_multi_foreign_keys(schema=schema, kind=ObjectKind.ANY)
        estimates = _row_estimates(source, schema)
        shown = schema or (insp.default_schema_name if source.dialect != "sqlite" else "main")
        for name in sorted(set(names) | views):
            key = (schema, name)
            tables.append(
                {
                    "schema": shown,
                    "name": name,
                    "kind": "view" if name in views else "table",
                    "rowEstimate": estimates.get(name),
                    "columns": [_column(c) for c in cols.get(key, [])],
                    "primaryKey": list((pks.get(key) or {}).get("constrained_columns") or []),
                    "foreignKeys": [_fk(f) for f in fks.get(key, [])],
                }
            )
            if len(tables) >= MAX_TABLES:
                return tables
    return tables


def _schemas(dialect: str, insp: Any, request: dict[str, Any]) -> list[str | None]:
    wanted = request.get("schemas") or ([request["schema"]] if request.get("schema") else None)
    if wanted is not None:
        if not isinstance(wanted, list) or not all(isinstance(s, str) for s in wanted):
            raise JobError("QUERY_FAILED", "'schemas' must be a list of names", retryable=False)
        return list(wanted)
    if dialect == "postgres":
        return [
            s
            for s in insp.get_schema_names()
            if s not in ("information_schema",) and not s.startswith("pg_")
        ]
    return [None]


def _column(c: dict[str, Any]) -> dict[str, Any]:
    try:
        type_name = str(c["type"])
    except Exception:  # noqa: BLE001 - some dialect types cannot render themselves; keep the class name
        type_name = type(c["type"]).__name__
    out: dict[str, Any] = {"name": c["name"], "type": type_name, "nullable": bool(c.get("nullable", True))}
    if c.get("default") is not None:
        out["default"] = str(c["default"])
    return out


def _fk(f: dict[str, Any]) -> dict[str, Any]:
    return {
        "columns": list(f.get("constrained_columns") or []),
        "referredSchema": f.get("referred_schema"),
        "referredTable": f.get("referred_table"),
        "referredColumns": list(f.get("referred_columns") or []),
    }


def _row_estimates(source: SqlHandle, schema: str | None) -> dict[str, int | None]:
    if source.dialect == "sqlite":
        return {}
    if source.dialect == "postgres":
        sql = (
            "SELECT c.relname, c.reltuples::bigint FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind IN ('r','p','m')"
        )
        arg = schema or "public"
    else:
        sql = (
            "SELECT table_name, table_rows FROM information_schema.tables "
            "WHERE table_schema = COALESCE(%s, DATABASE())"
        )
        arg = schema
    fairy = source.raw_connection()
    try:
        cur = fairy.dbapi_connection.cursor()
        cur.execute(sql, (arg,))
        rows = cur.fetchall()
        cur.close()
    finally:
        _release(fairy, source.dialect)
    # PostgreSQL says -1 for "never analysed": unknown, not negative.
    return {str(r[0]): (int(r[1]) if r[1] is not None and int(r[1]) >= 0 else None) for r in rows}
