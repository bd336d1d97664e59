"""The PostgreSQL-only pieces of the store, kept small so every other query is shared.

- ``skip_locked(conn, query)``: on PostgreSQL, rows selected for a claim are locked
  ``FOR UPDATE SKIP LOCKED``, so two nodes claiming at once never wait on, or take, the
  same rows; SQLite (one writer at a time) runs the plain query.
- ``notify(conn, channel, payloads)``: ``pg_notify`` each payload (delivered at commit).
- ``copy_in_row`` / ``copy_out_rows``: result chunks written and read with binary
  ``COPY``, not as ``bytea`` hex text in statements.
- ``Listener``: ``LISTEN channel`` on a dedicated psycopg2 connection in a daemon thread,
  handing each payload to a callback; it reconnects after a failure and reports it (the
  caller then re-checks what it may have missed; its periodic sweep is the safety net).
"""

from __future__ import annotations

import contextlib
import io
import logging
import select as _select
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, Select, text
from sqlalchemy.exc import DBAPIError

log = logging.getLogger("relay.cluster")
# libpq settings for every store connection unless the URL sets them: a connect to a
# server out of reach gives up after 5 s, and a connection whose peer vanished without a
# reset (a failover, a dropped network path) is found dead in ~20 s, not the OS's hours.
PG_CONNECT_DEFAULTS: dict[str, Any] = {
    "connect_timeout": 5, "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 3,
    "keepalives_count": 3, "tcp_user_timeout": 20000,
}  # fmt: skip
S = TypeVar("S", bound=Select[Any])


def is_postgres(conn_or_engine: Connection | Engine) -> bool:
    return conn_or_engine.dialect.name == "postgresql"


def skip_locked(conn: Connection, query: S) -> S:
    return query.with_for_update(skip_locked=True) if is_postgres(conn) else query


def notify(conn: Connection, channel: str, payloads: list[str]) -> None:
    for payload in payloads:
        conn.execute(text("SELECT pg_notify(:c, :p)"), {"c": channel, "p": payload})


# ---------------------------------------------------------------- binary COPY
#
# psycopg2 sends a ``bytea`` parameter as a hex literal inside the statement's text and
# reads one back as hex text: a ~600 KB chunk became 1.2 MB to escape, parse and unescape
# each way (an insert took ~11-13 ms here, a read ~4.8 ms). ``COPY ... (FORMAT binary)``
# moves the bytes as they are (~2.5 ms and ~1.5 ms). The format (PostgreSQL docs, "COPY",
# "Binary Format"): a signature, flags and header extension, then per row a 16-bit field
# count and per field a 32-bit length (-1: NULL) and the value in the type's binary
# send/receive form, then a 16-bit -1. Only the types the chunk table uses are encoded.

_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_COPY_HEADER = _COPY_SIGNATURE + struct.pack("!ii", 0, 0)
_COPY_TRAILER = struct.pack("!h", -1)


def _copy_field(value: Any) -> bytes:
    if value is None:
        return struct.pack("!i", -1)
    if isinstance(value, bool):
        raise TypeError("booleans are not used by the chunk table")
    if isinstance(value, int):  # int4 columns
        return struct.pack("!ii", 4, value)
    data = value.encode("utf-8") if isinstance(value, str) else bytes(value)  # text / bytea
    return struct.pack("!i", len(data)) + data


def copy_in_row(conn: Connection, table: str, columns: tuple[str, ...], values: tuple[Any, ...]) -> None:
    """Insert one row with ``COPY ... FROM STDIN (FORMAT binary)`` on ``conn``'s driver
    connection, inside its transaction. Integers go as int4, str as text, bytes as bytea."""
    body = b"".join([_COPY_HEADER, struct.pack("!h", len(values)), *map(_copy_field, values), _COPY_TRAILER])
    sql = f"COPY {table} ({', '.join(columns)}) FROM STDIN WITH (FORMAT binary)"
    with _driver_cursor(conn, sql) as cur:
        cur.copy_expert(sql, io.BytesIO(body), size=len(body))


