"""A full disk under the SQLite store (relay/store/diskfull.py), in process: the driver's
"database or disk is full" becomes a 503 ``StoreFull`` said once, the reserve is released,
writes that fill a disk are refused, and full mode ends when there is room again. The
real thing (a tmpfs filled up under real processes) is tests/system/test_disk_full.py."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import Connection, text

from relay.store import diskfull
from relay.store.diskfull import DiskGuard, StoreFull, is_disk_full
from relay.store.engine import Store


def _full(conn: Connection) -> None:
    conn.execute(text("SELECT 1"))
    raise sqlite3.OperationalError("database or disk is full")


def _one(conn: Connection) -> int:
    return int(conn.execute(text("SELECT 1")).scalar_one())


def test_is_disk_full_knows_sqlite_postgres_and_oserror() -> None:
    assert is_disk_full(sqlite3.OperationalError("database or disk is full"))
    assert not is_disk_full(sqlite3.OperationalError("database is locked"))
    assert is_disk_full(OSError(28, "No space left on device"))

    class PgError(Exception):
        pgcode = "53100"

    assert is_disk_full(PgError("could not extend file"))


async def test_store_answers_a_full_disk_with_503_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(f"sqlite:///{tmp_path}/relay.db")
    await store.open()
    reserve = tmp_path / "relay.db.reserve"
    assert reserve.stat().st_size == diskfull.RESERVE_BYTES
    monkeypatch.setattr(diskfull, "RECHECK_SECONDS", 3600.0)  # stay full for the first part
    try:
        with caplog.at_level(logging.INFO, logger="relay.store"):
            for _ in range(3):
                with pytest.raises(StoreFull) as info:
                    await store.run(_full)
                assert info.value.status == 503 and info.value.code == "SERVICE_UNAVAILABLE"
                assert info.value.retryable is True
            assert store.disk.full and not reserve.exists()  # its space is there for jobs to end
            with pytest.raises(StoreFull):
                store.disk.refuse("new jobs are not taken")
            assert await store.run(_one) == 1  # reads and small writes still run
            said = [r for r in caplog.records if "disk is full" in r.getMessage()]
            assert len(said) == 1 and said[0].levelno == logging.ERROR

            monkeypatch.setattr(diskfull, "RECHECK_SECONDS", 0.0)  # this disk has room: back
            assert not store.disk.full
            assert reserve.stat().st_size == diskfull.RESERVE_BYTES
            store.disk.refuse("new jobs are not taken")  # no longer raises
            assert sum("space is back" in r.getMessage() for r in caplog.records) == 1
    finally:
        await store.close()


def test_guard_without_a_file_store_has_no_reserve() -> None:
    guard = DiskGuard(None)
    guard.start()
    assert isinstance(guard.noticed(), StoreFull) and guard.full
    assert diskfull.sqlite_path("postgresql+psycopg2://x/y") is None
    assert diskfull.sqlite_path("sqlite:////tmp/a/relay.db?x=1") == Path("/tmp/a/relay.db")
