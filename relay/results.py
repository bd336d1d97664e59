"""Serving a job's rows from the chunk store as NDJSON or CSV, tailing a running job.

``ResultStream`` walks the chunks of the job's current attempt in sequence order,
decrypting one chunk at a time (memory does not grow with the result), skipping to
``offset``, and, while the job is still live, waiting on the job's notifier (with a poll
fallback) for the next chunk. It ends when the job succeeds and every chunk is served;
it ends in error (the connection is cut, no terminating chunk) when the attempt being
read is abandoned or the job ends without succeeding, so a reader never takes a partial
or duplicated result for a whole one.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from typing import Any

import orjson

from shared.errors import Gone, MCError
from shared.rows import decode_rows

from . import queue
from .context import Relay
from .formats import now
from .store import chunks as chunk_store
from .store import jobs as job_store


class StreamAborted(Exception):
    """The rows being served stopped being a valid result (abandoned or failed)."""


def columns_of(job: dict[str, Any]) -> list[dict[str, str]]:
    return orjson.loads(job["columns"]) if job.get("columns") else []


def job_error(job: dict[str, Any]) -> MCError:
    err = orjson.loads(job["error"]) if job.get("error") else None
    if err:
        return MCError(err.get("message", "the job failed"), code=err.get("code", "QUERY_FAILED"),
                       retryable=err.get("retryable"), details={"jobId": job["id"]})  # fmt: skip
    code = {"cancelled": "CANCELLED", "expired": "EXPIRED", "timed_out": "TIMEOUT"}.get(
        job["status"], "QUERY_FAILED"
    )
    return MCError(f"the job ended {job['status']} before any row", code=code, details={"jobId": job["id"]})


async def wait_for_columns(relay: Relay, job_id: str) -> dict[str, Any]:
    """Wait until the job has started (its columns are known) or has ended; return it.

    Raises the job's error (409) if it ended without rows, 410 past the result TTL.
    """
    watch = relay.notifier.watch(job_id)
    try:
        while True:
            job = await relay.store.run(job_store.get, None, job_id)
            if job is None:
                raise StreamAborted("the job disappeared")
            if job["result_expires_at"] is not None and job["result_expires_at"] < now():
                raise Gone("this job's results have expired", details={"jobId": job_id})
            if job["status"] in queue.FINAL:
                if job["status"] != queue.SUCCEEDED and not job.get("row_count"):
                    seqs = await relay.store.run(chunk_store.seqs, job_id, job["attempt"])
                    if not seqs:
                        raise job_error(job)
                return job
            if job.get("columns"):
                return job
            await watch.wait(relay.config.result_poll_interval)
    finally:
        watch.close()


async def rows(relay: Relay, job: dict[str, Any], offset: int) -> AsyncIterator[list[list[Any]]]:
    """Batches of rows from ``offset`` on, following the job until it ends."""
    job_id, attempt = job["id"], job["attempt"]
    next_seq, skip = 0, offset
    watch = relay.notifier.watch(job_id)
    try:
        while True:
            stored = await relay.store.run(chunk_store.seqs, job_id, attempt)
            progressed = False
            for seq, count in stored:
                if seq != next_seq:
                    if seq < next_seq:
                        continue
                    break  # a gap: wait for the missing chunk
                next_seq += 1
                progressed = True
                if skip >= count:
                    skip -= count
                    continue
                batch = await _read_chunk(relay, job_id, attempt, seq)
                if skip:
                    batch, skip = batch[skip:], 0
                if batch:
                    yield batch
            if progressed:
                continue
            current = await relay.store.run(job_store.get, None, job_id)
            if current is None or current["attempt"] != attempt:
                raise StreamAborted("the attempt being read was abandoned; read the job again")
            if current["status"] in queue.FINAL:
                if current["status"] == queue.SUCCEEDED and next_seq >= (current["chunks"] or 0):
                    return
                if current["status"] != queue.SUCCEEDED:
                    raise StreamAborted(f"the job ended {current['status']}")
            await watch.wait(relay.config.result_poll_interval)
    finally:
        watch.close()


async def check_readable(relay: Relay, job: dict[str, Any]) -> None:
    """Refuse before any byte is sent when a stored chunk's data key is not configured
    (removed from MC_RELAY_DATA_KEYS too early): a clear error, not a cut-off 200."""
    stored = await relay.store.run(chunk_store.key_ids, job["id"], job["attempt"])
    missing = sorted(k for k in stored if not relay.cipher.has(k))
    if missing:
        raise MCError(
            f"this result is encrypted with data key {', '.join(map(repr, missing))}, which "
            "this relay no longer has; add it back to its data keys (see docs/SECURITY.md)",
            code="INTERNAL_ERROR", details={"missingKeyIds": missing}, retryable=False,
        )


async def _read_chunk(relay: Relay, job_id: str, attempt: int, seq: int) -> list[list[Any]]:
    stored = await relay.store.run(chunk_store.read, job_id, attempt, seq)
    if stored is None:
        raise StreamAborted("a stored chunk vanished (the result expired or was replaced)")
    aad = f"{job_id}:{attempt}:{seq}".encode()
    try:
        batch = decode_rows(relay.cipher.decrypt(stored["key_id"], stored["data"], aad))
    except ValueError as exc:  # intake checks the frame only; rows are parsed here, once
        raise StreamAborted(f"chunk {seq} does not hold a JSON array of rows") from exc
    if len(batch) != stored["rows"]:
        raise StreamAborted(f"chunk {seq} declared {stored['rows']} rows but holds {len(batch)}")
    return batch


# ---------------------------------------------------------------- formats


def ndjson(names: list[str], batch: list[list[Any]]) -> bytes:
    """One JSON object per row, newline-terminated.

    Fast path: one ``orjson.dumps`` over the whole batch of dicts, then the separators
    between objects, ``},{"<first column>":``, become newlines. That byte sequence cannot
    occur inside a string (orjson writes ``"`` there as ``\\"``); a nested value can hold
    it (a JSON column of objects keyed like the first column), which the count catches:
    exactly ``len(batch) - 1`` separators, or the batch is encoded row by row instead.
    """
    if not batch:
        return b""
    rows = [dict(zip(names, row, strict=False)) for row in batch]
    if names:
        key = orjson.dumps(names[0]) + b":"
        sep = b"},{" + key
        body = orjson.dumps(rows)[1:-1]
        if body.count(sep) == len(rows) - 1:
            return body.replace(sep, b"}\n{" + key) + b"\n"
    dumps, opt = orjson.dumps, orjson.OPT_APPEND_NEWLINE
    return b"".join([dumps(row, option=opt) for row in rows])


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    return value


def csv_rows(batch: list[list[Any]]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    for row in batch:
        writer.writerow([_csv_value(v) for v in row])
    return buf.getvalue().encode("utf-8")


def csv_header(names: list[str]) -> bytes:
    return csv_rows([list(names)])
