"""The job state machine: one table of allowed transitions, one function that applies them.

Everything that changes a job's status goes through ``apply`` (run inside a store
transaction), which looks the (status, event) pair up in ``TRANSITIONS`` and updates the
row only if it is still in the status it was read in (compare-and-set), so two racing
changes cannot both win. A pair with no entry raises ``IllegalTransition``, never a
surprise. Like h11's ``_state.py``: the whole machine can be read here at a glance.
"""

from __future__ import annotations

from typing import Any, Final

from sqlalchemy import Connection, select, update

from shared.errors import Conflict

from .store.schema import jobs

QUEUED, DISPATCHED, RUNNING = "queued", "dispatched", "running"
SUCCEEDED, FAILED, CANCELLED, EXPIRED, TIMED_OUT = (
    "succeeded", "failed", "cancelled", "expired", "timed_out",
)  # fmt: skip
STATUSES: Final = (QUEUED, DISPATCHED, RUNNING, SUCCEEDED, FAILED, CANCELLED, EXPIRED, TIMED_OUT)
FINAL: Final = frozenset({SUCCEEDED, FAILED, CANCELLED, EXPIRED, TIMED_OUT})
IN_FLIGHT: Final = (DISPATCHED, RUNNING)

# (status, event) -> next status. An agent may finish a job it never reported as started
# (e.g. it could not open the seal), hence the dispatched -> final entries.
TRANSITIONS: Final[dict[tuple[str, str], str]] = {
    (QUEUED, "dispatch"): DISPATCHED,
    (QUEUED, "cancel"): CANCELLED,
    (QUEUED, "fail"): FAILED,  # connector revoked while the job waited
    (QUEUED, "expire"): EXPIRED,
    (DISPATCHED, "start"): RUNNING,
    (DISPATCHED, "succeed"): SUCCEEDED,
    (DISPATCHED, "fail"): FAILED,
    (DISPATCHED, "cancel"): CANCELLED,
    (DISPATCHED, "time_out"): TIMED_OUT,
    (DISPATCHED, "requeue"): QUEUED,
    (RUNNING, "succeed"): SUCCEEDED,
    (RUNNING, "fail"): FAILED,
    (RUNNING, "cancel"): CANCELLED,
    (RUNNING, "time_out"): TIMED_OUT,
    (RUNNING, "requeue"): QUEUED,
}

# What an agent's job.done.v1 status means as an event.
DONE_EVENTS: Final = {
    SUCCEEDED: "succeed", FAILED: "fail", CANCELLED: "cancel", TIMED_OUT: "time_out",
}  # fmt: skip


class IllegalTransition(Conflict):
    """A job cannot take this step from the status it is in."""

    def __init__(self, job_id: str, status: str, event: str) -> None:
        super().__init__(
            f"job {job_id} is {status}; it cannot {event.replace('_', ' ')}",
            details={"jobId": job_id, "status": status, "event": event},
        )
        self.status_now = status


def next_status(status: str, event: str) -> str | None:
    return TRANSITIONS.get((status, event))


def apply(
    conn: Connection, job_id: str, event: str, values: dict[str, Any] | None = None,
    *, expect: str | None = None,
) -> str:  # fmt: skip
    """Move ``job_id`` by ``event``; set ``values`` too. Returns the new status.

    ``expect`` pins the status the caller believes the job is in (e.g. the attempt it
    dispatched); a mismatch is an ``IllegalTransition`` like any other.
    """
    row = conn.execute(select(jobs.c.status).where(jobs.c.id == job_id)).first()
    if row is None:
        raise IllegalTransition(job_id, "unknown", event)
    status = row.status
    target = next_status(status, event)
    if target is None or (expect is not None and status != expect):
        raise IllegalTransition(job_id, status, event)
    done = conn.execute(
        update(jobs)
        .where(jobs.c.id == job_id, jobs.c.status == status)
        .values(status=target, **(values or {}))
    )
    if done.rowcount != 1:  # someone else moved it between our read and write
        raise IllegalTransition(job_id, status, event)
    return target
