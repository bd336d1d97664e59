"""The store's hot paths, on SQLite and on PostgreSQL alike: statements run on the
driver's cursor (relay/store/raw.py), chunks moved with binary COPY on PostgreSQL
(relay/store/pg.py), the one-statement claim and compare-and-set (relay/store/queue.py)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, create_engine
from sqlalchemy.exc import IntegrityError

from relay.jobs import lifecycle
from relay.store import chunks as chunk_store
from relay.store import jobs as job_store
from relay.store import queue, raw
from relay.store.engine import open_engine
from relay.store.schema import migrate


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Engine]:
    if request.param == "sqlite":
        eng = open_engine(f"sqlite:///{tmp_path}/store.db")
    else:
        eng = create_engine(request.getfixturevalue("pg_database"))
    migrate(eng)
    yield eng
    eng.dispose()


def _job(conn: Any, job_id: str, *, status: str = lifecycle.QUEUED, priority: int = 0, queued_at: float = 1.0,
         connector: str = "con_1", not_before: float | None = None) -> None:  # fmt: skip
    job_store.insert(conn, {
        "id": job_id, "tenant_id": "t", "connector_id": connector, "source": "erp",
        "operation": "query", "sealed": b"\x00sealed\xff", "seal_form": "relay",
        "options": orjson.dumps({}).decode(), "priority": priority, "status": status,
        "attempt": 1, "queued_at": queued_at, "not_before": not_before,
    })  # fmt: skip


def test_chunks_round_trip_byte_for_byte_and_a_resent_chunk_is_kept_once(engine: Engine) -> None:
    big = os.urandom(700_000)  # past any inline/TOAST threshold
    with engine.begin() as conn:
        _job(conn, "job_a")
        assert chunk_store.insert(conn, "job_a", 1, 0, 3, "k1", big)
        assert chunk_store.insert(conn, "job_a", 1, 1, 2, "k1", b"")
        assert not chunk_store.insert(conn, "job_a", 1, 0, 99, "k2", b"other")  # resent: left alone
        assert chunk_store.insert(conn, "job_a", 1, 3, 1, "k1", b"x")  # past a gap
    with engine.begin() as conn:
        first = chunk_store.read(conn, "job_a", 1, 0)
        assert first == {"seq": 0, "rows": 3, "key_id": "k1", "data": big}
        assert isinstance(first["data"], bytes)
        assert chunk_store.read(conn, "job_a", 1, 1) == {"seq": 1, "rows": 2, "key_id": "k1", "data": b""}
        assert chunk_store.read(conn, "job_a", 1, 2) is None
        assert chunk_store.read(conn, "job_a", 2, 0) is None
        assert chunk_store.seqs(conn, "job_a", 1) == [(0, 3), (1, 2), (3, 1)]
        assert chunk_store.acked_through(conn, "job_a", 1) == 1  # only the gap-free prefix
        assert chunk_store.count_below(conn, "job_a", 1, 2) == 2
        assert chunk_store.count_below(conn, "job_a", 1, 4) == 3


def test_a_chunk_in_few_round_trips_checks_its_owner_and_acks_only_a_gap_free_prefix(engine: Engine) -> None:
    """PostgreSQL's fast chunk (one statement, then COPY) says what insert and
    acked_through would; it writes nothing for another connector or attempt, and leaves
    SQLite to the careful path (None)."""
    owned = chunk_store.insert_owned
    with engine.begin() as conn:
        _job(conn, "job_o")
        if engine.dialect.name == "sqlite":
            assert owned(conn, "con_1", "job_o", 1, 0, 3, "k1", b"abc") is None
            assert chunk_store.seqs(conn, "job_o", 1) == []
            return
        assert owned(conn, "con_2", "job_o", 1, 0, 3, "k1", b"abc") is None  # not its job
        assert owned(conn, "con_1", "job_o", 2, 0, 3, "k1", b"abc") is None  # not this attempt
        assert chunk_store.seqs(conn, "job_o", 1) == [] and chunk_store.seqs(conn, "job_o", 2) == []
        blob = os.urandom(700_000)
        assert owned(conn, "con_1", "job_o", 1, 0, 3, "k1", blob) == (True, 0)
        assert owned(conn, "con_1", "job_o", 1, 0, 9, "k2", b"resent") == (False, 0)
        assert owned(conn, "con_1", "job_o", 1, 2, 4, "k1", b"past a gap") == (True, 0)
        assert owned(conn, "con_1", "job_o", 1, 1, 5, "k1", b"the gap") == (True, 2)
        assert owned(conn, "con_1", "job_o", 1, 1, 5, "k1", b"the gap") == (False, 2)
    with engine.begin() as conn:
        assert chunk_store.read(conn, "job_o", 1, 0) == {"seq": 0, "rows": 3, "key_id": "k1", "data": blob}
        assert chunk_store.seqs(conn, "job_o", 1) == [(0, 3), (1, 5), (2, 4)]
        starts = conn.exec_driver_sql(
            "SELECT seq, row_start FROM result_chunks WHERE job_id = 'job_o' ORDER BY seq"
        ).all()
        assert [tuple(r) for r in starts] == [(0, 0), (1, 3), (2, 3)]  # as insert() records them


def test_a_fast_chunk_racing_the_same_chunk_fails_whole_and_changes_nothing(pg_database: str) -> None:
    """Two transactions store one chunk at once: the second's COPY waits on the key, then
    fails with IntegrityError (its caller starts again, carefully); the first one's bytes
    stay."""
    eng = create_engine(pg_database)
    migrate(eng)
    try:
        with eng.begin() as conn:
            _job(conn, "job_r")
        first = eng.connect()
        first.begin()
        assert chunk_store.insert_owned(first, "con_1", "job_r", 1, 0, 1, "k1", b"first") == (True, 0)
        outcome: list[BaseException | tuple[bool, int] | None] = []

        def second() -> None:
            try:
                with eng.begin() as conn:
                    outcome.append(chunk_store.insert_owned(conn, "con_1", "job_r", 1, 0, 1, "k1", b"second"))
            except IntegrityError as exc:
                outcome.append(exc)

        racer = threading.Thread(target=second)
        racer.start()
        with eng.connect() as probe:  # the racer is waiting on the first one's key
            deadline = time.monotonic() + 10
            while not probe.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
            ).scalar():
                assert time.monotonic() < deadline, "the second insert never waited on the key"
                probe.rollback()
        first.commit()
        first.close()
        racer.join(10)
        assert len(outcome) == 1 and isinstance(outcome[0], IntegrityError)
        with eng.begin() as conn:
            assert chunk_store.read(conn, "job_r", 1, 0)["data"] == b"first"  # type: ignore[index]
    finally:
        eng.dispose()


def test_a_chunk_that_breaks_a_constraint_rolls_back_alone(engine: Engine) -> None:
    """A driver error comes out as SQLAlchemy's, and the transaction is still usable."""
    with engine.begin() as conn:
        _job(conn, "job_b")
        with pytest.raises(IntegrityError), conn.begin_nested():
            raw.count(conn, raw.Sql("INSERT INTO jobs (id) VALUES (:id)"), {"id": "job_b"})
        assert chunk_store.insert(conn, "job_b", 1, 0, 1, "k1", b"row")
    with engine.begin() as conn:
        assert chunk_store.seqs(conn, "job_b", 1) == [(0, 1)]


