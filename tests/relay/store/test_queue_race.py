"""Two relay nodes moving one job at once: a step that is still legal is not refused."""

from __future__ import annotations

import orjson
import pytest
from sqlalchemy import create_engine, event, update

from relay.jobs import lifecycle
from relay.store import jobs as job_store
from relay.store import queue
from relay.store.schema import jobs, migrate

pytestmark = pytest.mark.postgres


def test_cancel_that_loses_a_race_with_start_is_judged_again(pg_database: str) -> None:
    """Node B cancels a job that node A moves from dispatched to running between B's read
    and B's write: the cancel applies to the running job instead of failing as if the job
    had ended (the bug was 409 JOB_ALREADY_FINISHED '(dispatched)')."""
    engine = create_engine(pg_database)
    other = create_engine(pg_database)
    try:
        migrate(engine)
        with engine.begin() as conn:
            job_store.insert(conn, {
                "id": "job_race", "tenant_id": "t", "connector_id": "con_1", "source": "erp",
                "operation": "query", "sealed": b"x", "seal_form": "relay",
                "options": orjson.dumps({}).decode(), "priority": 0, "status": "dispatched",
                "attempt": 1, "queued_at": 1.0,
            })  # fmt: skip
        raced = []

        def node_a_starts_first(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
            if statement.lstrip().upper().startswith("UPDATE JOBS") and not raced:
                raced.append(True)
                with other.begin() as c:  # another node's transaction, committed first
                    c.execute(update(jobs).where(jobs.c.id == "job_race").values(status="running"))

        with engine.begin() as conn:
            event.listen(conn, "before_cursor_execute", node_a_starts_first)
            assert queue.apply(conn, "job_race", "cancel", {"completed_at": 2.0}) == lifecycle.CANCELLED
        assert raced, "the race was not staged"
        with engine.connect() as conn:
            assert job_store.get(conn, None, "job_race")["status"] == lifecycle.CANCELLED
    finally:
        engine.dispose()
        other.dispose()
