"""The job state machine applied to a real (SQLite) store, entry by entry (the table
itself, without a store: tests/relay/jobs/test_lifecycle.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from sqlalchemy import Connection, create_engine, select

from relay.jobs import lifecycle
from relay.store import chunks as chunk_store
from relay.store import jobs as job_store
from relay.store import queue
from relay.store.schema import jobs, migrate

EVENTS = sorted({e for _, e in lifecycle.TRANSITIONS})


@pytest.fixture
def conn() -> Iterator[Connection]:
    engine = create_engine("sqlite://")
    migrate(engine)
    with engine.begin() as c:
        yield c


def _job(conn: Connection, status: str = lifecycle.QUEUED, attempt: int = 1, **options: Any) -> dict[str, Any]:
    job_id = f"job_{len(conn.execute(select(jobs.c.id)).all()):032d}"
    job_store.insert(conn, {
        "id": job_id, "tenant_id": "t", "connector_id": "con_1", "source": "erp",
        "operation": "query", "sealed": b"x", "seal_form": "relay",
        "options": orjson.dumps(options).decode(), "priority": 0, "status": status,
        "attempt": attempt, "queued_at": 1.0,
    })  # fmt: skip
    return job_store.get(conn, None, job_id) or {}


@pytest.mark.parametrize("status", lifecycle.STATUSES)
@pytest.mark.parametrize("event", EVENTS)
def test_every_status_event_pair_moves_as_the_table_says_or_is_refused(
    conn: Connection, status: str, event: str
) -> None:
    """Each (status, event) either lands exactly where the table says or raises
    IllegalTransition and leaves the job untouched; final statuses never move."""
    job = _job(conn, status)
    target = lifecycle.next_status(status, event)
    if status in lifecycle.FINAL:
        assert target is None
    if target is None:
        with pytest.raises(lifecycle.IllegalTransition) as err:
            queue.apply(conn, job["id"], event)
        assert err.value.code == "CONFLICT" and err.value.status_now == status
        assert job_store.get(conn, None, job["id"])["status"] == status  # type: ignore[index]
    else:
        assert queue.apply(conn, job["id"], event) == target
        assert job_store.get(conn, None, job["id"])["status"] == target  # type: ignore[index]


def test_the_table_has_the_documented_shape() -> None:
    """Lost or failed attempts go back to the queue from dispatched and running only;
    only a queued job can expire; every live status has a way out."""
    for status in lifecycle.IN_FLIGHT:
        assert lifecycle.next_status(status, "requeue") == lifecycle.QUEUED
        assert lifecycle.next_status(status, "retry") == lifecycle.QUEUED
    assert [s for (s, e) in lifecycle.TRANSITIONS if e == "expire"] == [lifecycle.QUEUED]
    for status in set(lifecycle.STATUSES) - lifecycle.FINAL:
        assert any(s == status for s, _ in lifecycle.TRANSITIONS), status


def test_columns_are_recorded_on_a_running_job_without_a_status_change(conn: Connection) -> None:
    """A job started without columns learns them later by ``record_columns``: running
    stays running, startedAt is kept; no other status takes the event."""
    job = _job(conn, lifecycle.DISPATCHED)
    assert queue.apply(conn, job["id"], "start", {"started_at": 5.0}) == lifecycle.RUNNING
    assert queue.apply(conn, job["id"], "record_columns", {"columns": '[{"name":"a","type":"int"}]'}) == lifecycle.RUNNING
    got = job_store.get(conn, None, job["id"]) or {}
    assert got["status"] == lifecycle.RUNNING and got["started_at"] == 5.0 and got["columns"]
    assert [s for (s, e) in lifecycle.TRANSITIONS if e == "record_columns"] == [lifecycle.RUNNING]
    with pytest.raises(lifecycle.IllegalTransition):
        queue.apply(conn, job["id"], "start", {"started_at": 9.0})  # a second start stays refused


def test_a_pinned_status_or_attempt_that_no_longer_holds_is_refused(conn: Connection) -> None:
    job = _job(conn, lifecycle.RUNNING, attempt=2)
    with pytest.raises(lifecycle.IllegalTransition):
        queue.apply(conn, job["id"], "requeue", attempt=1)
    with pytest.raises(lifecycle.IllegalTransition):
        queue.apply(conn, job["id"], "cancel", expect=lifecycle.DISPATCHED)
    with pytest.raises(lifecycle.IllegalTransition):
        queue.apply(conn, "job_missing", "cancel")
    assert queue.apply(conn, job["id"], "succeed", attempt=2) == lifecycle.SUCCEEDED


def test_lost_attempt_is_requeued_as_the_next_attempt_and_its_chunks_discarded(conn: Connection) -> None:
    job = _job(conn, lifecycle.RUNNING, retryLimit=1)
    chunk_store.insert(conn, job["id"], 1, 0, 1, "k1", b"data")
    assert queue.abandon(conn, job, at=10.0) == lifecycle.QUEUED
    again = job_store.get(conn, None, job["id"]) or {}
    assert again["attempt"] == 2 and again["not_before"] is None and again["dispatched_at"] is None
    assert chunk_store.seqs(conn, job["id"], 1) == []


def test_retryable_failure_waits_its_delay_and_past_the_limit_fails_with_the_last_error(
    conn: Connection,
) -> None:
    error = {"code": "SOURCE_UNAVAILABLE", "message": "db down", "retryable": True}
    job = _job(conn, lifecycle.RUNNING, retryLimit=1, retryDelaySeconds=7)
    assert queue.give_back(conn, job, "retry", error, 100.0, delay=7) == lifecycle.QUEUED
    job = job_store.get(conn, None, job["id"]) or {}
    assert job["attempt"] == 2 and job["not_before"] == 107.0
    assert job_store.next_queued(conn, "con_1", 10, at=106.0) == []
    assert [j["id"] for j in job_store.next_queued(conn, "con_1", 10, at=107.0)] == [job["id"]]
    queue.apply(conn, job["id"], "dispatch")
    job = job_store.get(conn, None, job["id"]) or {}
    assert queue.give_back(conn, job, "retry", error, 200.0) == lifecycle.FAILED
    final = job_store.get(conn, None, job["id"]) or {}
    assert orjson.loads(final["error"]) == error and final["completed_at"] == 200.0


def test_leases_renew_lapse_and_are_extended_at_startup(conn: Connection) -> None:
    job = _job(conn, lifecycle.QUEUED)
    queue.apply(conn, job["id"], "dispatch", {"lease_expires_at": 5.0})
    assert [j["id"] for j in queue.lapsed(conn, 6.0)] == [job["id"]]
    queue.renew_leases(conn, "con_1", 20.0)
    assert queue.lapsed(conn, 6.0) == []
    assert queue.extend_all_leases(conn, 50.0) == 1
    assert queue.lapsed(conn, 49.0) == [] and len(queue.lapsed(conn, 51.0)) == 1


def test_priority_first_then_first_come_first_served(conn: Connection) -> None:
    ids = []
    for i, prio in enumerate([0, 5, 0, 5]):
        job = _job(conn)
        conn.execute(jobs.update().where(jobs.c.id == job["id"]).values(priority=prio, queued_at=float(i)))
        ids.append(job["id"])
    order = [j["id"] for j in job_store.next_queued(conn, "con_1", 10)]
    assert order == [ids[1], ids[3], ids[0], ids[2]]


def test_chunk_acks_cover_only_a_gap_free_prefix(conn: Connection) -> None:
    assert chunk_store.acked_through(conn, "job_x", 1) == -1
    chunk_store.insert(conn, "job_x", 1, 1, 1, "k1", b"b")
    assert chunk_store.acked_through(conn, "job_x", 1) == -1
    chunk_store.insert(conn, "job_x", 1, 0, 1, "k1", b"a")
    chunk_store.insert(conn, "job_x", 1, 3, 1, "k1", b"d")
    assert chunk_store.acked_through(conn, "job_x", 1) == 1
    chunk_store.insert(conn, "job_x", 1, 2, 1, "k1", b"c")
    assert chunk_store.acked_through(conn, "job_x", 1) == 3


def test_dispatch_claim_reads_the_claim_index_without_sorting(conn: Connection) -> None:
    """Claiming the next jobs walks ix_jobs_claim in priority-then-age order: no sort of
    every queued job per claim (the cost that capped small jobs per second)."""
    for _ in range(3):
        _job(conn)
    query = select(jobs.c.id).where(jobs.c.connector_id == "con_1", jobs.c.status == "queued")
    query = query.order_by(jobs.c.priority.desc(), jobs.c.queued_at, jobs.c.id).limit(1)
    compiled = query.compile(conn, compile_kwargs={"literal_binds": True})
    plan = " ".join(str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}"))
    assert "ix_jobs_claim" in plan and "TEMP B-TREE" not in plan, plan
    assert [j["id"] for j in job_store.next_queued(conn, "con_1", 2)] == [
        f"job_{0:032d}", f"job_{1:032d}"
    ]