def test_claim_takes_due_jobs_in_priority_then_age_order_and_only_those(engine: Engine) -> None:
    with engine.begin() as conn:
        _job(conn, "job_old", queued_at=1.0)
        _job(conn, "job_new", queued_at=2.0)
        _job(conn, "job_urgent", queued_at=3.0, priority=5)
        _job(conn, "job_later", queued_at=0.5, not_before=100.0)  # retry delay pending
        _job(conn, "job_other", queued_at=0.1, connector="con_2")
        _job(conn, "job_running", status=lifecycle.RUNNING)
    with engine.begin() as conn:
        claimed = queue.claim(conn, "con_1", 2, 10.0, 40.0)
    assert [j["id"] for j in claimed] == ["job_urgent", "job_old"]
    assert all(j["status"] == lifecycle.DISPATCHED and j["lease_expires_at"] == 40.0 for j in claimed)
    assert all(j["dispatched_at"] == 10.0 and j["sealed"] == b"\x00sealed\xff" for j in claimed)
    with engine.begin() as conn:
        assert [j["id"] for j in queue.claim(conn, "con_1", 5, 10.0, 40.0)] == ["job_new"]
        assert [j["id"] for j in queue.claim(conn, "con_1", 5, 200.0, 230.0)] == ["job_later"]
        assert queue.claim(conn, "con_1", 5, 200.0, 230.0) == []
        assert job_store.get(conn, None, "job_other")["status"] == lifecycle.QUEUED  # type: ignore[index]


