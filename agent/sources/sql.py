"""SQL sources: PostgreSQL (psycopg 3, see ``pgconn``), MySQL/MariaDB (PyMySQL, or mysqlclient when
installed), SQLite, and SQL Server / any ODBC database through pyodbc (``sqlodbc``).

SQLAlchemy makes the engine (URL parsing, dialect, pooling) and serves discovery
(``sqlmeta``); the bulk fetch uses the raw DBAPI cursor, server-side where the driver has
one (psycopg server-side cursor, PyMySQL ``SSCursor``, sqlite3's stepping cursor, ODBC drivers
told to stream), because SQLAlchemy's row layer costs 40-50 % on bulk reads. Every query
passes the statement guard and the private-name check, then runs read-only at the
database too (Postgres: one statement on the extended protocol in a session started
read-only, see ``pgconn``; MySQL ``START TRANSACTION READ
ONLY``, SQLite ``mode=ro`` + ``PRAGMA query_only``, ODBC access mode + the real
database's read-only session) in a transaction that is always rolled back.
This module is imported on the first SQL job, so an idle agent never loads SQLAlchemy.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sqlite3
import threading
from typing import Any
from urllib.parse import quote

import sqlalchemy
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import QueuePool

from shared.errors import JobError

from . import mysqlsession, pgconn, pgguard, sqlmeta, sqlodbc
from .base import QueryStream, Source
from .errors import map_db_error
from .pgcopy import wrappable
from .privacy import check_private, filter_discovery
from .readonly import check_read_only
from .sqloptions import OptionError, parse_sql_options
from .sqlstream import SqlStream
from .sqltext import COMMENT, SEMI, code_tokens, tokenize, translate_params

log = logging.getLogger("agent.sources")

DIALECT = {"postgres": "postgres", "mysql": "mysql", "sqlite": "sqlite", "mssql": "mssql",
           "odbc": "odbc"}  # fmt: skip
ODBC_KINDS = ("mssql", "odbc")
MAX_SQL_CHARS = 1 << 20
_STREAMABLE_PG = ("SELECT", "WITH", "VALUES", "TABLE", "(")  # what DECLARE CURSOR accepts



def engine_url(kind: str, url: str) -> str:
    """Normalise the admin's URL to the driver we ship: psycopg 3 (also for a URL that
    names psycopg2: the read-only locks in ``pgconn`` need psycopg 3); for MySQL
    mysqlclient when it is installed, else PyMySQL (unless the URL names a driver)."""
    low = url.lower()
    if kind == "postgres":
        for prefix in ("postgres://", "postgresql://", "postgresql+psycopg2://", "postgresql+psycopg://"):
            if low.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
    if kind == "mysql":
        if low.startswith("mariadb+pymysql://"):
            return "mysql+pymysql://" + url[len("mariadb+pymysql://") :]
        for prefix in ("mysql://", "mariadb://"):
            if low.startswith(prefix):
                return f"mysql+{mysql_driver()}://" + url[len(prefix) :]
    return url


def mysql_driver() -> str:
    """``mysqldb`` (mysqlclient, 3-8x faster) when installed, else ``pymysql``."""
    return "mysqldb" if importlib.util.find_spec("MySQLdb") is not None else "pymysql"


class SqlSource(Source):
    """One configured SQL database; engines (or ODBC pools) are made on first use."""

    def __init__(
        self,
        name: str,
        kind: str,
        url: str,
        *,
        password: str | None = None,
        options: dict[str, str] | None = None,
        pool_size: int = 4,
    ) -> None:
        if kind not in DIALECT:
            raise JobError("SOURCE_UNAVAILABLE", f"source type {kind!r} is not supported yet")
        super().__init__(name, kind)
        try:
            self.opts = parse_sql_options(options, pool_size=pool_size)
            if kind == "mysql":
                mysqlsession.check_driver_args(self.opts.driver_args)
        except (OptionError, ValueError) as exc:
            raise JobError("SOURCE_UNAVAILABLE", f"source {name!r}: {exc}", retryable=False) from exc
        self._url = engine_url(kind, url)
        self._password = password
        self._engine: Engine | None = None
        self._pool: Any = None
        self._flavour: str | None = {"mssql": "mssql"}.get(kind) if kind in ODBC_KINDS else kind
        self._engine_lock = threading.Lock()

    # ------------------------------------------------------------ what it is

    @property
    def odbc(self) -> bool:
        return self.type in ODBC_KINDS

    @property
    def flavour(self) -> str:
        """The database really behind the source (for ODBC: known after the first connect)."""
        return self._flavour or "generic"

    def note_flavour(self, dbms_name: str) -> None:
        if self._flavour is None:
            self._flavour = sqlodbc.flavour_of(dbms_name)

    @property
    def dialect(self) -> str:
        """The SQL rules the guard and the tokenizer apply."""
        return "mssql" if self.type == "mssql" else self.flavour

    def log_debug(self, message: str) -> None:
        log.debug("source %s: %s", self.name, message)

    # ------------------------------------------------------------ engine

    @property
    def engine(self) -> Engine:
        if self.odbc:
            raise JobError("QUERY_FAILED", "ODBC sources have no SQLAlchemy engine", retryable=False)
        with self._engine_lock:
            if self._engine is None:
                self._engine = self._make_engine()
            return self._engine

    def _odbc_pool(self) -> Any:
        with self._engine_lock:
            if self._pool is None:
                try:
                    conn_str = sqlodbc.build_connection_string(self.type, self._url, self._password, self.opts)
                except JobError:
                    raise
                except Exception as exc:
                    raise JobError("SOURCE_UNAVAILABLE", f"source {self.name!r} has an unreadable URL") from exc
                self._pool = sqlodbc.make_pool(self, conn_str, self.opts)
            return self._pool

    def _make_engine(self) -> Engine:
        try:
            url = make_url(self._url)
        except sqlalchemy.exc.ArgumentError as exc:
            raise JobError(
                "SOURCE_UNAVAILABLE", f"source {self.name!r} has an unreadable URL"
            ) from exc
        if self._password:
            url = url.set(password=self._password)
        opts = self.opts
        if self.type == "sqlite":
            path = url.database or ""
            if not path or path == ":memory:":
                raise JobError("SOURCE_UNAVAILABLE", f"source {self.name!r} needs a file path")
            # A real pool, sized like the others: on the bare "sqlite://" URL SQLAlchemy
            # assumes :memory: and picks a SingletonThreadPool of five, whose sixth
            # thread closes another thread's connection in mid-query.
            return sqlalchemy.create_engine(
                "sqlite://", creator=lambda: _sqlite_connect(path), poolclass=QueuePool,
                pool_size=opts.pool_size, max_overflow=opts.max_overflow,
                pool_timeout=opts.pool_timeout, pool_pre_ping=False,
            )  # fmt: skip
        args: dict[str, Any] = {"connect_timeout": opts.connect_timeout}
        if self.type == "postgres":
            args["application_name"] = "mini-connector"
        else:
            args["charset"] = "utf8mb4"
        for k, v in opts.driver_args.items():
            args[k] = int(v) if v.isdigit() else v
        extra = None
        if self.type == "postgres":
            # One statement per round trip, a read-only session, psycopg2's values.
            extra = args.pop("options", None)
            args.update(pgconn.connect_args(extra))
        engine = sqlalchemy.create_engine(
            url,
            pool_size=opts.pool_size,
            max_overflow=opts.max_overflow,
            pool_pre_ping=opts.pool_pre_ping,
            pool_recycle=opts.pool_recycle,
            pool_timeout=opts.pool_timeout,
            connect_args=args,
        )
        sqlalchemy.event.listen(engine, "connect", _session_setup(self.type, extra))
        if self.type == "postgres":
            # A pooler that refuses the startup options (PgBouncer): connect without them.
            sqlalchemy.event.listen(engine, "do_connect", pgconn.do_connect)
            # Back in the pool: rolled back, DISCARD ALL (advisory locks, SETs, cursors).
            sqlalchemy.event.listen(engine, "reset", pgconn.reset_on_return)
        if self.type == "mysql":
            sqlalchemy.event.listen(engine, "do_connect", mysqlsession.mask_connect_args)
        return engine

    def raw_connection(self) -> Any:
        """A pooled DBAPI connection (SQLAlchemy's proxy), errors translated."""
        try:
            return self._odbc_pool().connect() if self.odbc else self.engine.raw_connection()
        except JobError:
            raise
        except Exception as exc:
            raise map_db_error(exc, connecting=True) from exc

    def fresh_dbapi_connection(self) -> Any:
        """A new, unpooled driver connection (for MySQL's KILL QUERY)."""
        eng = self.engine
        cargs, cparams = eng.dialect.create_connect_args(eng.url)
        return eng.dialect.loaded_dbapi.connect(*cargs, **cparams)

    def _know_flavour(self) -> None:
        if self._flavour is None:
            self.raw_connection().close()  # the pool's creator asks the driver what it is

    # ------------------------------------------------------------ operations

    def test(self) -> dict[str, Any]:
        return sqlodbc.test(self) if self.odbc else sqlmeta.test(self)

    def discover(self, request: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        if self.odbc:
            tables = sqlodbc.discover(self, request or {}, sqlmeta.MAX_TABLES)
        else:
            tables = sqlmeta.discover(self, request or {})
        return filter_discovery(tables, self.opts)

    def _open(self, request: dict[str, Any], timeout: float | None) -> QueryStream:
        sql = request.get("sql")
        params = request.get("params") or {}
        if not isinstance(sql, str) or not sql.strip():
            raise JobError("QUERY_FAILED", "the query needs an 'sql' text", retryable=False)
        if len(sql) > MAX_SQL_CHARS:
            raise JobError("QUERY_FAILED", "the SQL text is longer than 1 MiB", retryable=False)
        if not isinstance(params, dict):
            raise JobError("QUERY_FAILED", "'params' must be a JSON object", retryable=False)
        if self.odbc:
            self._know_flavour()
        dialect = self.dialect
        check_read_only(sql, dialect)
        check_private(sql, dialect, self.opts)
        if self.type == "postgres":
            return self._open_postgres(sql, params, timeout)
        if dialect == "postgres":  # ODBC to PostgreSQL: the server scanner's view of the text
            text, ordered = pgguard.odbc_text(sql, params)
            return SqlStream(self, text, ordered, timeout=timeout, server_side=False)
        sql = _without_trailing_semicolons(sql, dialect)
        if self.odbc:
            # Some ODBC drivers (SQLite's) split the text at any ';', even in a comment.
            sql = "".join(" " if t.kind == COMMENT else t.text for t in tokenize(sql, dialect))
        style = {"sqlite": "named", "postgres": "pyformat", "mysql": "pyformat"}.get(self.type, "qmark")
        text, values = translate_params(sql, params, style=style, dialect=dialect)
        first = next(iter(code_tokens(tokenize(sql, dialect))), None)
        streamable = first is not None and first.upper in _STREAMABLE_PG
        # PostgreSQL's COPY fast path (pgcopy): a statement that fits inside FROM (...).
        copy = self.type == "postgres" and self.opts.copy_fast_path and streamable and wrappable(sql)
        return SqlStream(self, text, values, timeout=timeout, server_side=streamable, copy=copy)

    def _open_postgres(self, sql: str, params: dict[str, Any], timeout: float | None) -> QueryStream:
        """The statement as PostgreSQL's parser reads it (pgguard): its text without the
        trailing ';', ``:name`` tokens found by the server's scanner, and whether it is a
        SELECT (DECLARE-able and, if it wraps, served by COPY)."""
        parsed = pgguard.parse(sql)
        text, values = pgguard.translate_params(parsed.text, params)
        streamable = pgguard.streamable(parsed)
        copy = self.opts.copy_fast_path and streamable and wrappable(parsed.text)
        return SqlStream(self, text, values, timeout=timeout, server_side=streamable, copy=copy,
                         pg_functions=parsed.functions + parsed.attribute_calls)  # fmt: skip

    def close(self) -> None:
        super().close()
        with self._engine_lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None
            if self._pool is not None:
                self._pool.dispose()
                self._pool = None


def _without_trailing_semicolons(sql: str, dialect: str) -> str:
    # The guard admits "SELECT 1;"; some drivers (SQLite ODBC, DECLARE CURSOR) refuse it.
    semis = [t for t in code_tokens(tokenize(sql, dialect)) if t.kind == SEMI]
    return sql[: semis[0].pos] if semis else sql


def _sqlite_connect(path: str) -> sqlite3.Connection:
    # mode=ro: the file is opened read-only by SQLite itself; query_only refuses writes
    # even to temporary objects. The file must exist (ro never creates it); SQLite's own
    # "unable to open database file" does not say which file, so say it first.
    if not os.path.isfile(path):
        raise sqlite3.OperationalError(f"unable to open database file {path}: no such file")
    conn = sqlite3.connect(
        f"file:{quote(path)}?mode=ro", uri=True, check_same_thread=False, timeout=10
    )
    conn.execute("PRAGMA query_only = ON")
    return conn


def _session_setup(kind: str, pg_options: str | None = None) -> Any:
    """Per new connection: the text rules the statement guard assumes hold at the server."""

    def on_connect(dbapi_connection: Any, record: Any) -> None:
        if kind == "mysql":
            mysqlsession.on_connect(dbapi_connection, record)  # its own session layers
            return
        cur = dbapi_connection.cursor()
        try:
            # Set at startup (pgconn.SESSION_OPTIONS). Behind a pooler (PgBouncer), or
            # where the options did not take, each job's transaction sets them itself.
            if kind == "postgres":
                if pgconn.check_session(cur):
                    record.info.pop(pgconn.PER_TRANSACTION, None)
                else:
                    log.info("PostgreSQL connection through a pooler (or without its startup "
                             "options): the session settings are made in each job's transaction")
                    record.info[pgconn.PER_TRANSACTION] = pgconn.admin_settings(pg_options)
        finally:
            cur.close()
        dbapi_connection.commit()

    return on_connect