def copy_out_rows(conn: Connection, select_sql: str, params: tuple[Any, ...], kinds: tuple[str, ...]) -> list[tuple[Any, ...]]:
    """The rows of ``select_sql`` (psycopg2 ``%s`` parameters, bound by the driver's own
    quoting) read with ``COPY (...) TO STDOUT (FORMAT binary)``; ``kinds`` says how to
    decode each column: ``int4``, ``text`` or ``bytea``."""
    out = io.BytesIO()
    with _driver_cursor(conn, select_sql) as cur:
        query = cur.mogrify(select_sql, params).decode("utf-8")
        cur.copy_expert(f"COPY ({query}) TO STDOUT WITH (FORMAT binary)", out, size=1 << 20)
    return _decode_copy(out.getbuffer(), kinds)


@contextlib.contextmanager
def _driver_cursor(conn: Connection, sql: str) -> Iterator[Any]:
    """A psycopg2 cursor on ``conn``'s connection; driver errors come out as SQLAlchemy's
    (``IntegrityError`` and the rest), without their parameters (chunk bytes)."""
    dbapi = conn.dialect.loaded_dbapi
    cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        yield cur
    except dbapi.Error as exc:
        raise DBAPIError.instance(sql, None, exc, dbapi.Error, hide_parameters=True, dialect=conn.dialect) from exc
    finally:
        cur.close()


def _decode_copy(buf: memoryview, kinds: tuple[str, ...]) -> list[tuple[Any, ...]]:
    if bytes(buf[: len(_COPY_SIGNATURE)]) != _COPY_SIGNATURE:
        raise ValueError("not PostgreSQL binary COPY output")
    (ext,) = struct.unpack_from("!i", buf, len(_COPY_SIGNATURE) + 4)
    at = len(_COPY_SIGNATURE) + 8 + ext
    rows: list[tuple[Any, ...]] = []
    while True:
        (n,) = struct.unpack_from("!h", buf, at)
        at += 2
        if n == -1:
            return rows
        if n != len(kinds):
            raise ValueError(f"COPY row has {n} fields, expected {len(kinds)}")
        row = []
        for kind in kinds:
            (size,) = struct.unpack_from("!i", buf, at)
            at += 4
            if size < 0:
                row.append(None)
                continue
            field = buf[at : at + size]
            at += size
            if kind == "int4":
                row.append(struct.unpack("!i", field)[0])
            elif kind == "text":
                row.append(bytes(field).decode("utf-8"))
            else:
                row.append(bytes(field))
        rows.append(tuple(row))


class Listener:
    """``LISTEN`` in a thread; ``on_payload(str)`` and ``on_reconnect()`` run in that
    thread (the caller hops onto its event loop)."""

    def __init__(
        self, engine: Engine, channel: str, on_payload: Callable[[str], None],
        on_reconnect: Callable[[], None], *, poll: float = 1.0,
    ) -> None:  # fmt: skip
        self._engine, self._channel = engine, channel
        self._on_payload, self._on_reconnect = on_payload, on_reconnect
        self._poll = poll
        self._stop = threading.Event()
        self.ready = threading.Event()  # set once LISTEN is in place
        self._thread = threading.Thread(target=self._run, name="relay-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 3.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _connect(self) -> Any:
        cargs, cparams = self._engine.dialect.create_connect_args(self._engine.url)
        conn = self._engine.dialect.loaded_dbapi.connect(*cargs, **{**PG_CONNECT_DEFAULTS, **cparams})
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'LISTEN "{self._channel}"')
        return conn

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                conn = self._connect()
            except Exception as exc:  # noqa: BLE001 - any driver error: retry
                failures += 1
                if failures == 1:
                    log.warning("cannot LISTEN for other relay nodes: %s; retrying", type(exc).__name__)
                self._stop.wait(min(5.0, 0.5 * failures))
                continue
            if failures or self.ready.is_set():
                self._on_reconnect()  # notifications may have been missed meanwhile
            failures = 0
            self.ready.set()
            try:
                self._listen(conn)
            except Exception as exc:  # noqa: BLE001 - any driver error: reconnect
                log.warning("the LISTEN connection failed (%s); reconnecting", type(exc).__name__)
            finally:
                with contextlib.suppress(Exception):  # already broken
                    conn.close()

    def _listen(self, conn: Any) -> None:
        while not self._stop.is_set():
            ready, _, _ = _select.select([conn], [], [], self._poll)
            if not ready:
                continue
            conn.poll()
            while conn.notifies:
                note = conn.notifies.pop(0)
                try:
                    self._on_payload(note.payload)
                except Exception:
                    log.exception("handling a cluster notification failed")