def test_try_apply_moves_only_the_job_it_bets_on(engine: Engine) -> None:
    with engine.begin() as conn:
        _job(conn, "job_c", status=lifecycle.DISPATCHED)
        kw: dict[str, Any] = {"connector_id": "con_1", "statuses": (lifecycle.DISPATCHED,)}
        # Another connector, another attempt, another status: nothing changes.
        assert queue.try_apply(conn, "job_c", "start", {"started_at": 5.0}, **{**kw, "connector_id": "con_2"},
                               attempt=1) is None  # fmt: skip
        assert queue.try_apply(conn, "job_c", "start", {"started_at": 5.0}, **kw, attempt=2) is None
        assert queue.try_apply(conn, "job_c", "succeed", {"completed_at": 5.0}, connector_id="con_1",
                               attempt=1, statuses=(lifecycle.RUNNING,)) is None  # fmt: skip
        assert job_store.get(conn, None, "job_c")["status"] == lifecycle.DISPATCHED  # type: ignore[index]
        moved = queue.try_apply(conn, "job_c", "start", {"started_at": 5.0}, **kw, attempt=1)
        assert moved == {"tenant_id": "t", "started_at": 5.0, "dispatched_at": None, "status": lifecycle.RUNNING}
        ended = queue.try_apply(conn, "job_c", "succeed", {"completed_at": 6.0, "row_count": 7},
                                connector_id="con_1", attempt=1, statuses=lifecycle.IN_FLIGHT)  # fmt: skip
        assert ended is not None and ended["status"] == lifecycle.SUCCEEDED
        row = job_store.get(conn, None, "job_c")
        assert row is not None and (row["status"], row["row_count"], row["completed_at"]) == (lifecycle.SUCCEEDED, 7, 6.0)
        # A final job takes no further step.
        assert queue.try_apply(conn, "job_c", "fail", {}, connector_id="con_1", attempt=1,
                               statuses=lifecycle.IN_FLIGHT) is None  # fmt: skip
    for event, statuses in (("start", (lifecycle.RUNNING,)), ("requeue", (lifecycle.QUEUED, lifecycle.RUNNING))):
        with pytest.raises(ValueError, match="not one step"), engine.begin() as conn:
            queue.try_apply(conn, "job_c", event, {}, connector_id="con_1", attempt=1, statuses=statuses)


def test_sql_text_is_written_once_for_both_paramstyles() -> None:
    stmt = raw.Sql("SELECT a FROM t\n   WHERE x = :x AND y = :y_2 AND z = '10%' AND c::text = :c")
    assert stmt.sqlite == "SELECT a FROM t WHERE x = :x AND y = :y_2 AND z = '10%' AND c::text = :c"
    assert stmt.pg == "SELECT a FROM t WHERE x = %(x)s AND y = %(y_2)s AND z = '10%%' AND c::text = %(c)s"


def test_a_pooled_connection_the_server_dropped_is_replaced_after_idling(pg_database: str) -> None:
    """PostgreSQL: a pooled connection idle past PING_AFTER_IDLE is checked before use,
    and one the server closed meanwhile is replaced instead of failing the store call."""
    from sqlalchemy import text

    from relay.store.engine import open_engine, ping_when_idle

    engine = open_engine(pg_database)
    ping_when_idle(engine, idle=0.0)  # every reuse counts as idle here
    try:
        with engine.connect() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        admin = create_engine(pg_database, isolation_level="AUTOCOMMIT")
        with admin.connect() as other:
            assert other.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
        admin.dispose()
        with engine.connect() as conn:  # the dead one is found and replaced
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar() != pid
            assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()
