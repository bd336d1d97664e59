"""A job's transactions: its submission (``insert_if_key``, ``connector_for_job``), a
cancel, the TTL sweep, and what a live agent reports about it.

Each agent frame is one store call: the job must be this connector's, in this attempt
(``check_owned``; a frame about an abandoned attempt raises ``StaleAttempt``, one about a
job that is not the connector's a ``ProtocolError``), then the step. A step is a pair
(``Step``): the usual case in one statement, and the careful path that says what is wrong
(relay/agents/messages.py calls ``owned_then(conn, START, ...)``). Status changes go through the
lifecycle table (relay/jobs/lifecycle.py) as applied by ``queue``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, select

from shared import protocol
from shared.errors import MCError, NotFound, ProtocolError

from ..agents import connector_status as cs
from ..jobs import lifecycle
from ..jobs.lifecycle import error_json
from ..jobs.sources import check_source
from . import chunks as chunk_store
from . import connectors as con_store
from . import jobs as job_store
from . import owners
from .queue import apply, give_back, try_apply
from .queue import claim as queue_claim
from .schema import jobs as jobs_table


def claim(
    conn: Connection, connector_id: str, limit: int, at: float, lease: float, node: str | None = None
) -> list[dict[str, Any]]:
    """Move up to ``limit`` due queued jobs to dispatched, leased to the connector (none
    when another relay node holds its agent now: this node's session is stale)."""
    if node is not None and not owners.owns(conn, connector_id, node):
        return []
    return queue_claim(conn, connector_id, limit, at, lifecycle.lease_expiry(at, lease))



class StaleAttempt(Exception):
    """A frame about an attempt that was abandoned: not a protocol violation (the agent
    may well resend what it held), just ignored once the agent has been told to drop it."""

    def __init__(self, job_id: str, attempt: int) -> None:
        super().__init__(f"attempt {attempt} of job {job_id} is no longer current")
        self.job_id, self.attempt = job_id, attempt


def check_owned(conn: Connection, connector_id: str, job_id: str, attempt: int) -> None:
    """Inside the store call that records an agent's frame (one call per frame, not a
    read and then a write): the job must be this connector's, in this attempt."""
    held = job_store.owner(conn, job_id)
    if held is None or held[0] != connector_id:
        raise ProtocolError(f"job {job_id[:64]} is not assigned to this connector")
    if held[1] != attempt:
        raise StaleAttempt(job_id, attempt)



CAREFUL = object()  # a fast path's answer: "not the usual case, take the careful path"


@dataclass(frozen=True, slots=True)
class Step:
    """A transaction recording one agent frame: ``careful(conn, job_id, attempt, *args)``
    runs after the ownership check and says what is wrong when the job is not as the frame
    expects; ``fast(conn, connector_id, job_id, attempt, *args)``, the usual case in one
    statement whose WHERE clause holds the ownership check, answers ``CAREFUL`` (having
    written nothing) when it does not apply."""

    careful: Callable[..., Any]
    fast: Callable[..., Any] | None = None


def owned_then(conn: Connection, step: Step, connector_id: str, job_id: str, attempt: int, *args: Any) -> Any:
    """``step.fast`` first, if it has one; then the careful way: ownership, and
    ``step.careful``."""
    if step.fast is not None:
        result = step.fast(conn, connector_id, job_id, attempt, *args)
        if result is not CAREFUL:
            return result
    return careful(conn, step, connector_id, job_id, attempt, *args)


def careful(conn: Connection, step: Step, connector_id: str, job_id: str, attempt: int, *args: Any) -> Any:
    check_owned(conn, connector_id, job_id, attempt)
    return step.careful(conn, job_id, attempt, *args)


def _start(conn: Connection, job_id: str, attempt: int, columns: str | None, at: float) -> bool:
    """The attempt's first job.started.v1 moves the job dispatched -> running (startedAt
    now); the columns come from whichever started carries them (an agent sends one when
    it begins and one with the columns once the query has them; an older agent only the
    latter). A started for a running job records its columns and keeps the first start;
    anything else is an ``IllegalTransition``. True when the job started now."""
    values: dict[str, Any] = {"started_at": at}
    if columns is not None:
        values["columns"] = columns
    try:
        apply(conn, job_id, "start", values, attempt=attempt)
        return True
    except lifecycle.IllegalTransition as exc:
        if exc.status_now != lifecycle.RUNNING or columns is None:
            raise
    apply(conn, job_id, "record_columns", {"columns": columns}, attempt=attempt)
    return False


def _start_fast(
    conn: Connection, connector_id: str, job_id: str, attempt: int, columns: str | None, at: float
) -> Any:
    """The usual started: the connector's dispatched job, in this attempt, starts now."""
    values: dict[str, Any] = {"started_at": at}
    if columns is not None:
        values["columns"] = columns
    moved = try_apply(conn, job_id, "start", values, connector_id=connector_id,
                            attempt=attempt, statuses=(lifecycle.DISPATCHED,))  # fmt: skip
    return CAREFUL if moved is None else True





def _store_chunk(
    conn: Connection, job_id: str, attempt: int, seq: int, rows: int, key_id: str, blob: bytes
) -> tuple[bool, int]:
    """(whether the chunk is new, not a resend, and the gap-free prefix stored now)."""
    new = chunk_store.insert(conn, job_id, attempt, seq, rows, key_id, blob)
    return new, chunk_store.acked_through(conn, job_id, attempt)


def _store_chunk_fast(
    conn: Connection, connector_id: str, job_id: str, attempt: int, seq: int, rows: int, key_id: str, blob: bytes
) -> Any:
    done = chunk_store.insert_owned(conn, connector_id, job_id, attempt, seq, rows, key_id, blob)
    return CAREFUL if done is None else done





def _finish(
    conn: Connection, job_id: str, attempt: int, msg: protocol.Message, ttl: float, at: float
) -> tuple[str, dict[str, Any]] | None:
    """Record how the attempt ended, once every chunk is stored (None while some are
    missing). Returns (outcome, job): ``final`` (the job ended now), ``retry`` (a
    retryable failure sent it back to the queue) or ``kept`` (it had ended already)."""
    stored = [seq for seq, _ in chunk_store.seqs(conn, job_id, attempt)]
    if stored[: msg["chunks"]] != list(range(msg["chunks"])):
        return None
    error = msg.get("error")
    job = job_store.get(conn, None, job_id) or {}
    if msg["status"] == lifecycle.FAILED and error and error.get("retryable") and job.get("status") in lifecycle.IN_FLIGHT:
        delay = lifecycle.JobOptions.from_json(job["options"]).retry_delay_seconds
        if give_back(conn, job, "retry", error, at, delay=delay) == lifecycle.QUEUED:
            return "retry", job_store.get(conn, None, job_id) or job
        return "final", job_store.get(conn, None, job_id) or job
    values = {
        "completed_at": at,
        "row_count": msg["rowCount"],
        "byte_count": msg["byteCount"],
        "truncated": 1 if msg.get("truncated") else 0,
        "chunks": msg["chunks"],
        "error": orjson.dumps(error).decode() if error else None,
        "result_expires_at": at + ttl,
        "lease_expires_at": None,
    }
    event = lifecycle.DONE_EVENTS[msg["status"]]
    try:
        status = apply(conn, job_id, event, values, attempt=attempt)
        return "final", {**job, **values, "status": status}  # what the row now holds
    except lifecycle.IllegalTransition:
        # Cancelled by the platform meanwhile (or a resent done): keep that status,
        # record the counts.
        values.pop("error")
        values.pop("completed_at")
        job_store.set_fields(conn, job_id, values)
    return "kept", job_store.get(conn, None, job_id) or {}


def _finish_fast(
    conn: Connection, connector_id: str, job_id: str, attempt: int, msg: protocol.Message, ttl: float, at: float
) -> Any:
    """The usual done: every chunk is stored and the connector's in-flight job ends as the
    agent says, in one statement after the chunk count. A retryable failure, a missing
    chunk or a job that is not as expected (cancelled meanwhile, a resent done) takes the
    careful path."""
    error = msg.get("error")
    if msg["status"] == lifecycle.FAILED and error and error.get("retryable"):
        return CAREFUL
    if msg["chunks"] and chunk_store.count_below(conn, job_id, attempt, msg["chunks"]) != msg["chunks"]:
        return CAREFUL
    values = {
        "completed_at": at, "row_count": msg["rowCount"], "byte_count": msg["byteCount"],
        "truncated": 1 if msg.get("truncated") else 0, "chunks": msg["chunks"], "error": orjson.dumps(error).decode() if error else None,
        "result_expires_at": at + ttl, "lease_expires_at": None,
    }  # fmt: skip
    ended = try_apply(conn, job_id, lifecycle.DONE_EVENTS[msg["status"]], values,
                            connector_id=connector_id, attempt=attempt, statuses=lifecycle.IN_FLIGHT)  # fmt: skip
    if ended is None:
        return CAREFUL
    return "final", {"id": job_id, "connector_id": connector_id, "attempt": attempt, **values, **ended}




START = Step(_start, _start_fast)
STORE_CHUNK = Step(_store_chunk, _store_chunk_fast)
FINISH = Step(_finish, _finish_fast)


def finish_and_refill(
    conn: Connection, step: Step, connector_id: str, job_id: str, attempt: int, msg: protocol.Message,
    ttl: float, at: float, refill: tuple[float, str | None] | None,
) -> tuple[Any, list[dict[str, Any]]]:  # fmt: skip
    """The attempt's end (``owned_then(FINISH)``) and, when it ended and ``refill``
    (lease, node) is given, the claim of the next queued job for the slot it frees: one
    store call and one commit between a job's done and its successor's assign."""
    result = owned_then(conn, step, connector_id, job_id, attempt, msg, ttl, at)
    if result is None or refill is None:
        return result, []
    return result, claim(conn, connector_id, 1, at, *refill)


def connector_for_job(conn: Connection, tenant_id: str, connector_id: str, source: str) -> dict[str, Any]:
    row = con_store.get(conn, tenant_id, connector_id)
    if row is None:
        raise NotFound(f"connector {connector_id[:80]} does not exist",
                       details={"field": "connectorId"})  # fmt: skip
    if row["status"] == cs.REVOKED:
        raise MCError("the connector is revoked", code="CONNECTOR_REVOKED")
    if not row["public_key"]:
        raise MCError(
            "the connector has never connected, so jobs cannot be sealed to it yet",
            code="CONNECTOR_PENDING",
        )
    check_source(row["sources"] or "[]", source)
    return row




def insert_if_key(conn: Connection, row: dict[str, Any], public_key: str) -> bool:
    """Queue the job sealed to ``public_key`` if that is still the connector's key and it
    is not revoked (False: nothing written; the caller reads the connector and reseals).
    A source the connector did not report raises ``SourceNotFound``."""
    sources = con_store.accepts_jobs_for(conn, row["tenant_id"], row["connector_id"], public_key)
    if sources is None:
        return False
    check_source(sources, row["source"])
    job_store.insert(conn, row)
    return True




def cancel(conn: Connection, tenant_id: str, job_id: str, at: float) -> tuple[dict[str, Any], str]:
    job = job_store.get(conn, tenant_id, job_id)
    if job is None:
        raise NotFound(f"job {job_id[:80]} does not exist")
    if job["status"] in lifecycle.FINAL:
        raise MCError(f"the job already ended ({job['status']})", code="JOB_ALREADY_FINISHED",
                      details={"status": job["status"]})  # fmt: skip
    values = {"cancelled_at": at, "completed_at": at,
              "error": error_json("CANCELLED", "the job was cancelled")}  # fmt: skip
    try:
        apply(conn, job_id, "cancel", values)
    except lifecycle.IllegalTransition as exc:
        raise MCError(f"the job already ended ({exc.status_now})", code="JOB_ALREADY_FINISHED") from None
    return job_store.get(conn, None, job_id) or job, job["status"]




def expire_due(conn: Connection, at: float) -> list[dict[str, Any]]:
    expired = []
    for job_id, queued_at, options in job_store.queued_ids(conn):
        if not lifecycle.expired(queued_at, lifecycle.JobOptions.from_json(options), at):
            continue
        error = error_json("EXPIRED", "the job waited longer than its ttlSeconds")
        try:
            apply(conn, job_id, "expire", {"error": error, "completed_at": at})
        except lifecycle.IllegalTransition:
            continue
        job = job_store.get(conn, None, job_id)
        if job:
            expired.append(job)
    return expired




def cancelled_of(conn: Connection, job_ids: list[str]) -> list[tuple[str, int]]:
    rows = conn.execute(select(jobs_table.c.id, jobs_table.c.attempt).where(jobs_table.c.id.in_(job_ids), jobs_table.c.status == lifecycle.CANCELLED))
    return [(r.id, r.attempt) for r in rows]
