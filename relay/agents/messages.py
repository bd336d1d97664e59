"""What the relay does with each message from a live agent, and how it hands out jobs.

``dispatch`` sends queued jobs up to the session's free capacity; ``on_started``,
``on_chunk``, ``on_done``, ``on_heartbeat`` and ``on_logs`` record what the agent reports.
Every job status change goes through the lifecycle table (relay/jobs/lifecycle.py), in
the store steps of relay/store/job_steps.py. A chunk is written durably before
it is acknowledged; a job becomes final only when every chunk 0..chunks-1 is stored.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable
from typing import Any

import orjson

from shared import protocol

from ..context import Relay
from ..events import EventBus
from ..ids_and_times import now, parse_iso
from ..jobs import lifecycle
from ..store import connector_steps
from ..store import job_steps as steps
from ..store import logs as log_store
from ..store.engine import DuplicateRow
from . import guard, heartbeats
from .session import AgentSession

log = logging.getLogger("relay.hub")


# ---------------------------------------------------------------- dispatch


def _assign_fields(job: dict[str, Any]) -> dict[str, Any]:
    return {
        "jobId": job["id"],
        "attempt": job["attempt"],
        "source": job["source"],
        "operation": job["operation"],
        "sealed": base64.b64encode(job["sealed"]).decode("ascii") if job["sealed"] else None,
        "options": lifecycle.JobOptions.from_json(job["options"]).for_agent(),
    }


async def dispatch(relay: Relay, session: AgentSession) -> None:
    """Hand queued jobs to the agent, highest priority first, never past its capacity.
    None while the store's disk is full: a job run then could not store a row, and each
    try would spend one of its retries and run the customer's query again for nothing; the
    queue waits, and the maintenance sweep dispatches once space is back."""
    async with session.dispatch_lock:
        if not session.takes_jobs or session.free_slots <= 0 or relay.store.disk.full:
            return
        jobs = await relay.store.run(
            steps.claim, session.connector_id, session.free_slots, now(), relay.config.offline_after,
            relay.cluster.node_id,
        )
        for job in jobs:
            session.in_flight[job["id"]] = job["attempt"]
        await _assign(relay, session, jobs)


async def _assign(relay: Relay, session: AgentSession, jobs: list[dict[str, Any]]) -> None:
    """Send claimed jobs (already counted in ``session.in_flight``) to the agent."""
    relay.metrics.dispatched(jobs, now())
    for job in jobs:
        # A failed send leaves the job dispatched; the agent's next hello (without it in
        # heldJobs) or its lapsing lease puts it back in the queue.
        await session.send("job.assign.v1", **_assign_fields(job))


# ---------------------------------------------------------------- job messages


async def _recorded(
    relay: Relay, session: AgentSession, fn: Any, job_id: str, attempt: int, *args: Any,
    call: Any = None,
) -> Any:  # fmt: skip
    """Run the store step ``fn`` (relay/store/job_steps.py) after the ownership check, in
    one store call (through ``call``, ``owned_then``'s shape, if given). A stale attempt is refused
    there; the agent is told (once) to drop it."""
    try:
        return await relay.store.run(call or steps.owned_then, fn, session.connector_id, job_id, attempt, *args)
    except steps.StaleAttempt:
        # An abandoned attempt: tell the agent (once) to drop it; its data is never used.
        if (job_id, attempt) not in session.superseded:
            session.superseded.add((job_id, attempt))
            await session.send("job.cancel.v1", jobId=job_id, attempt=attempt, reason="SUPERSEDED")
        raise


async def on_started(relay: Relay, session: AgentSession, msg: protocol.Message) -> None:
    job_id, attempt = msg["jobId"], msg["attempt"]
    columns = msg.get("columns")
    encoded = None if columns is None else orjson.dumps(columns).decode()
    try:
        started_now = await _recorded(relay, session, steps.START, job_id, attempt, encoded, now())
    except lifecycle.IllegalTransition as exc:
        session.in_flight[job_id] = attempt  # the agent holds it (it is this connector's)
        if exc.status_now == lifecycle.CANCELLED:
            await session.send("job.cancel.v1", jobId=job_id, attempt=attempt, reason="CANCELLED")
        # Already running (a resumed attempt re-announcing itself): keep the first start.
        if exc.status_now != lifecycle.RUNNING:
            return
    else:
        session.in_flight[job_id] = attempt
        if started_now:  # once per attempt, on its first started
            relay.events.publish(
                session.tenant_id, "job_started", {"jobId": job_id, "connectorId": session.connector_id}
            )
    relay.notifier.notify(job_id)


async def on_chunk(
    relay: Relay, session: AgentSession, head: protocol.ChunkHead, data: bytes, ready: Callable[[], None]
) -> None:
    """A chunk admitted by its header (``agentguard.admit``): its payload is decompressed,
    checked and sealed in a worker thread (on the loop when small), then stored; ``ready``
    is called just before the store call (a job's frames make theirs in arrival order)."""
    relay.store.disk.refuse("results are not stored")  # before the work: the attempt ends at once
    compress = relay.config.store_compression == "zstd"
    relay.metrics.chunk_payloads.inc()
    if guard.inline(head):
        prepared = guard.prepare(head, data, relay.cipher, compress)
    else:
        async with session.chunk_work:  # one agent cannot take every worker thread
            prepared = await relay.hub.workers.run(guard.prepare, head, data, relay.cipher, compress)
    del data  # the frame's bytes are not needed past this point
    ready()
    stored = (steps.STORE_CHUNK, head.job_id, head.attempt, head.seq, head.rows, prepared.key_id, prepared.blob)
    try:
        new, through = await _recorded(relay, session, *stored)
    except DuplicateRow:  # the same chunk stored meanwhile (a resend racing): look again
        new, through = await _recorded(relay, session, *stored, call=steps.careful)
    if new:  # a live reader takes it from here, not back from the store (relay/jobs/live_chunks.py)
        relay.recent.put(head.job_id, head.attempt, head.seq, head.rows, prepared.payload)
    # Acks are cumulative (the agent drops every chunk up to the acked seq), so only a
    # gap-free prefix is ever acknowledged; a chunk past a gap waits for the resend.
    if through >= 0:
        await session.send("job.chunk.ack.v1", jobId=head.job_id, attempt=head.attempt, seq=through)
    relay.notifier.notify(head.job_id)
    pending = session.pending_done.get(head.job_id)
    if pending is not None:
        await _try_finish(relay, session, pending)


async def end_refused(
    relay: Relay, session: AgentSession, head: protocol.ChunkHead, code: str, message: str, retryable: bool
) -> None:
    """An attempt whose chunk the relay could not take (rows it refuses, or a failure of
    its own storing them) ends now, as failed with ``code``, instead of waiting for a
    chunk that can never be stored (its job sat until its timeout, its resends refused
    again); the agent is told to drop the attempt. A retryable end goes back to the queue
    as any retryable failure does."""
    key = (head.job_id, head.attempt)
    if session.dead or session.in_flight.get(head.job_id) != head.attempt or key in session.ending:
        return  # not this session's attempt (a foreign frame), ended meanwhile, or being ended
    # Several chunks of one attempt may be refused together (a full disk refuses every
    # chunk in flight): one ends it, the others leave it to that one.
    session.ending.add(key)
    try:
        error = {"code": code, "message": message[:2000], "retryable": retryable}
        done = protocol.Message("job.done.v1", {"jobId": head.job_id, "attempt": head.attempt, "status": lifecycle.FAILED,
                                                 "rowCount": 0, "byteCount": 0, "chunks": 0, "error": error})  # fmt: skip
        log.warning("job %s attempt %d failed: %s", head.job_id, head.attempt, message[:300])
        await session.send("job.cancel.v1", jobId=head.job_id, attempt=head.attempt, reason="SUPERSEDED")
        await _try_finish(relay, session, done, first=True)
    except steps.StaleAttempt:
        pass  # ended meanwhile by the relay (a lapsed lease, a cancel): the agent was told
    finally:
        session.ending.discard(key)


async def on_done(relay: Relay, session: AgentSession, msg: protocol.Message) -> None:
    await _try_finish(relay, session, msg, first=True)


async def _try_finish(relay: Relay, session: AgentSession, msg: protocol.Message, first: bool = False) -> None:
    job_id = msg["jobId"]
    error = msg.get("error") or {}
    # The slot this job holds goes to the next queued job in the same store call, when
    # the agent takes work and the job is one of the capacity it counts.
    refill = (
        (relay.config.offline_after, relay.cluster.node_id)
        if job_id in session.in_flight and len(session.in_flight) <= session.capacity
        and not (session.dead or session.draining or error.get("code") == "AGENT_SHUTDOWN")
        and not relay.store.disk.full
        else None
    )  # fmt: skip
    result, claimed = await _recorded(
        relay, session, steps.FINISH, job_id, msg["attempt"], msg, relay.config.result_ttl_seconds, now(), refill,
        call=steps.finish_and_refill,
    )  # fmt: skip
    if result is None:
        if first:
            session.pending_done[job_id] = msg
        return  # wait for the missing chunks; the agent resends what was never acked
    outcome, job = result
    session.pending_done.pop(job_id, None)
    session.release_job(job_id)  # its late frames (a resend) are dropped, not violations
    for new in claimed:  # in the same step as the pop: the slot is never counted free
        session.in_flight[new["id"]] = new["attempt"]
    if error.get("code") == "AGENT_SHUTDOWN":
        session.to("drain")  # it takes no new work; leave its retries to the next agent
    await session.send("job.done.ack.v1", jobId=job_id, attempt=msg["attempt"])
    relay.notifier.notify(job_id)
    if outcome == "final":  # a platform cancel already announced its own completion
        publish_completed(relay.events, session.tenant_id, job)
        relay.metrics.finished(job.get("status") or msg["status"], msg["byteCount"])
    elif outcome == "retry":
        schedule_kick(relay, job)
    await _assign(relay, session, claimed)
    await dispatch(relay, session)


def schedule_kick(relay: Relay, job: dict[str, Any]) -> None:
    """Dispatch to the job's connector when its retry delay has passed (the maintenance
    sweep is the safety net if this node is gone by then)."""
    delay = max(0.0, (job.get("not_before") or now()) - now())
    loop = asyncio.get_running_loop()
    loop.call_later(delay + 0.01, lambda: relay.hub.spawn(relay.hub.kick(relay, job["connector_id"])))


def publish_completed(events: EventBus, tenant_id: str, job: dict[str, Any]) -> None:
    """The tenant's ``job_completed`` event (docs/API.md, Events)."""
    events.publish(
        tenant_id,
        "job_completed",
        {
            "jobId": job["id"],
            "status": job["status"],
            "rowCount": job.get("row_count") or 0,
            "truncated": bool(job.get("truncated")),
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


async def on_sources(relay: Relay, session: AgentSession, msg: protocol.Message) -> None:
    """The running agent's sources changed: jobs are checked against the new list from now
    on (submission reads it from the store)."""
    sources = orjson.dumps(msg["sources"]).decode()
    await relay.store.run(connector_steps.set_sources, session.connector_id, sources)
    log.info("agent sources changed: %s", ", ".join(s["name"] for s in msg["sources"]) or "none",
             extra={"connector_id": session.connector_id})  # fmt: skip


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
    # Its traffic keeps its jobs leased; an agent holding none has no lease to renew.
    held = session.in_flight or session.active_jobs
    lease_until = lifecycle.lease_expiry(at, relay.config.offline_after) if held else None
    # Coalesced with other agents' heartbeats into one transaction (relay/agents/heartbeats.py).
    await heartbeats.writer_for(relay.store).write(connector_steps.heartbeats, session.connector_id, fields, sample, lease_until)
    if grew:
        await dispatch(relay, session)




async def on_logs(relay: Relay, session: AgentSession, msg: protocol.Message) -> None:
    """Store an agent's log lines, trimmed to its connection's budget by the hub before they
    were validated (``agentguard.LogThrottle``): one line says how many were dropped; a message is cut to
    ``agent_log_line_max`` characters; the relay's receive time is kept beside the agent's
    timestamp, which is clamped to that time plus ``agent_clock_skew``."""
    cfg, throttle = relay.config, session.log_throttle
    at = now()
    latest = at + cfg.agent_clock_skew
    rows = []
    for line in msg["lines"]:  # already within the budget (the hub trims before validating)
        message = line["message"]
        if len(message) > cfg.agent_log_line_max:
            message = message[: cfg.agent_log_line_max] + " [cut by the relay]"
        try:
            ts = min(parse_iso(line["timestamp"]), latest)
        except ValueError:
            ts = at
        rows.append(
            {
                "connector_id": session.connector_id,
                "timestamp": ts,
                "received_at": at,
                "level": line["level"],
                "level_no": protocol.LOG_LEVEL_NUMBERS[line["level"]],
                "message": message,
                "logger": line.get("logger"),
                "job_id": line.get("jobId"),
                "line_id": line.get("id"),  # the agent's id: a resent line is stored once
            }
        )
    dropped = throttle.summary()
    if dropped:
        relay.metrics.agent_log_lines_dropped.inc(dropped)
        rows.append(dropped_line(session.connector_id, dropped, at))
    if rows and relay.store.disk.full:  # dropped: the agent sends them again when it reconnects
        relay.metrics.agent_log_lines_dropped.inc(len(rows))
    elif rows:
        added = await relay.store.run(log_store.add_logs, rows, cfg.log_retention_lines)
        relay.metrics.log_lines.inc(added)


async def flush_log_drops(relay: Relay, session: AgentSession) -> None:
    """At a session's end: the summary line of log lines dropped since the last one."""
    dropped = session.log_throttle.summary(force=True)
    if dropped:
        relay.metrics.agent_log_lines_dropped.inc(dropped)
        rows = [dropped_line(session.connector_id, dropped, now())]
        await relay.store.run(log_store.add_logs, rows, relay.config.log_retention_lines)


def dropped_line(connector_id: str, dropped: int, at: float) -> dict[str, Any]:
    """The relay's own line in a connector's log: how many of its lines it dropped."""
    return {
        "connector_id": connector_id, "timestamp": at, "received_at": at, "level": "WARNING",
        "level_no": protocol.LOG_LEVEL_NUMBERS["WARNING"], "logger": "relay",
        "message": f"{dropped} log lines dropped (over this connection's log budget on the relay)",
        "job_id": None, "line_id": None,
    }  # fmt: skip
