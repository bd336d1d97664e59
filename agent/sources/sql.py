"""SQL sources: PostgreSQL (psycopg2), MySQL/MariaDB (PyMySQL) and SQLite.

SQLAlchemy makes the engine (URL parsing, dialect, pooling) and serves discovery
(``sqlmeta``); the bulk fetch uses the raw DBAPI cursor, server-side where the driver has
one (psycopg2 named cursor, PyMySQL ``SSCursor``, sqlite3's stepping cursor), because
SQLAlchemy's row layer costs 40-50 % on bulk reads. Every query passes the statement
guard and then runs read-only at the database too (Postgres ``SET TRANSACTION READ ONLY``,
MySQL ``START TRANSACTION READ ONLY``, SQLite ``mode=ro`` + ``PRAGMA query_only``).
This module is imported on the first SQL job, so an idle agent never loads SQLAlchemy.
"""

from __future__ import annotations

import importlib
import logging
import secrets
import sqlite3
import threading
from typing import Any
from urllib.parse import quote

import sqlalchemy
from sqlalchemy.engine import Engine, make_url

from shared.errors import JobError

from . import sqlmeta
from .base import Column, QueryStream, Row, Source
from .errors import map_db_error
from .readonly import check_read_only
from .sqltext import code_tokens, tokenize, translate_params

log = logging.getLogger("agent.sources")

DIALECT = {"postgres": "postgres", "mysql": "mysql", "sqlite": "sqlite"}
MAX_SQL_CHARS = 1 << 20
_STREAMABLE_PG = ("SELECT", "WITH", "VALUES", "TABLE", "(")  # what DECLARE CURSOR accepts


def engine_url(kind: str, url: str) -> str:
    """Normalise the admin's URL to the driver we ship (PyMySQL unless named otherwise)."""
    low = url.lower()
    if kind == "postgres":
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; we ship psycopg2.
        for prefix in ("postgres://", "postgresql://"):
            if low.startswith(prefix):
                return "postgresql+psycopg2://" + url[len(prefix) :]
    if kind == "mysql":
        for prefix in ("mysql://", "mariadb://", "mariadb+pymysql://"):
            if low.startswith(prefix):
                return "mysql+pymysql://" + url[len(prefix) :]
    return url


