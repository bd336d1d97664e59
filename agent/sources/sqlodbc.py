"""ODBC sources through pyodbc: SQL Server (``mssql+pyodbc://``) and any ODBC DSN or string.

There is no SQLAlchemy dialect for "any ODBC database", so this side uses SQLAlchemy for
what it has (URL parsing and SQL Server's connection-string builder, ``QueuePool`` for
pooling, pre-ping and recycling) and ODBC's own catalogue functions (``SQLTables``,
``SQLColumns``, ``SQLPrimaryKeys``, ``SQLForeignKeys``) for discovery. What the database
really is comes from ``SQLGetInfo(SQL_DBMS_NAME)``: a PostgreSQL, MariaDB/MySQL or
SQLite behind ODBC gets that database's read-only session, statement timeout and
tokenizer rules; SQL Server gets the T-SQL rules. pyodbc is imported here only, on the
first ODBC job (it needs libodbc).
"""

from __future__ import annotations

import datetime as dt
import decimal
import time
import uuid
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from shared.errors import JobError

from . import mysqlodbc
from .errors import invalidate_on_error
from .sqlhandle import SqlHandle
from .sqloptions import SqlOptions

_FLAVOURS = (
    # (pattern in the DBMS or driver name, flavour)
    ("postgres", "postgres"), ("psql", "postgres"), ("maria", "mysql"), ("mysql", "mysql"),
    ("sqlite", "sqlite"), ("sql server", "mssql"), ("sqlsrv", "mssql"), ("freetds", "mssql"),
)  # fmt: skip
# Attributes that make a driver stream instead of reading the whole result first.
_STREAMING = {
    "postgres": {"UseDeclareFetch": "1", "Fetch": "{batch}"},  # psqlodbc: a cursor per query
    "mysql": {"NO_CACHE": "1"},  # MariaDB Connector/ODBC: forward-only, unbuffered
}
_TYPES: dict[type, str] = {
    bool: "boolean", int: "integer", float: "number", decimal.Decimal: "decimal", str: "string",
    bytes: "bytes", bytearray: "bytes", dt.datetime: "datetime", dt.date: "date",
    dt.time: "time", uuid.UUID: "uuid",
}  # fmt: skip


def flavour_of(name: str) -> str:
    low = name.lower()
    return next((f for pattern, f in _FLAVOURS if pattern in low), "generic")


def quote_value(value: str) -> str:
    """An ODBC attribute value, braced when it holds ``;``, ``{``, ``}`` or edge spaces."""
    if any(ch in value for ch in ";{}=") or value != value.strip():
        return "{" + value.replace("}", "}}") + "}"
    return value


