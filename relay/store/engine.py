"""Opening the store: one SQLAlchemy engine, run off the event loop.

SQLite gets WAL mode, a busy timeout and a single worker thread (one writer at a time is
what SQLite allows anyway, and it keeps "database is locked" away); PostgreSQL gets a
small pool. ``Store.run(fn, *args)`` runs ``fn(conn, *args)`` in one transaction in the
worker pool, so no database call ever blocks the loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError

from shared.errors import Conflict

from .batching import GroupCommitter, sqlite_explicit_transactions
from .diskfull import DiskGuard, StoreFull, is_disk_full, sqlite_path
from .outage import OutageGuard, StoreUnavailable, first_line, is_unavailable, refused_for_good
from .pg import PG_CONNECT_DEFAULTS
from .schema import migrate

T = TypeVar("T")
log = logging.getLogger("relay.store")


def normalise_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` select psycopg2 (SQLAlchemy 2.1 would pick
    psycopg 3, which we do not ship)."""
    for plain in ("postgres://", "postgresql://"):
        if url.startswith(plain):
            return "postgresql+psycopg2://" + url[len(plain) :]
    return url


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=10000")
    # FULL: a chunk the relay has acknowledged survives a power cut, not just a crash.
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA wal_autocheckpoint=4000")
    cur.close()


def open_engine(url: str) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path.split("?", 1)[0]).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
        event.listen(engine, "connect", _sqlite_pragmas)
        sqlite_explicit_transactions(engine)  # so group commit's SAVEPOINTs nest
        return engine
    # A store out of reach fails a call in seconds, not at the OS's TCP timeouts
    # (store/outage.py); what the URL sets itself wins.
    given = make_url(url).query
    defaults = {k: v for k, v in PG_CONNECT_DEFAULTS.items() if k not in given}
    engine = create_engine(url, pool_size=8, max_overflow=4, connect_args=defaults)
    ping_when_idle(engine)
    return engine


PING_AFTER_IDLE = 2.0  # s: a pooled connection idle longer is checked before use