class SqlSource(Source):
    """One configured SQL database; engines are made on first use and reused."""

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
        self.dialect = DIALECT[kind]
        self._url = engine_url(kind, url)
        self._password = password
        self._options = dict(options or {})
        self._pool_size = pool_size
        self._engine: Engine | None = None
        self._engine_lock = threading.Lock()

    # ------------------------------------------------------------ engine

    @property
    def engine(self) -> Engine:
        with self._engine_lock:
            if self._engine is None:
                self._engine = self._make_engine()
            return self._engine

    def _make_engine(self) -> Engine:
        try:
            url = make_url(self._url)
        except sqlalchemy.exc.ArgumentError as exc:
            raise JobError(
                "SOURCE_UNAVAILABLE", f"source {self.name!r} has an unreadable URL"
            ) from exc
        if self._password:
            url = url.set(password=self._password)
        if self.dialect == "sqlite":
            path = url.database or ""
            if not path or path == ":memory:":
                raise JobError("SOURCE_UNAVAILABLE", f"source {self.name!r} needs a file path")
            return sqlalchemy.create_engine(
                "sqlite://", creator=lambda: _sqlite_connect(path), pool_pre_ping=False
            )
        args: dict[str, Any] = {"connect_timeout": 10}
        if self.dialect == "postgres":
            args["application_name"] = "mini-connector"
        else:
            args["charset"] = "utf8mb4"
        for k, v in self._options.items():
            args[k] = int(v) if v.isdigit() else v
        return sqlalchemy.create_engine(
            url,
            pool_size=self._pool_size,
            max_overflow=2,
            pool_pre_ping=True,
            pool_recycle=3600,
            connect_args=args,
        )

    def raw_connection(self) -> Any:
        """A pooled DBAPI connection (SQLAlchemy's proxy), errors translated."""
        try:
            return self.engine.raw_connection()
        except JobError:
            raise
        except Exception as exc:
            raise map_db_error(exc, connecting=True) from exc

    def fresh_dbapi_connection(self) -> Any:
        """A new, unpooled driver connection (for MySQL's KILL QUERY)."""
        eng = self.engine
        cargs, cparams = eng.dialect.create_connect_args(eng.url)
        return eng.dialect.loaded_dbapi.connect(*cargs, **cparams)

    # ------------------------------------------------------------ operations

    def test(self) -> dict[str, Any]:
        return sqlmeta.test(self)

    def discover(self, request: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return sqlmeta.discover(self, request or {})

    def _open(self, request: dict[str, Any], timeout: float | None) -> QueryStream:
        sql = request.get("sql")
        params = request.get("params") or {}
        if not isinstance(sql, str) or not sql.strip():
            raise JobError("QUERY_FAILED", "the query needs an 'sql' text", retryable=False)
        if len(sql) > MAX_SQL_CHARS:
            raise JobError("QUERY_FAILED", "the SQL text is longer than 1 MiB", retryable=False)
        if not isinstance(params, dict):
            raise JobError("QUERY_FAILED", "'params' must be a JSON object", retryable=False)
        check_read_only(sql, self.dialect)
        style = "named" if self.dialect == "sqlite" else "pyformat"
        text, values = translate_params(sql, params, style=style, dialect=self.dialect)
        first = next(iter(code_tokens(tokenize(sql, self.dialect))), None)
        streamable = first is not None and first.upper in _STREAMABLE_PG
        return SqlStream(self, text, values, timeout=timeout, server_side=streamable)

    def close(self) -> None:
        super().close()
        with self._engine_lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None


def _sqlite_connect(path: str) -> sqlite3.Connection:
    # mode=ro: the file is opened read-only by SQLite itself; query_only refuses writes
    # even to temporary objects. The file must exist (ro never creates it).
    conn = sqlite3.connect(
        f"file:{quote(path)}?mode=ro", uri=True, check_same_thread=False, timeout=10
    )
    conn.execute("PRAGMA query_only = ON")
    return conn


class SqlStream(QueryStream):
    """One read-only query on a raw DBAPI connection, streamed with a server-side cursor."""

    def __init__(
        self,
        source: SqlSource,
        sql: str,
        params: dict[str, Any],
        *,
        timeout: float | None,
        server_side: bool,
    ) -> None:
        self.source = source
        self.sql, self.params = sql, params
        self.timeout = timeout
        self.server_side = server_side
        self.columns: list[Column] = []
        self._fairy: Any = None
        self._cursor: Any = None
        self._pending: list[Row] = []
        self._exhausted = False
        self._broken = False
        self._cancelled = threading.Event()
        self._thread_id: int | None = None
        self._mutex = threading.Lock()

    @property
    def dbapi(self) -> Any:
        return self._fairy.dbapi_connection if self._fairy is not None else None

    def start(self) -> None:
        if self._cancelled.is_set():
            raise JobError("CANCELLED", "the job was cancelled", retryable=False)
        fairy = self.source.raw_connection()
        with self._mutex:
            self._fairy = fairy
        try:
            getattr(self, f"_start_{self.source.dialect}")()
            first = self._fetch_raw(200)
        except JobError:
            self._broken = True
            raise
        except Exception as exc:
            self._broken = True
            raise self._translate(exc) from exc
        self._pending = list(first)
        if not first:
            self._exhausted = True
        self.columns = sqlmeta.columns_from_description(
            self.source.dialect, self._cursor.description, self._pending
        )

    def _start_postgres(self) -> None:
        conn = self.dbapi
        with conn.cursor() as cur:
            cur.execute("SET TRANSACTION READ ONLY")
            if self.timeout:
                cur.execute("SET LOCAL statement_timeout = %s", (max(1, int(self.timeout * 1000)),))
        self._check_cancel()
        if self.server_side:
            self._cursor = conn.cursor(name="mc_" + secrets.token_hex(8))
            self._cursor.itersize = 2000
        else:
            self._cursor = conn.cursor()
        # Always pass the dict: the guard doubled every literal %, the driver undoes it.
        self._cursor.execute(self.sql, self.params)

    def _start_mysql(self) -> None:
        conn = self.dbapi
        self._thread_id = conn.thread_id()
        with conn.cursor() as cur:
            cur.execute("START TRANSACTION READ ONLY")
        self._check_cancel()
        self._cursor = conn.cursor(_ss_cursor_class(conn))
        self._cursor.execute(self.sql, self.params)

    def _start_sqlite(self) -> None:
        self._check_cancel()
        self._cursor = self.dbapi.cursor()
        self._cursor.execute(self.sql, self.params)

    def _check_cancel(self) -> None:
        if self._cancelled.is_set():
            raise JobError("CANCELLED", "the job was cancelled", retryable=False)

    def _fetch_raw(self, n: int) -> list[Row]:
        named = self.server_side and self.source.dialect == "postgres"
        # A named cursor has no description until its first fetch; elsewhere None means
        # the statement produced no result set.
        if not named and self._cursor.description is None:
            return []
        return self._cursor.fetchmany(n)

    def fetch(self, n: int) -> list[Row]:
        if self._pending:
            rows, self._pending = self._pending, []
            return rows
        if self._exhausted:
            return []
        self._check_cancel()
        try:
            rows = self._fetch_raw(n)
        except Exception as exc:
            self._broken = True
            raise self._translate(exc) from exc
        if not rows:
            self._exhausted = True
        return rows

    def _translate(self, exc: BaseException) -> JobError:
        if self._cancelled.is_set():
            return JobError("CANCELLED", "the job was cancelled", retryable=False)
        return map_db_error(exc)

    def cancel(self) -> None:
        self._cancelled.set()
        with self._mutex:
            conn = self.dbapi
        if conn is None:
            return
        try:
            if self.source.dialect == "postgres":
                conn.cancel()
            elif self.source.dialect == "sqlite":
                conn.interrupt()
            elif self.source.dialect == "mysql" and self._thread_id is not None:
                killer = self.source.fresh_dbapi_connection()
                try:
                    with killer.cursor() as cur:
                        cur.execute(f"KILL QUERY {int(self._thread_id)}")
                finally:
                    killer.close()
        except Exception as exc:  # noqa: BLE001 - cancelling is best effort; the job ends either way
            log.warning("could not cancel a query on source %s: %s", self.source.name, exc)

    def close(self) -> None:
        with self._mutex:
            fairy, self._fairy = self._fairy, None
        if fairy is None:
            return
        early = not self._exhausted
        try:
            if self.source.dialect == "mysql" and (early or self._broken):
                # Closing an unbuffered cursor reads the rest of the result: drop the
                # connection instead so an early stop stays cheap (and detach the cursor,
                # or its finaliser would try to drain the closed socket).
                if self._cursor is not None:
                    result = getattr(self._cursor, "_result", None)
                    if result is not None:
                        result.unbuffered_active = False
                    self._cursor.connection = None
                fairy.invalidate()
                return
            if self._cursor is not None:
                try:
                    self._cursor.close()
                except Exception:  # noqa: BLE001 - a broken cursor: drop the connection
                    self._broken = True
            if self.source.dialect != "sqlite":
                fairy.dbapi_connection.rollback()
            fairy.close()
        except Exception:  # noqa: BLE001 - any failure here means "discard it"
            try:
                fairy.invalidate()
            except Exception:  # the connection is beyond saving; the pool will replace it
                log.debug("invalidate failed", exc_info=True)


def _ss_cursor_class(conn: Any) -> Any:
    """The unbuffered cursor of whichever MySQL driver made ``conn`` (PyMySQL or MySQLdb)."""
    module = importlib.import_module(type(conn).__module__.split(".")[0] + ".cursors")
    return module.SSCursor