def parse_attributes(conn_str: str) -> list[tuple[str, str]]:
    """``KEY=VALUE;KEY={va;lue}`` -> pairs (braced values unescaped)."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(conn_str)
    while i < n:
        eq = conn_str.find("=", i)
        if eq < 0:
            break
        key = conn_str[i:eq].strip().lstrip(";").strip()
        j = eq + 1
        if j < n and conn_str[j] == "{":
            k, parts = j + 1, []
            while k < n:
                if conn_str[k] == "}":
                    if conn_str.startswith("}}", k):
                        parts.append("}")
                        k += 2
                        continue
                    break
                parts.append(conn_str[k])
                k += 1
            value, i = "".join(parts), conn_str.find(";", k) + 1 or n
        else:
            end = conn_str.find(";", j)
            value, i = (conn_str[j:], n) if end < 0 else (conn_str[j:end], end + 1)
        if key:
            out.append((key, value.strip() if not value.startswith(" ") else value))
    return out


def is_raw_connection_string(url: str) -> bool:
    return "://" not in url.split(";", 1)[0] and "=" in url


def build_connection_string(kind: str, url: str, password: str | None, opts: SqlOptions) -> str:
    """The ODBC connection string for an ``odbc`` or ``mssql`` source (password included)."""
    if kind == "mssql":
        pairs = _mssql_pairs(url)
    elif is_raw_connection_string(url):
        pairs = parse_attributes(url)
    else:
        pairs = _dsn_pairs(url)
    keys = {k.lower() for k, _ in pairs}
    for k, v in opts.driver_args.items():
        if k.lower() not in keys:
            pairs.append((k, v))
            keys.add(k.lower())
    driver = next((v for k, v in pairs if k.lower() == "driver"), "")
    dsn = next((v for k, v in pairs if k.lower() == "dsn"), "")
    for k, v in _STREAMING.get(flavour_of(driver or _dsn_driver(dsn)), {}).items():
        if k.lower() not in keys:
            pairs.append((k, v.format(batch=min(opts.batch_size, 10_000))))
    if password and not keys & {"pwd", "password"}:
        pairs.append(("PWD", password))
    return ";".join(f"{k}={quote_value(v)}" for k, v in pairs)


def _dsn_pairs(url: str) -> list[tuple[str, str]]:
    parts = urlsplit(url)
    if parts.scheme.lower() != "odbc":
        raise JobError("SOURCE_UNAVAILABLE", "an odbc source needs odbc://DSN or an ODBC connection string")
    query = dict(parse_qsl(parts.query))
    if "odbc_connect" in query:
        return parse_attributes(query.pop("odbc_connect"))
    host = unquote(parts.hostname or parts.netloc.rpartition("@")[2])
    if not host:
        raise JobError("SOURCE_UNAVAILABLE", "an odbc:// URL needs a DSN name: odbc://MyDSN")
    pairs = [("DSN", unquote(parts.netloc.rpartition("@")[2]))]
    if parts.username:
        pairs.append(("UID", unquote(parts.username)))
    if parts.password:
        pairs.append(("PWD", unquote(parts.password)))
    pairs += list(query.items())
    return pairs


def _mssql_pairs(url: str) -> list[tuple[str, str]]:
    from sqlalchemy.dialects.mssql.pyodbc import MSDialect_pyodbc
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception as exc:
        raise JobError("SOURCE_UNAVAILABLE", "the mssql source has an unreadable URL") from exc
    if "odbc_connect" in parsed.query:
        return parse_attributes(str(parsed.query["odbc_connect"]))
    args, _ = MSDialect_pyodbc().create_connect_args(parsed)
    return parse_attributes(str(args[0]))


def _dsn_driver(dsn: str) -> str:
    if not dsn:
        return ""
    import pyodbc

    try:
        return str(pyodbc.dataSources().get(dsn, ""))
    except pyodbc.Error:
        return ""


# ---------------------------------------------------------------- pool


def make_pool(source: SqlHandle, conn_str: str, opts: SqlOptions) -> Any:
    """A SQLAlchemy ``QueuePool`` of pyodbc connections, read-only access mode requested."""
    import pyodbc
    from sqlalchemy.pool import QueuePool
    from sqlalchemy.pool.base import _ConnDialect

    pyodbc.native_uuid = True  # GUIDs as uuid.UUID, not text

    def creator() -> Any:
        conn = pyodbc.connect(conn_str, autocommit=False, readonly=True, timeout=opts.connect_timeout)
        source.note_flavour(str(conn.getinfo(pyodbc.SQL_DBMS_NAME) or ""))
        if source.flavour == "mysql":
            _mysql_text_rules(conn)
        return conn

    class _Ping(_ConnDialect):
        # The pool's pre-ping needs a dialect; ODBC has no universal ping statement.
        def _do_ping_w_event(self, dbapi_connection: Any) -> bool:
            cur = dbapi_connection.cursor()
            try:
                cur.execute("SELECT 1" if source.flavour != "generic" else "SELECT 1 FROM (VALUES (1)) v(x)")
                cur.fetchall()
            finally:
                cur.close()
            dbapi_connection.rollback()
            return True

    return QueuePool(
        creator,
        pool_size=opts.pool_size,
        max_overflow=opts.max_overflow,
        recycle=opts.pool_recycle,
        pre_ping=opts.pool_pre_ping and source.flavour != "generic",
        timeout=opts.pool_timeout,
        dialect=_Ping(),
    )


# ---------------------------------------------------------------- per job


def begin_job(source: SqlHandle, conn: Any, timeout: float | None) -> None:
    """The read-only session / transaction and the statement timeout of the real database."""
    flavour = source.flavour
    cur = conn.cursor()
    try:
        if flavour == "postgres":
            cur.execute("SET TRANSACTION READ ONLY")
            cur.execute("SET LOCAL standard_conforming_strings = on")
            cur.execute(f"SET LOCAL statement_timeout = {int(timeout * 1000) if timeout else 0}")
        elif flavour == "mysql":
            cur.execute("SET SESSION TRANSACTION READ ONLY")
            cur.execute(f"SET SESSION max_statement_time = {float(timeout or 0):.3f}")
        elif flavour == "sqlite":
            cur.execute("PRAGMA query_only = ON")
    finally:
        cur.close()
    if timeout and flavour in ("mssql", "generic"):
        try:
            conn.timeout = max(1, int(timeout + 0.999))  # SQL_ATTR_QUERY_TIMEOUT where supported
        except Exception:  # noqa: BLE001 - not every driver has it; the stream's deadline still holds
            source.log_debug("the ODBC driver has no query timeout attribute")


def _mysql_text_rules(conn: Any) -> None:
    """MariaDB/MySQL behind ODBC: the sql_mode the guard's lexer assumes (no ANSI_QUOTES,
    no NO_BACKSLASH_ESCAPES...), as on the native path (``mysqlsession``)."""
    from .mysqlsession import MUST_NOT_HOLD, safe_sql_mode

    cur = conn.cursor()
    try:
        mode = safe_sql_mode(str(cur.execute("SELECT @@SESSION.sql_mode").fetchone()[0] or ""))
        cur.execute("SET SESSION sql_mode = ?", mode)
        now = str(cur.execute("SELECT @@SESSION.sql_mode").fetchone()[0] or "").upper().split(",")
        if any(m in now for m in MUST_NOT_HOLD):
            raise JobError("SOURCE_UNAVAILABLE", "the ODBC MariaDB/MySQL session keeps ANSI_QUOTES "
                           "or NO_BACKSLASH_ESCAPES", retryable=False)
    finally:
        cur.close()
    conn.rollback()


def after_execute(conn: Any, info: dict[Any, Any], cursor: Any) -> mysqlodbc.ResultFix | None:
    """Between the execute and the first fetch (pyodbc looks its output converters up at
    the fetch): MariaDB Connector/ODBC's values read as the direct path reads them
    (``mysqlodbc``); ``info`` is the pooled connection's, where what the driver is stays
    known. Other databases and drivers: nothing changes."""
    known = info.get(_MARIADB_ODBC)
    if known is None:  # asked once per pooled connection
        import pyodbc

        try:
            dbms = flavour_of(str(conn.getinfo(pyodbc.SQL_DBMS_NAME) or ""))
            driver = str(conn.getinfo(pyodbc.SQL_DRIVER_NAME) or "")
        except pyodbc.Error:
            dbms, driver = "", ""
        known = info[_MARIADB_ODBC] = mysqlodbc.is_mariadb_odbc(dbms, driver)
    return mysqlodbc.after_execute(conn, cursor) if known else None


_MARIADB_ODBC = "mc_mariadb_odbc"  # pooled connection info key: what after_execute found


def end_job(source: SqlHandle, conn: Any) -> None:
    """Back to the pool clean: no output converters (``after_execute``), rolled back, and
    named / advisory locks released (they are not transactional). SQL Server: a rollback;
    session-owned application locks need EXEC (refused by the guard), and this pool does
    not run sp_reset_connection."""
    mysqlodbc.end_job(conn)
    conn.rollback()
    unlock = {"mysql": "DO RELEASE_ALL_LOCKS()", "postgres": "SELECT pg_advisory_unlock_all()"}
    sql = unlock.get(source.flavour)
    if sql is not None:
        cur = conn.cursor()
        try:
            cur.execute(sql)
        finally:
            cur.close()
        conn.rollback()


def columns(description: Any, fix: mysqlodbc.ResultFix | None = None) -> list[dict[str, str]]:
    out = []
    for d in description or ():
        kind = _TYPES.get(d[1], "unknown") if isinstance(d[1], type) else "unknown"
        out.append({"name": str(d[0]), "type": kind})
    return fix.columns(out) if fix is not None else out


# ---------------------------------------------------------------- test and discover

_VERSION_SQL = {"postgres": "SHOW server_version", "mysql": "SELECT VERSION()",
                "sqlite": "SELECT sqlite_version()", "mssql": "SELECT @@VERSION"}  # fmt: skip
_SYSTEM_SCHEMAS = frozenset({"information_schema", "pg_catalog", "sys", "mysql",
                             "performance_schema", "INFORMATION_SCHEMA"})  # fmt: skip


def test(source: SqlHandle) -> dict[str, Any]:
    import pyodbc

    started = time.perf_counter()
    fairy = source.raw_connection()
    with invalidate_on_error(fairy):
        conn = fairy.dbapi_connection
        cur = conn.cursor()
        if source.flavour != "generic":
            cur.execute("SELECT 1").fetchall()
        latency = round((time.perf_counter() - started) * 1000)
        version = f"{conn.getinfo(pyodbc.SQL_DBMS_NAME)} {conn.getinfo(pyodbc.SQL_DBMS_VER)}"
        if source.flavour in _VERSION_SQL:
            try:
                version = str(cur.execute(_VERSION_SQL[source.flavour]).fetchone()[0]).splitlines()[0]
            except pyodbc.Error:
                conn.rollback()
        tables = len(_table_list(cur))
        cur.close()
        conn.rollback()
    fairy.close()
    return {"connected": True, "latencyMs": latency, "serverVersion": version, "tablesFound": tables}


def _table_list(cur: Any, schema: str | None = None) -> list[tuple[Any, Any, str, str]]:
    """(catalog, schema, name, kind) of the user's tables and views (MySQL: this database)."""
    import pyodbc

    catalog = None
    if flavour_of(str(cur.connection.getinfo(pyodbc.SQL_DBMS_NAME))) == "mysql":
        catalog = cur.connection.getinfo(pyodbc.SQL_DATABASE_NAME) or None
    out = []
    for row in cur.tables(catalog=catalog, schema=schema, tableType="TABLE,VIEW").fetchall():
        if row.table_schem in _SYSTEM_SCHEMAS or str(row.table_name).startswith("sqlite_"):
            continue
        out.append((row.table_cat, row.table_schem, row.table_name, str(row.table_type).lower()))
    return out


