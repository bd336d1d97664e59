"""What the relay does with each message from a live agent, and how it hands out jobs.

``dispatch`` sends queued jobs up to the session's free capacity; ``on_started``,
``on_chunk``, ``on_done``, ``on_heartbeat`` and ``on_logs`` record what the agent reports.
Every job status change goes through ``queue.apply``. A chunk is written durably before
it is acknowledged; a job becomes final only when every chunk 0..chunks-1 is stored.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

import orjson

from shared import protocol
from shared.errors import ProtocolError
from shared.rows import decode_rows

from . import queue
from .context import Relay
from .formats import iso, now, parse_iso
from .session import AgentSession
from .store import chunks as chunk_store
from .store import connectors as con_store
from .store import jobs as job_store
from .store import logs as log_store

log = logging.getLogger("relay.hub")

LEVEL_NO = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}


# ---------------------------------------------------------------- dispatch


def _assign_fields(job: dict[str, Any]) -> dict[str, Any]:
    opts = orjson.loads(job["options"])
    return {
        "jobId": job["id"],
        "attempt": job["attempt"],
        "source": job["source"],
        "operation": job["operation"],
        "sealed": base64.b64encode(job["sealed"]).decode("ascii") if job["sealed"] else None,
        "options": {"timeoutSeconds": opts.get("timeoutSeconds"), "maxRows": opts.get("maxRows")},
    }


def _claim(conn: Any, connector_id: str, limit: int, at: float) -> list[dict[str, Any]]:
    """Move up to ``limit`` queued jobs to dispatched, in one transaction."""
    claimed = []
    for job in job_store.next_queued(conn, connector_id, limit):
        try:
            queue.apply(conn, job["id"], "dispatch", {"dispatched_at": at}, expect=queue.QUEUED)
        except queue.IllegalTransition:
            continue
        claimed.append(job)
    return claimed


async def dispatch(relay: Relay, session: AgentSession) -> None:
    """Hand queued jobs to the agent, highest priority first, never past its capacity."""
    async with session.dispatch_lock:
        if session.dead or session.free_slots <= 0:
            return
        jobs = await relay.store.run(_claim, session.connector_id, session.free_slots, now())
        for job in jobs:
            session.in_flight[job["id"]] = job["attempt"]
            # A failed send leaves the job dispatched; the agent's next hello (without it
            # in heldJobs) puts it back in the queue.
            await session.send("job.assign.v1", **_assign_fields(job))


# ---------------------------------------------------------------- job messages


async def _owned_job(relay: Relay, session: AgentSession, job_id: str, attempt: int) -> dict[str, Any]:
    job = await relay.store.run(job_store.get, None, job_id)
    if job is None or job["connector_id"] != session.connector_id:
        raise ProtocolError(f"job {job_id[:64]} is not assigned to this connector")
    if job["attempt"] != attempt:
        # An abandoned attempt: tell the agent to drop it; its data is never used.
        await session.send("job.cancel.v1", jobId=job_id, attempt=attempt, reason="SUPERSEDED")
        raise ProtocolError(f"attempt {attempt} of job {job_id} is no longer current")
    return job


async def on_started(relay: Relay, session: AgentSession, msg: protocol.Message) -> None:
    job_id, attempt = msg["jobId"], msg["attempt"]
    job = await _owned_job(relay, session, job_id, attempt)
    session.in_flight[job_id] = attempt
    values = {"started_at": now(), "columns": orjson.dumps(msg["columns"]).decode()}
    try:
        await relay.store.run(queue.apply, job_id, "start", values)
    except queue.IllegalTransition as exc:
        if exc.status_now == queue.CANCELLED:
            await session.send("job.cancel.v1", jobId=job_id, attempt=attempt, reason="CANCELLED")
        # Already running (a resumed attempt re-announcing itself): keep the first start.
        if exc.status_now != queue.RUNNING:
            return
    else:
        relay.events.publish(
            session.tenant_id, "job_started", {"jobId": job_id, "connectorId": job["connector_id"]}
        )
    relay.notifier.notify(job_id)


async def on_chunk(relay: Relay, session: AgentSession, chunk: protocol.Chunk) -> None:
    await _owned_job(relay, session, chunk.job_id, chunk.attempt)
    try:
        rows = decode_rows(chunk.payload)
    except ValueError as exc:
        raise ProtocolError("chunk payload is not a JSON array of rows") from exc
    if len(rows) != chunk.rows or not all(isinstance(r, list) for r in rows):
        raise ProtocolError(f"chunk {chunk.seq} declares {chunk.rows} rows but holds {len(rows)}")
    aad = f"{chunk.job_id}:{chunk.attempt}:{chunk.seq}".encode()
    key_id, blob = relay.cipher.encrypt(chunk.payload, aad)
    await relay.store.run(
        chunk_store.insert, chunk.job_id, chunk.attempt, chunk.seq, chunk.rows, key_id, blob
    )
    await session.send("job.chunk.ack.v1", jobId=chunk.job_id, attempt=chunk.attempt, seq=chunk.seq)
    relay.notifier.notify(chunk.job_id)
    pending = session.pending_done.get(chunk.job_id)
    if pending is not None:
        await _try_finish(relay, session, pending)


async def on_done(relay: Relay, session: AgentSession, msg: protocol.Message) -> None:
    await _owned_job(relay, session, msg["jobId"], msg["attempt"])
    session.pending_done[msg["jobId"]] = msg
    await _try_finish(relay, session, msg)


def _finish(
    conn: Any, msg: protocol.Message, ttl: float, at: float
) -> tuple[bool, dict[str, Any]] | None:
    """Record the final status if every chunk is stored; None if some are still missing."""
    job_id, attempt = msg["jobId"], msg["attempt"]
    stored = [seq for seq, _ in chunk_store.seqs(conn, job_id, attempt)]
    if stored[: msg["chunks"]] != list(range(msg["chunks"])):
        return None
    values = {
        "completed_at": at,
        "row_count": msg["rowCount"],
        "byte_count": msg["byteCount"],
        "chunks": msg["chunks"],
        "error": orjson.dumps(msg.get("error")).decode() if msg.get("error") else None,
        "result_expires_at": at + ttl,
    }
    event = queue.DONE_EVENTS[msg["status"]]
    changed = True
    try:
        queue.apply(conn, job_id, event, values)
    except queue.IllegalTransition:
        # Cancelled by the platform meanwhile: keep that status, record the counts.
        changed = False
        values.pop("error")
        values.pop("completed_at")
        job_store.set_fields(conn, job_id, values)
    return changed, job_store.get(conn, None, job_id) or {}


async def _try_finish(relay: Relay, session: AgentSession, msg: protocol.Message) -> None:
    job_id = msg["jobId"]
    result = await relay.store.run(_finish, msg, relay.config.result_ttl_seconds, now())
    if result is None:
        return  # wait for the missing chunks; the agent resends what was never acked
    changed, job = result
    session.pending_done.pop(job_id, None)
    session.in_flight.pop(job_id, None)
    await session.send("job.done.ack.v1", jobId=job_id, attempt=msg["attempt"])
    relay.notifier.notify(job_id)
    if changed:  # a platform cancel already announced its own completion
        publish_completed(relay, session.tenant_id, job)
    await dispatch(relay, session)


def publish_completed(relay: Relay, tenant_id: str, job: dict[str, Any]) -> None:
    relay.events.publish(
        tenant_id,
        "job_completed",
        {
            "jobId": job["id"],
            "status": job["status"],
            "rowCount": job.get("row_count") or 0,
            "durationMs": duration_ms(job),
        },
    )


def duration_ms(job: dict[str, Any]) -> int | None:
    start = job.get("started_at") or job.get("dispatched_at")
    end = job.get("completed_at")
    if start is None or end is None:
        return None
    return max(0, round((end - start) * 1000))


# ---------------------------------------------------------------- heartbeats and logs


async def on_heartbeat(relay: Relay, session: AgentSession, msg: protocol.Message) -> None:
    at = now()
    session.last_heartbeat = at
    session.cpu_usage = float(msg["cpuUsage"])
    session.memory_usage = float(msg["memoryUsage"])
    session.active_jobs = msg["activeJobs"]
    grew = msg["capacity"] > session.capacity
    session.capacity = msg["capacity"]
    session.version = msg["version"]
    fields = {
        "cpu_usage": session.cpu_usage, "memory_usage": session.memory_usage,
        "active_jobs": session.active_jobs, "capacity": session.capacity,
        "version": session.version, "last_seen": at,
    }  # fmt: skip
    sample = {
        "connector_id": session.connector_id, "timestamp": at, "cpu_usage": session.cpu_usage,
        "memory_usage": session.memory_usage, "active_jobs": session.active_jobs,
    }  # fmt: skip
    await relay.store.run(_heartbeat_write, session.connector_id, fields, sample)
    if grew:
        await dispatch(relay, session)


def _heartbeat_write(conn: Any, connector_id: str, fields: dict[str, Any], sample: dict[str, Any]) -> None:
    con_store.set_fields(conn, connector_id, fields)
    log_store.add_sample(conn, sample)


async def on_logs(relay: Relay, session: AgentSession, msg: protocol.Message) -> None:
    rows = []
    for line in msg["lines"]:
        try:
            ts = parse_iso(line["timestamp"])
        except ValueError:
            ts = now()
        rows.append(
            {
                "connector_id": session.connector_id,
                "timestamp": ts,
                "level": line["level"],
                "level_no": LEVEL_NO[line["level"]],
                "message": line["message"],
                "logger": line.get("logger"),
                "job_id": line.get("jobId"),
            }
        )
    await relay.store.run(log_store.add_logs, rows, relay.config.log_retention_lines)


def connector_status_data(connector_id: str, status: str, last_seen: float | None) -> dict[str, Any]:
    return {"connectorId": connector_id, "status": status, "lastSeen": iso(last_seen)}
