"""One running SQL query: a raw DBAPI cursor streamed in batches, stoppable from anywhere.

``SqlStream`` is what ``SqlSource.prepare`` returns. ``start`` opens the read-only
transaction (and the database's statement timeout) and executes; ``fetch`` reads at most
the source's ``batch_size`` rows at a time from a server-side or unbuffered cursor;
``cancel`` stops the statement at the database: psycopg's ``cancel_safe``, MySQL's
``KILL QUERY`` from a second connection, sqlite3's ``interrupt()``, pyodbc's
``cursor.cancel()`` (SQLCancel). A deadline timer cancels the statement shortly after
the job's timeout in case the database has no timeout of its own (SQLite, some ODBC
drivers), and the job then ends ``TIMEOUT``.

PostgreSQL fast path (``pgcopy``): when the source allows it and the statement can be
wrapped, ``start`` describes the query (``SELECT * FROM (<sql>) q LIMIT 0``, one round
trip) instead of executing it; if every column type is on the COPY list, ``payloads``
becomes a pump the producer calls, which runs the query as ``COPY ... TO STDOUT`` and
emits object-line payloads. Otherwise (or if the wrap fails) the cursor path runs in the
same read-only transaction. A reader that calls ``fetch`` instead gets the cursor path.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import secrets
import threading
from collections.abc import Iterator
from typing import Any

from shared.errors import JobError

from ..jobs.deadlines import DEADLINES, Deadline
from . import (
    mysqlodbc,
    mysqlsession,
    mysqlvalues,
    pgconn,
    pgcopy,
    pgcsv,
    pgguard,
    pgrows,
    sqlmeta,
    sqlodbc,
)
from .base import Column, QueryStream, Row
from .errors import map_db_error
from .sqlhandle import SqlHandle

log = logging.getLogger("agent.sources")

DEADLINE_GRACE = 0.5  # seconds after the job's timeout: the database's own timeout fires first


class SqlStream(QueryStream):
    """One read-only query on a raw DBAPI connection, streamed with a server-side cursor."""

    def __init__(
        self,
        source: SqlHandle,
        sql: str,
        params: Any,
        *,
        timeout: float | None,
        server_side: bool,
        copy: bool = False,
        pg_functions: list[tuple[str, ...]] | None = None,
    ) -> None:
        self.source = source
        self.kind = "odbc" if source.odbc else source.type
        self.sql, self.params = sql, params
        self.timeout = timeout
        self.server_side = server_side and self.kind == "postgres"
        self.copy_wanted = copy and self.server_side
        # The functions the guard saw called (PostgreSQL): asked about at the server first.
        self.pg_functions = pg_functions or []
        self.copy: pgcopy.CopyPlan | None = None
        # The producer's pump (set when the COPY fast path serves this query).
        self.payloads: Any = None
        self._copy_state = "idle"  # idle | running | done
        self.batch_size = source.opts.batch_size
        self.columns: list[Column] = []
        self._fairy: Any = None
        self._cursor: Any = None
        self._odbc_fix: mysqlodbc.ResultFix | None = None
        self._pending: list[Row] = []
        self._exhausted = False
        self._broken = False
        self._cancelled = threading.Event()
        self._timed_out = threading.Event()
        self._deadline: Deadline | None = None
        self._thread_id: int | None = None
        self._mutex = threading.Lock()

    @property
    def dbapi(self) -> Any:
        return self._fairy.dbapi_connection if self._fairy is not None else None

    def start(self) -> None:
        self._check_cancel()
        fairy = self.source.raw_connection()
        with self._mutex:
            self._fairy = fairy
        if self.timeout:
            # The shared deadline thread only starts a thread for the cancel (a MySQL
            # KILL QUERY opens a connection): a slow one must not hold the others back.
            self._deadline = DEADLINES.call_later(self.timeout + DEADLINE_GRACE, self._expire_soon)
        with self._driver_call():
            getattr(self, f"_start_{self.kind}")()
            if self.copy is not None:
                return  # columns from the describe; rows from ``payloads`` (or ``fetch``)
            first = self._fetch_raw(min(200, self.batch_size))
        self._pending = list(first)
        if not first:
            self._exhausted = True
        if self.kind == "odbc":
            self.columns = sqlodbc.columns(self._cursor.description, self._odbc_fix)
        else:
            self.columns = sqlmeta.columns_from_description(
                self.kind, self._cursor.description, self._pending,
                binary=mysqlvalues.binary_columns(self._cursor) if self.kind == "mysql" else (),
            )

    def _begin_postgres(self, conn: Any) -> None:
        timeout_ms = max(1, int(self.timeout * 1000)) if self.timeout else None
        # Behind a pooler the session's settings do not hold: this transaction sets them.
        per_transaction = self._fairy.info.get(pgconn.PER_TRANSACTION)
        with conn.cursor() as cur:
            cur.execute("SET TRANSACTION READ ONLY")
            if per_transaction is not None:
                cur.execute(pgconn.transaction_settings_sql(per_transaction, timeout_ms))
            elif timeout_ms is not None:
                cur.execute("SET LOCAL statement_timeout = %s", (timeout_ms,))
        self._check_cancel()

    def _start_postgres(self) -> None:
        conn = self.dbapi
        self._begin_postgres(conn)
        if self.pg_functions:
            with conn.cursor() as cur:
                pgguard.check_functions_at_server(cur, self.pg_functions)
        if self.copy_wanted and pgcopy.session_ok(conn):
            if self._describe_for_copy(conn):
                return
        self._execute_postgres(conn)

    def _describe_for_copy(self, conn: Any) -> bool:
        """Describe the wrapped query; True if the COPY fast path will serve it. A wrap
        PostgreSQL refuses (or any other error here) leaves the query to the cursor path,
        which reports the query's own error if it has one."""
        import psycopg

        with conn.cursor() as cur:
            inner = self._inline(conn)
            try:
                cur.execute(pgcopy.describe_sql(inner))
                description = cur.description
            except psycopg.Error as exc:
                if self._cancelled.is_set() or exc.sqlstate == "57014":
                    raise  # cancelled or timed out: the cursor path would be too
                log.debug("COPY fast path not used (%s); cursor path", type(exc).__name__)
                conn.rollback()
                self._begin_postgres(conn)
                return False
        plan = pgcopy.plan_for(inner, description or [], conn.info.parameter_status("TimeZone"),
                               conn.info.server_version)  # fmt: skip
        if plan is None:
            return False
        self.copy = plan
        self.columns = sqlmeta.columns_from_description("postgres", description, [])
        self.payloads = self._pump
        return True

    def _pump(
        self, emit: Any, *, limit: int | None = None, target: int = 512 * 1024, max_line: int = 1 << 26
    ) -> None:
        """Run the COPY, calling ``emit(payload, rows)`` with complete object lines of about
        ``target`` bytes; ``limit`` (maxRows) goes into the SQL so PostgreSQL stops there."""
        import psycopg

        plan = self.copy
        if plan is None or self._copy_state != "idle":
            raise JobError("QUERY_FAILED", "the COPY fast path was not prepared for this query")
        self._check_cancel()
        sink: pgcopy.LineSink | pgcsv.CsvSink
        # read as rows (libpq 17+, pgrows.rows_out) when a row's size is bounded, else as a COPY
        as_rows = plan.rows_per_result > 0 and pgrows.rows_mode()
        if plan.csv and not as_rows:
            sink = pgcsv.CsvSink(emit, plan.keys(), target)
            write, flush = sink.write, sink.flush
        else:
            sink = pgcopy.LineSink(emit, max_line, check=plan.line_check(raw=as_rows), raw=as_rows)
            buffered = io.BufferedWriter(sink, buffer_size=max(4096, target))
            write, flush = (lambda rows, _n: buffered.write(rows)), buffered.flush
        cursor = self.dbapi.cursor()
        with self._mutex:
            self._cursor = cursor
        self._copy_state = "running"
        try:
            # Sent with the extended protocol (pgconn.OneStatementCursor): one statement.
            if as_rows:
                pgrows.rows_out(cursor, plan.select(limit), write, plan.row_lines(), per_result=plan.rows_per_result)
            else:
                pgcopy.copy_out(cursor, plan.sql(limit), write, counted=plan.csv)
            flush()
            if isinstance(sink, pgcopy.LineSink) and sink.rest:
                raise JobError("QUERY_FAILED", "the COPY output ended inside a row")
        except psycopg.Error as exc:
            sink.dead = True
            self._broken = True
            raise self._translate(exc) from exc
        except BaseException:
            sink.dead = True
            raise
        self._copy_state = "done"
        self._exhausted = True

    def _inline(self, conn: Any) -> str:
        """The SQL with the parameters merged as literals (as psycopg2 did). Always with
        the dict: ``translate_params`` doubled every literal %, the merge undoes it."""
        with conn.cursor() as cur:
            return str(cur.mogrify(self.sql, self.params))

    def _execute_postgres(self, conn: Any) -> None:
        text = self._inline(conn)
        if self.server_side:
            # DECLARE ... CURSOR FOR <text>: psycopg sends it with the extended protocol.
            cursor = conn.cursor(name="mc_" + secrets.token_hex(8))
            cursor.itersize = self.batch_size
        else:
            try:
                pgconn.require_rows(conn, text)  # SHOW and EXPLAIN return rows; COPY, SET... none
            except pgconn.NoRowsError as exc:
                raise JobError("WRITE_OPERATION_REJECTED", str(exc), retryable=False) from exc
            cursor = conn.cursor()  # pgconn.OneStatementCursor: extended protocol
        with self._mutex:
            self._cursor = cursor
        cursor.execute(text)  # no parameters left: the text is sent as it is

    def _start_mysql(self) -> None:
        conn = self.dbapi
        self._thread_id = conn.thread_id()
        mysqlvalues.decoders(conn)
        with conn.cursor() as cur:
            # Always set (0 = none): the pooled session keeps what the last job left.
            # MariaDB: max_statement_time in seconds; MySQL 5.7+: max_execution_time in ms.
            try:
                cur.execute("SET SESSION max_statement_time = %s", (float(self.timeout or 0),))
            except Exception:  # noqa: BLE001 - MySQL has the other variable
                cur.execute("SET SESSION max_execution_time = %s", (int((self.timeout or 0) * 1000),))
            cur.execute("START TRANSACTION READ ONLY")
        self._check_cancel()
        cursor = conn.cursor(_ss_cursor_class(conn))
        with self._mutex:
            self._cursor = cursor
        cursor.execute(self.sql, self.params)
        mysqlvalues.field_converters(cursor)

    def _start_sqlite(self) -> None:
        self._check_cancel()
        cursor = self.dbapi.cursor()
        with self._mutex:
            self._cursor = cursor
        cursor.execute(self.sql, self.params)

    def _start_odbc(self) -> None:
        conn = self.dbapi
        sqlodbc.begin_job(self.source, conn, self.timeout)
        self._check_cancel()
        cursor = conn.cursor()
        with self._mutex:
            self._cursor = cursor
        cursor.execute(self.sql, *([self.params] if self.params else []))
        # before the first fetch: pyodbc looks its output converters up there
        self._odbc_fix = sqlodbc.after_execute(conn, self._fairy.info, cursor)

    def _check_cancel(self) -> None:
        if self._cancelled.is_set():
            raise self._stopped()

    def _stopped(self) -> JobError:
        if self._timed_out.is_set():
            return JobError("TIMEOUT", "the query ran past its time limit and was stopped at the database")
        return JobError("CANCELLED", "the job was cancelled", retryable=False)

    def _fetch_raw(self, n: int) -> list[Row]:
        # A named cursor has no description until its first fetch; elsewhere None means
        # the statement produced no result set.
        if not self.server_side and self._cursor.description is None:
            return []
        rows = self._cursor.fetchmany(n)
        if self.kind == "odbc":  # pyodbc.Row is not a sequence orjson knows
            return self._odbc_fix.rows(rows) if self._odbc_fix else [tuple(r) for r in rows]
        return rows

    def fetch(self, n: int) -> list[Row]:
        if self.copy is not None:
            self._fall_back_to_cursor()
        if self._pending:
            rows, self._pending = self._pending, []
            return rows
        if self._exhausted:
            return []
        self._check_cancel()
        try:
            rows = self._fetch_raw(max(1, min(n, self.batch_size)))
        except Exception as exc:
            self._broken = True
            raise self._translate(exc) from exc
        if not rows:
            self._exhausted = True
        return rows

    def _fall_back_to_cursor(self) -> None:
        """A reader that fetches rows (not the producer's pump): run the cursor path now."""
        if self._copy_state != "idle":
            raise JobError("QUERY_FAILED", "rows were already read through the COPY fast path")
        self.copy, self.payloads = None, None
        self._check_cancel()
        with self._driver_call():
            self._execute_postgres(self.dbapi)
            self._pending = list(self._fetch_raw(min(200, self.batch_size)))
        if not self._pending:
            self._exhausted = True

    @contextlib.contextmanager
    def _driver_call(self) -> Iterator[None]:
        """Starting the query: any failure marks the connection broken (dropped, not
        pooled again) and reaches the job as a JobError."""
        try:
            yield
        except JobError:
            self._broken = True
            raise
        except Exception as exc:
            self._broken = True
            raise self._translate(exc) from exc

    def _translate(self, exc: BaseException) -> JobError:
        if self._cancelled.is_set():
            return self._stopped()
        return map_db_error(exc)

    def _expire_soon(self) -> None:
        threading.Thread(target=self._expire, name="job-deadline", daemon=True).start()

    def _expire(self) -> None:
        self._timed_out.set()
        self.cancel()

    def cancel(self) -> None:
        self._cancelled.set()
        with self._mutex:
            conn, cursor = self.dbapi, self._cursor
        if conn is None:
            return
        try:
            if self.kind == "postgres":
                conn.cancel_safe(timeout=10)
            elif self.kind == "sqlite":
                conn.interrupt()
            elif self.kind == "odbc" and cursor is not None:
                cursor.cancel()
            elif self.kind == "mysql" and self._thread_id is not None:
                killer = self.source.fresh_dbapi_connection()
                try:
                    with killer.cursor() as cur:
                        cur.execute(f"KILL QUERY {int(self._thread_id)}")
                finally:
                    killer.close()
        except Exception as exc:  # noqa: BLE001 - cancelling is best effort; the job ends either way
            log.warning("could not cancel a query on source %s: %s", self.source.name, exc)

    def close(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        with self._mutex:
            fairy, self._fairy = self._fairy, None
        if fairy is None:
            return
        early = not self._exhausted
        try:
            if self._copy_state == "running":
                # Stopped inside the COPY (max rows, abort, error): the connection is still
                # in COPY OUT, and a rollback would read the rest of it. Stop it, drop it.
                with contextlib.suppress(Exception):
                    fairy.dbapi_connection.cancel_safe(timeout=10)
                fairy.invalidate()
                return
            if self.kind == "mysql" and (early or self._broken):
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
            if self.kind == "odbc" and early and self._cursor is not None:
                self._cursor.cancel()  # a streaming driver would otherwise drain the rest
            if self._cursor is not None:
                try:
                    self._cursor.close()
                except Exception:  # noqa: BLE001 - a broken cursor: drop the connection
                    self._broken = True
            if self.kind == "mysql":
                # Rolled back and reset: no named lock, user variable or setting outlives the job.
                mysqlsession.reset(fairy.dbapi_connection, fairy.info)
            elif self.kind == "odbc":
                sqlodbc.end_job(self.source, fairy.dbapi_connection)
            elif self.kind != "sqlite":
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
