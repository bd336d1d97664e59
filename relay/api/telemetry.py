"""A connector's shipped log lines and heartbeat samples."""

from __future__ import annotations

import re
from typing import Final

from aiohttp import web

from shared.errors import ValidationError
from shared.protocol import LOG_LEVEL_NUMBERS

from ..ids_and_times import iso, now, parse_iso
from ..store import connectors as con_store
from ..store import logs as log_store
from .common import not_found, ok, principal, query_int, relay_of

# RFC 3339's date-time, which the OpenAPI document's ``format: date-time`` names: Python's
# ``fromisoformat`` alone would also take "2026-12-04", "20261204T0300" or no offset at all.
RFC3339: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def _time(request: web.Request, name: str) -> float | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        if not RFC3339.fullmatch(raw):
            raise ValueError(raw)
        return parse_iso(raw)
    except (ValueError, OverflowError):
        hint = " (a '+' in a URL's query means a space: write it as %2B)" if " " in raw else ""
        raise ValidationError(f"{name} must be an RFC 3339 time such as 2026-12-04T03:00:00Z{hint}",
                              field=name) from None


async def _connector_id(request: web.Request) -> str:
    relay, who = relay_of(request), principal(request)
    cid = request.match_info["id"]
    # U+0000 is in no id, and PostgreSQL refuses it in a query: not found, not a 500
    if "\x00" in cid or await relay.store.run(con_store.get, who.tenant_id, cid) is None:
        raise not_found("connector", cid)
    return cid


async def logs(request: web.Request) -> web.Response:
    relay = relay_of(request)
    level = (request.query.get("level") or "DEBUG").upper()
    if level not in LOG_LEVEL_NUMBERS:
        raise ValidationError("level must be debug, info, warning, error or critical", field="level")
    since, until = _time(request, "since"), _time(request, "until")
    limit = query_int(request, "limit", 100, lo=1, hi=1000)
    cursor = query_int(request, "cursor", 0, lo=0, hi=10**18 - 1)  # ASCII digits only
    job_id = request.query.get("jobId") or None
    cid = await _connector_id(request)
    # No line matches a job id holding U+0000 (which PostgreSQL refuses in a query): an
    # empty page, as for any job id that has no lines, not a 500.
    rows = [] if job_id is not None and "\x00" in job_id else await relay.store.run(
        log_store.page_logs, cid, min_level=LOG_LEVEL_NUMBERS[level], since=since, until=until,
        job_id=job_id, after_id=cursor, limit=limit + 1,
    )  # fmt: skip
    more = len(rows) > limit
    rows = rows[:limit]
    lines = [
        {"id": str(r["id"]), "timestamp": iso(r["timestamp"]), "level": r["level"].lower(),
         "message": r["message"], "logger": r["logger"], "jobId": r["job_id"],
         "receivedAt": iso(r["received_at"])}
        for r in rows
    ]  # fmt: skip
    next_cursor = str(rows[-1]["id"]) if more and rows else None
    return ok({"connectorId": cid, "logs": lines, "nextCursor": next_cursor})


async def metrics(request: web.Request) -> web.Response:
    relay = relay_of(request)
    retention = relay.config.metrics_retention_seconds
    since = _time(request, "since")
    floor = now() - retention
    cid = await _connector_id(request)
    rows = await relay.store.run(log_store.samples, cid, max(since or floor, floor))
    data = [
        {"timestamp": iso(r["timestamp"]), "cpuUsage": r["cpu_usage"],
         "memoryUsage": r["memory_usage"], "activeJobs": r["active_jobs"]}
        for r in rows
    ]  # fmt: skip
    return ok(data)
