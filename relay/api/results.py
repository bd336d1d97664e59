"""``GET /jobs/{id}/results``: NDJSON (default) or CSV, from ``offset``, tailing a live job.

CSV neutralises formula cells (``csv_cells.csv_cell``) unless ``csvFormulas=raw``.
HTTP/1.0 is refused (400): rows need chunked encoding to end in a way a cut cannot fake.
``HEAD`` answers the status and headers a GET would begin with, at once and without a body
(it neither waits for a queued job nor follows a running one). A client that hangs up
ends its request quietly: within a poll interval while it waits, at the next write
otherwise; never a logged stack trace. A client that stops reading is cut after
``MC_RELAY_SEND_TIMEOUT`` without progress, and a tenant holds at most
``MC_RELAY_RESULT_STREAMS`` streams open on a node (relay/web/slow_clients.py)."""

from __future__ import annotations

import logging

from aiohttp import web

from shared.errors import BadRequest, MCError, RateLimited, ValidationError

from ..jobs import results
from ..jobs.csv_cells import NUMERIC_TYPES
from ..store import jobs as job_store
from ..web.request_keys import REQUEST_ID, STREAMING
from ..web.slow_clients import watch_sends
from .common import not_found, principal, query_choice, query_int, relay_of

log = logging.getLogger("relay.results")
RETRY_AFTER = 5  # seconds a client over the per-tenant stream cap is asked to wait


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def get(request: web.Request) -> web.StreamResponse:
    relay, who = relay_of(request), principal(request)
    head = request.method == "HEAD"
    job_id = request.match_info["id"]
    if request.version < (1, 1):
        # Rows stream with chunked transfer encoding, which HTTP/1.0 lacks: its body would
        # end at a close, and a cut-off result could not be told from a whole one.
        raise BadRequest(
            "results are streamed and need HTTP/1.1; this request came as HTTP/1.0 "
            "(behind nginx, set proxy_http_version 1.1)",
            details={"httpVersion": f"{request.version.major}.{request.version.minor}"},
        )
    fmt = request.query.get("format", "ndjson")
    if fmt not in ("ndjson", "csv"):
        raise ValidationError("format must be ndjson or csv", field="format")
    offset = query_int(request, "offset", 0, lo=0, hi=10**15)
    formulas = query_choice(request, "csvFormulas", ("escape", "raw")) or "escape"
    job = await relay.store.run(job_store.get, who.tenant_id, job_id)
    if job is None:
        raise not_found("job", job_id)
    if head:
        return await _serve(request, job_id, fmt, offset, formulas, head=True)
    # Each open stream may hold a chunk in hand (relay/web/slow_clients.py): a cap per tenant.
    limit = relay.config.result_streams_per_tenant
    if not relay.result_streams.take(who.tenant_id, limit):
        raise RateLimited(f"this tenant already has {limit} result streams open on this relay node "
                          f"(MC_RELAY_RESULT_STREAMS): read or close one; retry after {RETRY_AFTER} s",
                          details={"retryAfter": RETRY_AFTER, "limit": limit})  # fmt: skip
    try:
        async with watch_sends(request.transport, relay.config.send_timeout, f"the reader of {job_id}"):
            return await _serve(request, job_id, fmt, offset, formulas, head=False)
    finally:
        relay.result_streams.release(who.tenant_id)


async def _serve(request: web.Request, job_id: str, fmt: str, offset: int, formulas: str, *,
                 head: bool) -> web.StreamResponse:  # fmt: skip
    relay = relay_of(request)
    src = results.Sources(relay.store, relay.cipher, relay.recent, relay.notifier,
                          relay.config.result_poll_interval, lambda: _client_gone(request))  # fmt: skip
    # Headers wait until the columns are known, so a job that fails before its first row
    # still gets a proper 409 instead of an empty 200 (a HEAD does not wait).
    try:
        job = await results.wait_for_columns(src, job_id, wait=not head)
    except results.StreamAborted as exc:
        raise not_found("job", job_id) from exc
    except results.ReaderGone:
        log.debug("the reader of %s left before its results began", job_id)
        return web.Response(status=204)  # never sent: the connection is gone
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
    if not head:
        resp.enable_chunked_encoding()
    try:
        await resp.prepare(request)
        if head:  # the headers alone: no body, and nothing to follow
            await resp.write_eof()
            return resp
        request[STREAMING] = True
        if fmt == "csv":
            await resp.write(results.csv_header(names, neutralise=numeric is not None))
        async for batch in results.rows(src, job, offset):
            await resp.write(results.csv_rows(batch, numeric) if fmt == "csv" else results.ndjson(names, batch))
    except (ConnectionError, results.ReaderGone) as exc:
        # The client hung up: nothing to answer and nothing wrong with the relay.
        log.debug("the reader of %s left: %s", job_id, exc)
        return resp
    except (results.StreamAborted, MCError) as exc:  # MCError: the store, past its patience
        # Cut the connection without the last chunk: the reader sees an error, not an end.
        log.info("result stream of %s aborted: %s", job_id, exc)
        if request.transport is not None:
            request.transport.abort()
        return resp
    await resp.write_eof()
    return resp
