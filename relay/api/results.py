"""``GET /jobs/{id}/results``: NDJSON (default) or CSV, from ``offset``, tailing a live job.

CSV neutralises formula cells (``csv_cells.csv_cell``) unless ``csvFormulas=raw``."""

from __future__ import annotations

import logging

from aiohttp import web

from shared.errors import ValidationError

from ..jobs import results
from ..jobs.csv_cells import NUMERIC_TYPES
from ..store import jobs as job_store
from ..web.request_keys import REQUEST_ID, STREAMING
from .common import not_found, principal, query_choice, query_int, relay_of

log = logging.getLogger("relay.results")


async def get(request: web.Request) -> web.StreamResponse:
    relay, who = relay_of(request), principal(request)
    job_id = request.match_info["id"]
    fmt = request.query.get("format", "ndjson")
    if fmt not in ("ndjson", "csv"):
        raise ValidationError("format must be ndjson or csv", field="format")
    offset = query_int(request, "offset", 0, lo=0, hi=10**15)
    formulas = query_choice(request, "csvFormulas", ("escape", "raw")) or "escape"
    job = await relay.store.run(job_store.get, who.tenant_id, job_id)
    if job is None:
        raise not_found("job", job_id)
    src = results.Sources(relay.store, relay.cipher, relay.recent, relay.notifier, relay.config.result_poll_interval)
    # Headers wait until the columns are known, so a job that fails before its first row
    # still gets a proper 409 instead of an empty 200.
    try:
        job = await results.wait_for_columns(src, job_id)
    except results.StreamAborted as exc:
        raise not_found("job", job_id) from exc
    await results.check_readable(src, job)
    columns = results.columns_of(job)
    names = [c["name"] for c in columns]
    # CSV cells that a spreadsheet would run as formulas get a leading ' unless the
    # caller asks for csvFormulas=raw (docs/SECURITY.md, API hygiene).
    numeric = None if formulas == "raw" else [c.get("type") in NUMERIC_TYPES for c in columns]
    resp = web.StreamResponse(status=200)
    resp.content_type = "text/csv" if fmt == "csv" else "application/x-ndjson"
    resp.charset = "utf-8"
    resp.headers["X-Request-ID"] = request[REQUEST_ID]
    resp.headers["Cache-Control"] = "no-store"
    if job.get("status") == "succeeded":
        # Known once the job has ended: maxRows cut the result (the same as the job's
        # ``truncated``). A stream that began while the job ran does not carry it.
        resp.headers["X-Result-Truncated"] = "true" if job.get("truncated") else "false"
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    request[STREAMING] = True
    if fmt == "csv":
        await resp.write(results.csv_header(names, neutralise=numeric is not None))
    try:
        async for batch in results.rows(src, job, offset):
            await resp.write(results.csv_rows(batch, numeric) if fmt == "csv" else results.ndjson(names, batch))
    except results.StreamAborted as exc:
        # Cut the connection without the last chunk: the reader sees an error, not an end.
        log.info("result stream of %s aborted: %s", job_id, exc)
        if request.transport is not None:
            request.transport.abort()
        return resp
    await resp.write_eof()
    return resp
