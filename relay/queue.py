"""The job state machine: one table of allowed transitions, one function that applies them.

Everything that changes a job's status goes through ``apply`` (run inside a store
transaction), which looks the (status, event) pair up in ``TRANSITIONS`` and updates the
row only if it is still in the status it was read in (compare-and-set), so two racing
changes cannot both win. A pair with no entry raises ``IllegalTransition``, never a
surprise. Like h11's ``_state.py``: the whole machine can be read here at a glance.

Around the table sit the two policies that decide *which* event a lost or failed attempt
takes, each a pure function over the job's options: ``should_retry`` (attempts left under
``retryLimit``) and the lease rules. A dispatched job is leased to its connector until
``lease_expires_at``; the agent's traffic renews the lease (``renew_leases``), a lapsed
lease or an agent that no longer holds the job abandons the attempt (``abandon``): the job
goes back to the queue as attempt + 1 with the old attempt's chunks discarded, or, past
its ``retryLimit``, fails with the last error.
"""

from __future__ import annotations

from typing import Any, Final

import orjson
from sqlalchemy import Connection, bindparam, select, update

from shared.errors import Conflict

from .store import chunks as chunk_store
from .store import owners, pg, raw
from .store.schema import jobs

QUEUED, DISPATCHED, RUNNING = "queued", "dispatched", "running"
SUCCEEDED, FAILED, CANCELLED, EXPIRED, TIMED_OUT = (
    "succeeded", "failed", "cancelled", "expired", "timed_out",
)  # fmt: skip
STATUSES: Final = (QUEUED, DISPATCHED, RUNNING, SUCCEEDED, FAILED, CANCELLED, EXPIRED, TIMED_OUT)
FINAL: Final = frozenset({SUCCEEDED, FAILED, CANCELLED, EXPIRED, TIMED_OUT})
IN_FLIGHT: Final = (DISPATCHED, RUNNING)

# (status, event) -> next status. An agent may finish a job it never reported as started
# (e.g. it could not open the seal), hence the dispatched -> final entries. ``requeue`` is
# an attempt that was lost (lease lapsed, agent no longer holds it): back at once;
# ``retry`` is an attempt that failed with a retryable error: back after the delay.
# ``record_columns`` changes no status: a running job (started without columns) learns
# its result's columns.
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
    (DISPATCHED, "retry"): QUEUED,
    (RUNNING, "record_columns"): RUNNING,
    (RUNNING, "succeed"): SUCCEEDED,
    (RUNNING, "fail"): FAILED,
    (RUNNING, "cancel"): CANCELLED,
    (RUNNING, "time_out"): TIMED_OUT,
    (RUNNING, "requeue"): QUEUED,
    (RUNNING, "retry"): QUEUED,
}

# What an agent's job.done.v1 status means as an event.
DONE_EVENTS: Final = {
    SUCCEEDED: "succeed", FAILED: "fail", CANCELLED: "cancel", TIMED_OUT: "time_out",
}  # fmt: skip

DEFAULT_RETRY_LIMIT: Final = 2
LOST_ERROR: Final = {
    "code": "AGENT_LOST",
    "message": "the agent stopped holding the job (it restarted or went silent) too many times",
    "retryable": True,
}


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


_CAS_TRIES: Final = 3  # a job changes state a handful of times in its life

# Built once (the hot path): the read, and the compare-and-set whose SET clause is the
# keys of the parameters it is executed with (``status`` plus the caller's ``values``).
_READ = select(jobs.c.status, jobs.c.attempt).where(jobs.c.id == bindparam("b_id"))
_CAS = update(jobs).where(
    jobs.c.id == bindparam("b_id"), jobs.c.status == bindparam("b_status"),
    jobs.c.attempt == bindparam("b_attempt"),
)  # fmt: skip


