"""The PostgreSQL-only pieces of the store, kept small so every other query is shared.

- ``skip_locked(conn, query)``: on PostgreSQL, rows selected for a claim are locked
  ``FOR UPDATE SKIP LOCKED``, so two nodes claiming at once never wait on, or take, the
  same rows; SQLite (one writer at a time) runs the plain query.
- ``notify(conn, channel, payloads)``: ``pg_notify`` each payload (delivered at commit).
- ``Listener``: ``LISTEN channel`` on a dedicated psycopg2 connection in a daemon thread,
  handing each payload to a callback; it reconnects after a failure and reports it (the
  caller then re-checks what it may have missed; its periodic sweep is the safety net).
"""

from __future__ import annotations

import contextlib
import logging
import select as _select
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, Select, text

log = logging.getLogger("relay.cluster")
S = TypeVar("S", bound=Select[Any])


def is_postgres(conn_or_engine: Connection | Engine) -> bool:
    return conn_or_engine.dialect.name == "postgresql"


def skip_locked(conn: Connection, query: S) -> S:
    return query.with_for_update(skip_locked=True) if is_postgres(conn) else query


def notify(conn: Connection, channel: str, payloads: list[str]) -> None:
    for payload in payloads:
        conn.execute(text("SELECT pg_notify(:c, :p)"), {"c": channel, "p": payload})


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
        conn = self._engine.dialect.loaded_dbapi.connect(*cargs, **cparams)
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
