"""The job queue: the lifecycle's steps applied to the store.

What is legal is decided in relay/jobs/lifecycle.py (pure: the statuses, the transition
table, retry and lease policy, options). Here each step is applied to a job's row as a
compare-and-set (``apply``): the row changes only if it is still in the status it was
read in, so two racing changes cannot both win. The hot path takes one statement per step
(``try_apply``, ``claim``); leases are renewed by the agent's traffic (``renew_leases``)
and a lapsed lease or a lost attempt is given back (``abandon``, ``give_back``): the job
goes back to the queue as attempt + 1 with the old attempt's chunks discarded, or, past
its ``retryLimit``, fails with the last error.
"""

from __future__ import annotations

from typing import Any, Final

import orjson
from sqlalchemy import Connection, bindparam, select, update

from ..jobs.lifecycle import (
    IN_FLIGHT,
    LOST_ERROR,
    QUEUED,
    TRANSITIONS,
    IllegalTransition,
    JobOptions,
    next_status,
    one_step,
    should_retry,
)
from . import chunks as chunk_store
from . import owners, pg, raw
from .schema import jobs

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
    target = one_step(event, statuses)
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


def give_back(
    conn: Connection, job: dict[str, Any], event: str, error: dict[str, Any], at: float,
    *, delay: float = 0.0,
) -> str:  # fmt: skip
    """End the job's current attempt without a result: requeue it as the next attempt
    (``event`` is ``requeue`` or ``retry``) while retries remain, else fail it with
    ``error``. The ended attempt's chunks are discarded either way. Returns the status."""
    attempt = job["attempt"]
    if should_retry(attempt, JobOptions.from_json(job["options"]).retry_limit):
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