def apply(
    conn: Connection, job_id: str, event: str, values: dict[str, Any] | None = None,
    *, expect: str | None = None, attempt: int | None = None,
) -> str:  # fmt: skip
    """Move ``job_id`` by ``event``; set ``values`` too. Returns the new status.

    ``expect`` pins the status the caller believes the job is in, ``attempt`` the attempt
    (e.g. the one a lease was read for); a mismatch is an ``IllegalTransition`` like any
    other.
    """
    for _ in range(_CAS_TRIES):
        row = conn.execute(_READ, {"b_id": job_id}).first()
        if row is None:
            raise IllegalTransition(job_id, "unknown", event)
        status = row.status
        target = next_status(status, event)
        stale = (expect is not None and status != expect) or (attempt is not None and row.attempt != attempt)
        if target is None or stale:
            raise IllegalTransition(job_id, status, event)
        params = {**(values or {}), "status": target, "b_id": job_id, "b_status": status,
                  "b_attempt": row.attempt}  # fmt: skip
        done = conn.execute(_CAS, params)
        if done.rowcount == 1:
            return target
        # Another transaction (another relay node) moved the job between our read and our
        # write, e.g. dispatched -> running while we cancel: judge the event again from the
        # status it is in now, instead of failing a step that is still legal.
    raise IllegalTransition(job_id, status, event)


# The hot path's steps in one statement each, on the driver's cursor (relay/store/raw.py):
# a job's dispatch, start and end are each a single UPDATE whose WHERE clause is the
# compare-and-set (status, attempt, and the connector holding the job). They take the same
# TRANSITIONS; when the bet on the job's state does not hold nothing changes, and the
# caller takes the careful path (``apply``), which says what is wrong.
_TRY_APPLY: dict[tuple[str, ...], raw.Sql] = {}


def _try_apply_sql(keys: tuple[str, ...]) -> raw.Sql:
    stmt = _TRY_APPLY.get(keys)
    if stmt is None:
        sets = ", ".join(f"{k} = :{k}" for k in ("status", *keys))
        stmt = _TRY_APPLY[keys] = raw.Sql(
            f"UPDATE jobs SET {sets} WHERE id = :b_id AND connector_id = :b_connector"
            " AND attempt = :b_attempt AND status IN (:b_status1, :b_status2)"
            " RETURNING tenant_id, started_at, dispatched_at"
        )
    return stmt


def try_apply(
    conn: Connection, job_id: str, event: str, values: dict[str, Any], *,
    connector_id: str, attempt: int, statuses: tuple[str, ...],
) -> dict[str, Any] | None:  # fmt: skip
    """Move the job by ``event`` if it is ``connector_id``'s, in ``attempt``, and in one
    of ``statuses`` (each of which ``event`` takes to the same status); set ``values``.
    Returns the job's ``tenant_id``, ``started_at`` and ``dispatched_at`` (as the row now
    holds them) and its new ``status``; None when the job is not as bet, and nothing
    changed."""
    targets = {TRANSITIONS.get((s, event)) for s in statuses}
    if len(targets) != 1 or None in targets or not 1 <= len(statuses) <= 2:
        raise ValueError(f"{event} from {statuses} is not one step")
    (target,) = targets
    params = {**values, "status": target, "b_id": job_id, "b_connector": connector_id,
              "b_attempt": attempt, "b_status1": statuses[0], "b_status2": statuses[-1]}  # fmt: skip
    row = raw.one(conn, _try_apply_sql(tuple(values)), params)
    if row is None:
        return None
    return {"tenant_id": row[0], "started_at": row[1], "dispatched_at": row[2], "status": target}


_PICK = ("SELECT id FROM jobs WHERE connector_id = :connector AND status = 'queued' "
         "AND (not_before IS NULL OR not_before <= :at) ORDER BY priority DESC, queued_at, id LIMIT :limit")
_SET_DISPATCHED = "SET status = :status, dispatched_at = :at, lease_expires_at = :lease"
_CLAIM_SQLITE = raw.Sql(
    f"UPDATE jobs {_SET_DISPATCHED} WHERE status = 'queued' AND id IN ({_PICK}) RETURNING *"
)
# PostgreSQL: the pick is a CTE, evaluated once, its rows locked (another node's claim
# skips them). As an ``IN (subquery)`` the planner may run the pick again per row, and a
# second run, seeing the rows just updated no longer queued, picks the next ones.
_CLAIM_PG = raw.Sql(
    f"WITH picked AS ({_PICK} FOR UPDATE SKIP LOCKED) UPDATE jobs {_SET_DISPATCHED} "
    "FROM picked WHERE jobs.id = picked.id AND jobs.status = 'queued' RETURNING jobs.*"
)


