"""Group commit of store calls (relay/store/batching.py) on a real SQLite store, and the
same mechanism on PostgreSQL: concurrent calls share a transaction, a failing call is
rolled back alone, each caller's calls keep their order, and nothing is reported before
it is durable."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, create_engine, event, text

from relay.store.batching import GroupCommitter
from relay.store.engine import Store


class Boom(Exception):
    pass


def _create(conn: Connection) -> None:
    conn.execute(
        text("CREATE TABLE t (id INTEGER PRIMARY KEY, who TEXT NOT NULL, n INTEGER NOT NULL)")
    )


def _insert(conn: Connection, who: str, n: int, fail: bool = False) -> int:
    conn.execute(text("INSERT INTO t (who, n) VALUES (:who, :n)"), {"who": who, "n": n})
    if fail:
        raise Boom(f"{who} {n}")  # after its write: the savepoint must undo it
    return n


def _all(conn: Connection) -> list[tuple[str, int]]:
    return [(r[0], r[1]) for r in conn.execute(text("SELECT who, n FROM t ORDER BY id"))]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'relay.db'}")
    await s.open()
    await s.run(_create)
    yield s
    await s.close()


def _committed(tmp_path: Path) -> list[tuple[str, int]]:
    """What another connection (another process, after a crash) sees: committed rows only."""
    conn = sqlite3.connect(tmp_path / "relay.db")
    try:
        return [(r[0], r[1]) for r in conn.execute("SELECT who, n FROM t ORDER BY id")]
    finally:
        conn.close()


async def test_concurrent_writers_share_one_transaction_and_all_commit(
    store: Store, tmp_path: Path
) -> None:
    assert store.batcher is not None
    before = store.batcher.batches
    results = await asyncio.gather(*(store.run(_insert, f"c{i}", i) for i in range(50)))
    assert results == list(range(50))
    # All fifty arrived before the first batch started: one transaction, one sync.
    assert store.batcher.batches == before + 1
    # Durable when reported: another connection sees every row.
    assert sorted(_committed(tmp_path)) == sorted((f"c{i}", i) for i in range(50))


async def test_a_failing_call_is_rolled_back_alone(store: Store, tmp_path: Path) -> None:
    calls = [store.run(_insert, "w", i, fail=i % 4 == 1) for i in range(12)]
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    for i, outcome in enumerate(outcomes):
        if i % 4 == 1:
            assert isinstance(outcome, Boom) and str(outcome) == f"w {i}"
        else:
            assert outcome == i
    kept = [("w", i) for i in range(12) if i % 4 != 1]
    assert _committed(tmp_path) == kept
    # A lone failing call (no savepoint) raises too and leaves nothing behind.
    with pytest.raises(Boom):
        await store.run(_insert, "lone", 0, fail=True)
    assert await store.run(_all) == kept


async def test_savepoints_only_when_a_call_fails(store: Store) -> None:
    """A batch whose calls all succeed runs without savepoints (they cost as much as the
    calls); one failing call makes the batch run again, each call in its own."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement.split()[0].upper())

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        assert await asyncio.gather(*[store.run(_insert, "ok", i) for i in range(8)]) == list(range(8))
        assert store.batcher is not None and "SAVEPOINT" not in seen and seen.count("INSERT") == 8
        seen.clear()
        calls = [store.run(_insert, "mixed", i, fail=i == 5) for i in range(8)]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(outcomes[5], Boom) and [o for i, o in enumerate(outcomes) if i != 5] == [
            0, 1, 2, 3, 4, 6, 7
        ]  # fmt: skip
        if seen.count("INSERT") > 8:  # the calls shared a batch: it was run again, carefully
            assert "SAVEPOINT" in seen
        assert [n for who, n in await store.run(_all) if who == "mixed"] == [0, 1, 2, 3, 4, 6, 7]
    finally:
        event.remove(store.engine, "before_cursor_execute", record)


async def test_each_callers_calls_keep_their_order(store: Store) -> None:
    async def caller(who: str) -> None:
        for n in range(20):
            await store.run(_insert, who, n)

    async def burst(who: str) -> None:  # one caller with many calls in flight at once
        await asyncio.gather(*(store.run(_insert, who, n) for n in range(20)))

    await asyncio.gather(*(caller(f"seq{i}") for i in range(5)), burst("burst"))
    rows = await store.run(_all)
    for who in [f"seq{i}" for i in range(5)] + ["burst"]:
        assert [n for w, n in rows if w == who] == list(range(20)), who
    assert store.batcher is not None and store.batcher.batches < store.batcher.ops