def discover(source: SqlHandle, request: dict[str, Any], max_tables: int) -> list[dict[str, Any]]:
    wanted = request.get("schemas") or ([request["schema"]] if request.get("schema") else [None])
    fairy = source.raw_connection()
    with invalidate_on_error(fairy):
        cur = fairy.dbapi_connection.cursor()
        out: list[dict[str, Any]] = []
        for schema in wanted:
            for cat, sch, name, kind in _table_list(cur, schema)[: max_tables - len(out)]:
                out.append(_describe(cur, cat, sch, name, kind))
        estimates = _estimates(source, cur, {(t["schema"], t["name"]) for t in out})
        for t in out:
            t["rowEstimate"] = estimates.get((t["schema"], t["name"]))
        cur.close()
        fairy.dbapi_connection.rollback()
    fairy.close()
    return out


def _describe(cur: Any, cat: Any, schema: Any, name: str, kind: str) -> dict[str, Any]:
    cols = [
        {"name": c.column_name, "type": str(c.type_name), "nullable": bool(c.nullable)}
        for c in cur.columns(table=name, catalog=cat, schema=schema).fetchall()
    ]
    pk_rows = sorted(
        cur.primaryKeys(table=name, catalog=cat, schema=schema).fetchall(), key=lambda r: r.key_seq
    )
    fks: dict[str, dict[str, Any]] = {}
    for r in cur.foreignKeys(foreignTable=name, foreignCatalog=cat, foreignSchema=schema).fetchall():
        fk = fks.setdefault(
            r.fk_name or f"{r.pktable_name}#{len(fks)}",
            {"columns": [], "referredSchema": r.pktable_schem, "referredTable": r.pktable_name,
             "referredColumns": []},
        )  # fmt: skip
        fk["columns"].append(r.fkcolumn_name)
        fk["referredColumns"].append(r.pkcolumn_name)
    return {"schema": schema or cat or "main", "name": name, "kind": "view" if "view" in kind else "table",
            "rowEstimate": None, "columns": cols, "primaryKey": [r.column_name for r in pk_rows],
            "foreignKeys": list(fks.values())}  # fmt: skip


