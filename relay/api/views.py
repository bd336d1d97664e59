"""How store rows look in the API: the contract's field names, ISO times, live overlays."""

from __future__ import annotations

from typing import Any

import orjson

from ..agents.messages import duration_ms
from ..agents.session import AgentSession
from ..ids_and_times import iso
from ..jobs.lifecycle import JobOptions


def connector_view(
    row: dict[str, Any], session: AgentSession | None = None,
    previous: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """``previous``: the earlier keys still working (store.connectors.previous_keys)."""
    # Heartbeats update the live session at once; prefer it over the stored row.
    s = session if session is not None and not session.dead else None
    last_seen = row["last_seen"]
    if s is not None:
        last_seen = max(last_seen or 0.0, s.last_heartbeat)
    return {
        "id": row["id"],
        "name": row["name"],
        "status": row["status"],
        "os": row["os"],
        "hostname": row["hostname"],
        "ipAddress": row["ip_address"],
        "version": s.version if s else row["version"],
        "lastSeen": iso(last_seen),
        "connectedSince": iso(row["connected_since"]),
        "cpuUsage": s.cpu_usage if s and s.cpu_usage is not None else row["cpu_usage"],
        "memoryUsage": s.memory_usage if s and s.memory_usage is not None else row["memory_usage"],
        "activeJobs": s.active_jobs if s else (row["active_jobs"] or 0),
        "capacity": s.capacity if s else row["capacity"],
        "sources": orjson.loads(row["sources"] or "[]"),
        "apiKeyPrefix": row["api_key_prefix"],
        "previousKeys": [{"apiKeyPrefix": p["prefix"], "expiresAt": iso(p["expires_at"])}
                         for p in previous or ()],
        "publicKey": row["public_key"],
        "createdAt": iso(row["created_at"]),
    }


def job_view(row: dict[str, Any]) -> dict[str, Any]:
    """A job row as the API shows it; a row just inserted (``submission.submit_job``)
    lacks the columns set later, which read as null."""
    get = row.get
    return {
        "id": row["id"],
        "connectorId": row["connector_id"],
        "source": row["source"],
        "operation": row["operation"],
        "status": row["status"],
        # ``attempt`` is the attempt in hand; it counts as made once dispatched.
        "attempts": row["attempt"] if get("dispatched_at") else row["attempt"] - 1,
        "priority": row["priority"],
        "queuedAt": iso(row["queued_at"]),
        "dispatchedAt": iso(get("dispatched_at")),
        "startedAt": iso(get("started_at")),
        "completedAt": iso(get("completed_at")),
        "durationMs": duration_ms(row),
        "rowCount": get("row_count"),
        "byteCount": get("byte_count"),
        "truncated": bool(get("truncated")),
        "columns": orjson.loads(row["columns"]) if get("columns") else [],
        "error": orjson.loads(row["error"]) if get("error") else None,
        "jobKey": JobOptions.from_json(row["options"]).job_key,
    }
