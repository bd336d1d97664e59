"""Jobs: submit, list, read, cancel."""

from __future__ import annotations

from aiohttp import web

from ..ids_and_times import iso
from ..jobs import lifecycle, submission
from ..store import jobs as job_store
from .common import not_found, ok, paging, principal, query_choice, read_json, relay_of
from .job_spec import parse_job
from .views import job_view


async def create(request: web.Request) -> web.Response:
    relay, who = relay_of(request), principal(request)
    spec = parse_job(await read_json(request))
    job, created = await submission.submit_job(relay, who.tenant_id, spec)
    # 202: a new job, queued; 200: the existing job with this jobKey. The same Job either
    # way (the seed's {id, status, queuedAt} and the rest), so a client has one type.
    return ok(job_view(job), status=202 if created else 200)


async def list_(request: web.Request) -> web.Response:
    relay, who = relay_of(request), principal(request)
    status = query_choice(request, "status", lifecycle.STATUSES)
    connector_id = request.query.get("connectorId") or None
    page, limit = paging(request)
    if connector_id is not None and "\x00" in connector_id:
        rows, total = [], 0  # no connector's id holds U+0000 (PostgreSQL refuses it: a 500)
    else:
        rows, total = await relay.store.run(
            job_store.list_page, who.tenant_id, connector_id, status, page, limit
        )
    return ok([job_view(r) for r in rows], meta={"page": page, "limit": limit, "total": total})


async def get(request: web.Request) -> web.Response:
    relay, who = relay_of(request), principal(request)
    job_id = request.match_info["id"]
    job = await relay.store.run(job_store.get, who.tenant_id, job_id)
    if job is None:
        raise not_found("job", job_id)
    return ok(job_view(job))


async def cancel(request: web.Request) -> web.Response:
    relay, who = relay_of(request), principal(request)
    job = await submission.cancel_job(relay, who.tenant_id, request.match_info["id"])
    return ok({"id": job["id"], "status": job["status"], "cancelledAt": iso(job["cancelled_at"])})