async def test_a_batch_that_cannot_be_written_fails_every_call_in_it(tmp_path: Path) -> None:
    # Another process holds the write lock past the busy timeout: nobody is told "stored".
    s = Store(f"sqlite:///{tmp_path / 'relay.db'}")
    await s.open()
    await s.run(_create)
    s.engine.dispose()
    blocker = sqlite3.connect(tmp_path / "relay.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    event.listen(s.engine, "connect", lambda dbapi, _rec: dbapi.execute("PRAGMA busy_timeout=50"))
    try:
        outcomes = await asyncio.gather(
            *(s.run(_insert, "x", i) for i in range(3)), return_exceptions=True
        )
        assert all(isinstance(o, Exception) and "locked" in str(o) for o in outcomes), outcomes
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert await s.run(_insert, "y", 1) == 1  # the store carries on once the lock is gone
    assert _committed(tmp_path) == [("y", 1)]
    await s.close()


# ---------------------------------------------------------------- PostgreSQL


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    engine = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg2://", 1))
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS mc_group_commit_t"))
        conn.execute(
            text(
                "CREATE TABLE mc_group_commit_t (id SERIAL PRIMARY KEY, who TEXT NOT NULL, n INT NOT NULL)"
            )
        )
    yield engine
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE mc_group_commit_t"))
    engine.dispose()


def _pg_insert(conn: Connection, who: str, n: int, fail: bool = False) -> int:
    conn.execute(
        text("INSERT INTO mc_group_commit_t (who, n) VALUES (:who, :n)"), {"who": who, "n": n}
    )
    if fail:
        conn.execute(text("SELECT 1/0"))  # a database error: the transaction is aborted...
    return n


async def test_postgres_savepoints_keep_the_others_writes(pg_engine: Engine) -> None:
    executor = ThreadPoolExecutor(1)
    committer = GroupCommitter(lambda: pg_engine, executor)
    try:
        outcomes: list[Any] = await asyncio.gather(
            *(committer.run(_pg_insert, "p", i, fail=i == 2) for i in range(5)),
            return_exceptions=True,
        )
    finally:
        executor.shutdown()
    assert [o if not isinstance(o, Exception) else "error" for o in outcomes] == [
        0,
        1,
        "error",
        3,
        4,
    ]
    assert committer.batches == 1
    # ...but only back to its savepoint: the others are committed.
    with pg_engine.connect() as conn:
        rows = conn.execute(text("SELECT n FROM mc_group_commit_t ORDER BY id")).scalars().all()
    assert rows == [0, 1, 3, 4]


async def test_a_commit_that_fails_for_one_call_fails_only_that_call(store: Store, tmp_path: Path) -> None:
    """A shared transaction whose COMMIT fails (a full disk refuses the rows of one big
    write) used to fail every call in it, reads included: a GET answered 503 STORE_FULL
    while the disk was full (a fresh-clone run of test_relay_store_on_a_full_disk). Each
    call is then run again alone: the read and the small write commit, the big one fails."""
    import threading

    doomed = threading.local()

    def big(conn: Connection) -> None:
        _insert(conn, "big", 1)
        doomed.on = True  # this transaction's commit will fail

    def refuse_commit(conn: Any) -> None:
        if getattr(doomed, "on", False):
            doomed.on = False
            raise sqlite3.OperationalError("database or disk is full")

    await store.run(_insert, "before", 0)
    event.listen(store.engine, "commit", refuse_commit)
    try:
        outcomes = await asyncio.gather(store.run(_all), store.run(big), store.run(_insert, "small", 2),
                                        return_exceptions=True)  # fmt: skip
    finally:
        event.remove(store.engine, "commit", refuse_commit)
    assert outcomes[0] == [("before", 0)], outcomes
    assert isinstance(outcomes[1], Exception), outcomes
    assert outcomes[2] == 2, outcomes
    assert _committed(tmp_path) == [("before", 0), ("small", 2)]