def claim(conn: Connection, connector_id: str, limit: int, at: float, lease_until: float) -> list[dict[str, Any]]:
    """Dispatch up to ``limit`` of the connector's due queued jobs, highest priority first
    then oldest, leased until ``lease_until``: (queued, dispatch) for each, in one
    statement (on PostgreSQL the rows another node is claiming are skipped). Returns the
    jobs as they now are, in that order. ``not_before`` is left as it was (a retried
    job's dispatch latency counts from it); only a queued job's is ever read."""
    if limit <= 0:
        return []
    stmt = _CLAIM_PG if conn.dialect.name == "postgresql" else _CLAIM_SQLITE
    params = {"status": TRANSITIONS[(QUEUED, "dispatch")], "connector": connector_id, "at": at,
              "lease": lease_until, "limit": limit}  # fmt: skip
    claimed = raw.rows(conn, stmt, params)
    for job in claimed:
        job["sealed"] = raw.as_bytes(job["sealed"])
    claimed.sort(key=lambda j: (-j["priority"], j["queued_at"], j["id"]))
    return claimed


# ---------------------------------------------------------------- retry policy


def retry_limit(options: str | dict[str, Any] | None) -> int:
    opts = orjson.loads(options) if isinstance(options, str) else (options or {})
    value = opts.get("retryLimit")
    return DEFAULT_RETRY_LIMIT if not isinstance(value, int) or isinstance(value, bool) else value


def retry_delay(options: str | dict[str, Any] | None) -> float:
    opts = orjson.loads(options) if isinstance(options, str) else (options or {})
    value = opts.get("retryDelaySeconds")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 5.0


def should_retry(attempt: int, limit: int) -> bool:
    """Attempt ``attempt`` ended without a result: is there another? (``retryLimit``
    counts retries after the first attempt, so attempts run at most ``limit + 1`` times.)"""
    return attempt <= limit


def give_back(
    conn: Connection, job: dict[str, Any], event: str, error: dict[str, Any], at: float,
    *, delay: float = 0.0,
) -> str:  # fmt: skip
    """End the job's current attempt without a result: requeue it as the next attempt
    (``event`` is ``requeue`` or ``retry``) while retries remain, else fail it with
    ``error``. The ended attempt's chunks are discarded either way. Returns the status."""
    attempt = job["attempt"]
    if should_retry(attempt, retry_limit(job["options"])):
        values = {
            "attempt": attempt + 1, "dispatched_at": None, "started_at": None, "columns": None,
            "lease_expires_at": None, "not_before": at + delay if delay > 0 else None,
        }  # fmt: skip
        status = apply(conn, job["id"], event, values, attempt=attempt)
    else:
        values = {"error": orjson.dumps(error).decode(), "completed_at": at, "lease_expires_at": None}
        status = apply(conn, job["id"], "fail", values, attempt=attempt)
    chunk_store.delete_for_job(conn, job["id"], attempt)
    return status


def abandon(conn: Connection, job: dict[str, Any], at: float) -> str:
    """The attempt was lost (lease lapsed, or the agent no longer holds it)."""
    return give_back(conn, job, "requeue", LOST_ERROR, at)


# ---------------------------------------------------------------- leases


def renew_leases(conn: Connection, connector_id: str, until: float) -> None:
    """The connector's agent is alive: every job it holds is leased until ``until``."""
    conn.execute(
        update(jobs)
        .where(jobs.c.connector_id == connector_id, jobs.c.status.in_(IN_FLIGHT))
        .values(lease_expires_at=until)
    )


def extend_all_leases(conn: Connection, until: float) -> int:
    """At startup: the relay was not there to see agents' traffic, so it cannot say they
    went silent; every in-flight lease runs at least until ``until``."""
    done = conn.execute(
        update(jobs)
        .where(jobs.c.status.in_(IN_FLIGHT))
        .where((jobs.c.lease_expires_at.is_(None)) | (jobs.c.lease_expires_at < until))
        .values(lease_expires_at=until)
    )
    return done.rowcount or 0


def lapsed(conn: Connection, at: float, node: str | None = None) -> list[dict[str, Any]]:
    """In-flight jobs whose lease ran out before ``at``. Given this relay ``node``, jobs
    of connectors another live node holds are left to that node (it may renew them);
    rows another node is giving back right now are skipped (PostgreSQL)."""
    q = select(jobs).where(jobs.c.status.in_(IN_FLIGHT), jobs.c.lease_expires_at < at)
    if node is not None:
        q = q.where(jobs.c.connector_id.not_in(owners.owned_elsewhere(node, at)))
    rows = conn.execute(pg.skip_locked(conn, q)).all()
    return [dict(r._mapping) for r in rows]