def ping_when_idle(engine: Engine, idle: float = PING_AFTER_IDLE) -> None:
    """Check a pooled connection with ``SELECT 1`` before use when it sat idle for more
    than ``idle`` seconds (the server may have restarted or dropped it meanwhile); a dead
    one is replaced (SQLAlchemy's "pessimistic disconnect handling" with a custom
    checkout event). ``pool_pre_ping`` pinged before every store call: a round trip per
    chunk, and ~10 % of the store threads' time while streaming rows, for connections
    used a moment before."""

    @event.listens_for(engine, "checkin")
    def _idle_from(_dbapi_conn: Any, record: Any) -> None:
        record.info["mc_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _check(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("mc_idle_since")
        if since is None or time.monotonic() - since <= idle:
            return
        try:
            cur = dbapi_conn.cursor()
            try:
                cur.execute("SELECT 1")
            finally:
                cur.close()
            dbapi_conn.rollback()  # leave no transaction open behind the ping
        except engine.dialect.loaded_dbapi.Error as exc:
            raise DisconnectionError("the pooled connection is gone") from exc  # the pool retries


class DuplicateRow(Conflict):
    """A write lost a race for a unique key (a resent chunk, a jobKey submitted twice)."""


class _LostInCommit(Exception):
    """The connection was lost while its transaction committed: the database is not shown
    to be out of reach (another backend was killed, a server restarted under a pooled
    connection), so no outage is declared; the caller gets ``StoreUnavailable``."""


class Store:
    """The engine plus the thread pool every store call runs in."""

    def __init__(self, url: str) -> None:
        self.url = normalise_url(url)
        self.engine = open_engine(self.url)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self._closed = False
        self._pool = ThreadPoolExecutor(
            max_workers=1 if self.is_sqlite else 8, thread_name_prefix="relay-store"
        )
        # SQLite: one writer anyway, so calls that arrive together share one transaction
        # and one sync (relay/store/batching.py). PostgreSQL keeps a transaction per call
        # on its pool of 8 (its own commit path already groups WAL flushes).
        self.batcher = GroupCommitter(lambda: self.engine, self._pool) if self.is_sqlite else None
        # A full disk: StoreFull (503) instead of the driver's error, said once (store/diskfull).
        self.disk = DiskGuard(sqlite_path(self.url))
        # The database out of reach: StoreUnavailable (503) at once, said once (store/outage).
        self.outage = OutageGuard()

    async def open(self, wait: float = 0.0) -> int:
        """Apply the migrations; a database out of reach is waited for up to ``wait``
        seconds (one line says so), then ``StoreUnavailable`` says what failed."""
        deadline, said = time.monotonic() + wait, False
        while True:
            try:
                return await self._open()
            except DBAPIError as exc:
                if not is_unavailable(exc) or refused_for_good(exc):
                    if is_unavailable(exc):
                        raise StoreUnavailable(f"cannot open the store: {first_line(exc)}") from None
                    raise
                if time.monotonic() >= deadline:
                    raise StoreUnavailable(
                        f"cannot reach the store's database ({first_line(exc)}) within {wait:g} s "
                        "(MC_RELAY_STORE_START_WAIT); check --database-url / MC_RELAY_DATABASE_URL "
                        "and that the server is up") from None  # fmt: skip
                if not said:
                    said = True
                    log.warning("the store's database is unreachable (%s): waiting up to %g s for it "
                                "(MC_RELAY_STORE_START_WAIT), trying every second", first_line(exc), wait)  # fmt: skip
                await asyncio.sleep(1.0)

    async def _open(self) -> int:
        try:
            version = await self._call(migrate, self.engine)
        except (DBAPIError, sqlite3.Error) as exc:
            # Started on a full disk (SQLite cannot even make its -shm file: "disk I/O
            # error"): the reserve is there for this. Full mode, and once more.
            if not (is_disk_full(exc) or self.disk.short_of_room()):
                raise
            if not self.disk.reserve_kept():
                raise StoreFull("the store's disk is full: the relay cannot open its store; "
                                "free space and start it again") from None  # fmt: skip
            self.disk.noticed()
            await self._call(self.engine.dispose)
            version = await self._call(migrate, self.engine)
        await self._call(self.disk.start)
        return version

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(conn, *args, **kwargs)`` in one transaction, in the store's thread pool,
        and return once that transaction is committed (on SQLite one shared with the calls
        that arrived meanwhile, each in its own savepoint). A unique key another
        transaction took first raises ``DuplicateRow`` (nothing of ``fn`` was written)."""
        probe = self.outage.admit()  # in an outage, most calls fail here, at once
        try:
            if self.batcher is not None:
                out: T = await self.batcher.run(fn, *args, **kwargs)
            else:
                out = await self._call(functools.partial(self._in_tx, fn, *args, **kwargs))
        except IntegrityError as exc:  # callers meet our error, not the driver's
            self.outage.reached()
            raise DuplicateRow("a row with the same key was stored meanwhile") from exc
        except _LostInCommit:
            raise StoreUnavailable() from None
        except (DBAPIError, sqlite3.Error) as exc:  # wrapped by SQLAlchemy, or raw from a cursor
            if is_disk_full(exc):
                raise self.disk.noticed() from None
            if is_unavailable(exc):
                raise self.outage.noticed(exc) from None
            raise
        finally:
            self.outage.done(probe)
        self.outage.reached()
        return out

    def _in_tx(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """One transaction; once more on a fresh connection when the pooled one turned out
        dead before anything was committed (a terminated backend, a restarted server,
        a connection a proxy cut: nothing of ``fn`` was written, and the pool has replaced
        its older connections). A failure while committing is not retried (its outcome
        is unknown), nor taken for an outage: the database was reached."""
        for retry in (False, True):
            connected = committing = False
            try:
                with self.engine.begin() as conn:
                    connected = True
                    out = fn(conn, *args, **kwargs)
                    committing = True
                return out
            except DBAPIError as exc:
                if committing and is_unavailable(exc):
                    raise _LostInCommit() from exc  # reached, so not an outage
                if retry or not connected or not is_unavailable(exc):
                    raise
        raise AssertionError("unreachable")

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args))

    async def ping(self) -> None:
        await self.run(_ping)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._call(self.engine.dispose)
        self._pool.shutdown(wait=False)


def _ping(conn: Connection) -> None:
    conn.execute(text("SELECT 1"))