_ESTIMATE_SQL = {
    "postgres": "SELECT n.nspname, c.relname, c.reltuples::bigint FROM pg_class c JOIN "
    "pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r','p','m')",
    "mysql": "SELECT table_schema, table_name, table_rows FROM information_schema.tables "
    "WHERE table_schema = DATABASE()",
    "mssql": "SELECT s.name, t.name, SUM(p.rows) FROM sys.tables t JOIN sys.schemas s ON "
    "s.schema_id = t.schema_id JOIN sys.partitions p ON p.object_id = t.object_id AND "
    "p.index_id IN (0, 1) GROUP BY s.name, t.name",
}


def _estimates(source: SqlHandle, cur: Any, wanted: set[tuple[Any, Any]]) -> dict[tuple[Any, Any], int | None]:
    """Row estimates from the catalogue (never counting); unknown where there is none."""
    sql = _ESTIMATE_SQL.get(source.flavour)
    if sql is None or not wanted:
        return {}
    try:
        rows = cur.execute(sql).fetchall()
    except Exception:  # noqa: BLE001 - estimates are optional (e.g. no rights on the catalogue)
        cur.connection.rollback()
        return {}
    by_name = {(r[0], r[1]): r[2] for r in rows}
    any_schema = {r[1]: r[2] for r in rows}
    out: dict[tuple[Any, Any], int | None] = {}
    for schema, name in wanted:
        value = by_name.get((schema, name), any_schema.get(name))
        out[(schema, name)] = int(value) if value is not None and int(value) >= 0 else None
    return out
