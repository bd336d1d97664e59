"""Serving a job's rows from the chunk store as NDJSON or CSV, tailing a running job.

``ResultStream`` walks the chunks of the job's current attempt in sequence order,
decrypting one chunk at a time (memory does not grow with the result), skipping to
``offset``, and, while the job is still live, waiting on the job's notifier (with a poll
fallback) for the next chunk. It ends when the job succeeds and every chunk is served;
it ends in error (the connection is cut, no terminating chunk) when the attempt being
read is abandoned or the job ends without succeeding, so a reader never takes a partial
or duplicated result for a whole one.

A chunk holds arrays (``[[...],...]``, parsed here; NDJSON objects are built per batch) or
object lines (``{...}\n`` per row, keyed by the column names: checked at intake, served
as NDJSON verbatim, parsed only for CSV); ``shared.rows`` tells them apart by the first
byte. Each chunk's row count is checked against what intake stored, for both forms,
and every row of an array chunk must be an array of one value per column.
"""

from __future__ import annotations

import asyncio
import csv
import io
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import orjson

from shared.crypto import DataCipher
from shared.errors import DecryptionFailed, Gone, MCError
from shared.protocol import MAX_DECOMPRESSED
from shared.rows import (
    decode_object_lines,
    decode_rows,
    drop_lines,
    first_keys,
    is_object_lines,
    object_lines,
)

from .. import atrest
from ..ids_and_times import now
from ..store import Store
from ..store import chunks as chunk_store
from ..store import jobs as job_store
from ..store.outage import StoreUnavailable
from . import lifecycle
from .csv_cells import csv_cell
from .live_chunks import RecentChunks
from .notify import JobNotifier, Watch


@dataclass(frozen=True, slots=True)
class Sources:
    """What serving a result reads, and nothing else of the relay: the store, the data
    cipher, the chunks this node stored lately, the job notifier and the poll interval;
    ``reader_gone`` says whether the client has hung up (checked at every wake-up, so a
    reader that left stops within a poll interval, not when the job next moves)."""

    store: Store
    cipher: DataCipher
    recent: RecentChunks
    notifier: JobNotifier
    poll_interval: float
    reader_gone: Callable[[], bool] = lambda: False


class StreamAborted(Exception):
    """The rows being served stopped being a valid result (abandoned or failed)."""


class ReaderGone(Exception):
    """The client hung up while waiting: there is no one left to serve."""


T = TypeVar("T")
STORE_PATIENCE = 60.0  # seconds a live reader is kept waiting for an unreachable store


async def _patiently(src: Sources, make: Callable[[], Awaitable[T]]) -> T:
    """``await make()``; while the store is out of reach (a failover, a restart: store/
    outage.py) again each poll interval, for up to ``STORE_PATIENCE``; then the stream
    ends in error. A reader following a job is kept waiting through a short outage and
    gets every row once, instead of a stream cut short."""
    since = None
    while True:
        try:
            return await make()
        except StoreUnavailable:
            since = time.monotonic() if since is None else since
            if time.monotonic() - since >= STORE_PATIENCE:
                raise StreamAborted(f"the relay's store was out of reach for {STORE_PATIENCE:g} s; "
                                    "read the job again") from None  # fmt: skip
            await asyncio.sleep(src.poll_interval)
            if src.reader_gone():
                raise ReaderGone("the client closed the connection") from None


async def _wait(src: Sources, watch: Watch) -> None:
    await watch.wait(src.poll_interval)
    if src.reader_gone():
        raise ReaderGone("the client closed the connection")


class ObjectLines:
    """A chunk's rows as object lines (``data``: ``rows`` lines keyed by ``names``)."""

    __slots__ = ("data", "names", "rows")

    def __init__(self, data: bytes, rows: int, names: list[str]) -> None:
        self.data, self.rows, self.names = data, rows, names

    def __len__(self) -> int:
        return self.rows

    def skip(self, n: int) -> ObjectLines:
        return ObjectLines(drop_lines(self.data, n), max(0, self.rows - n), self.names)


Batch = list[list[Any]] | ObjectLines


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


async def wait_for_columns(src: Sources, job_id: str, *, wait: bool = True) -> dict[str, Any]:
    """Wait until the job has started (its columns are known) or has ended; return it.
    ``wait=False`` (a HEAD request): return a job that has not started at once.

    Raises the job's error (409) if it ended without rows, 410 past the result TTL.
    """
    watch = src.notifier.watch(job_id)
    try:
        while True:
            job = await src.store.run(job_store.get, None, job_id)
            if job is None:
                raise StreamAborted("the job disappeared")
            if job["result_expires_at"] is not None and job["result_expires_at"] < now():
                raise Gone("this job's results have expired", details={"jobId": job_id})
            if job["status"] in lifecycle.FINAL:
                if job["status"] != lifecycle.SUCCEEDED and not job.get("row_count"):
                    seqs = await src.store.run(chunk_store.seqs, job_id, job["attempt"])
                    if not seqs:
                        raise job_error(job)
                return job
            if job.get("columns") or not wait:
                return job
            await _wait(src, watch)
    finally:
        watch.close()


async def rows(src: Sources, job: dict[str, Any], offset: int) -> AsyncIterator[Batch]:
    """Batches of rows from ``offset`` on, following the job until it ends: lists of rows
    (array chunks) or ``ObjectLines`` (object-line chunks)."""
    job_id, attempt = job["id"], job["attempt"]
    names = [c["name"] for c in columns_of(job)]
    next_seq, skip = 0, offset
    watch = src.notifier.watch(job_id)
    try:
        while True:
            # The job's state and its new chunks in one statement, read after the watch
            # was (re)armed: whatever is committed later wakes the watch, whatever was
            # committed before is in this answer, so no chunk and no end is missed.
            state, stored = await _patiently(src, partial(src.store.run, chunk_store.follow, job_id, attempt, next_seq))
            progressed = False
            for seq, count in stored:
                if seq != next_seq:
                    break  # a gap: wait for the missing chunk
                next_seq += 1
                progressed = True
                if skip >= count:
                    skip -= count
                    continue
                batch = await _patiently(src, partial(_read_chunk, src, job_id, attempt, seq, names))
                if skip:
                    batch = batch.skip(skip) if isinstance(batch, ObjectLines) else batch[skip:]
                    skip = 0
                if batch:
                    yield batch
            if state is None or state[0] != attempt:
                if progressed:
                    continue  # serve what is stored before saying so
                raise StreamAborted("the attempt being read was abandoned; read the job again")
            _, status, chunks = state
            if status == lifecycle.SUCCEEDED and next_seq >= (chunks or 0):
                return
            if progressed:
                if status not in lifecycle.FINAL:  # more will come: wait for it, not ask at once
                    await _wait(src, watch)
                continue
            if status in lifecycle.FINAL and status != lifecycle.SUCCEEDED:
                raise StreamAborted(f"the job ended {status}")
            await _wait(src, watch)
    finally:
        watch.close()


async def check_readable(src: Sources, job: dict[str, Any]) -> None:
    """Refuse before any byte is sent when a stored chunk's data key is not configured
    (removed from MC_RELAY_DATA_KEYS too early): a clear error, not a cut-off 200."""
    stored = await src.store.run(chunk_store.key_ids, job["id"], job["attempt"])
    missing = sorted(k for k in stored if not src.cipher.has(k))
    if missing:
        raise MCError(
            f"this result is encrypted with data key {', '.join(map(repr, missing))}, which "
            "this relay no longer has; add it back to its data keys (see docs/SECURITY.md)",
            code="INTERNAL_ERROR", details={"missingKeyIds": missing}, retryable=False,
        )
    if stored and not src.recent.holds(job["id"], job["attempt"], 0):
        # A key with the right id but other bytes (a node or a restart with another key):
        # try the first chunk now, so the reader gets this error instead of a cut stream.
        # (A chunk this node holds in memory it stored itself, under its own key.)
        first = await src.store.run(chunk_store.read, job["id"], job["attempt"], 0)
        if first is not None:
            aad = f"{job['id']}:{job['attempt']}:0".encode()
            try:
                atrest.unseal(src.cipher, first["key_id"], first["data"], aad, limit=MAX_DECOMPRESSED)
            except DecryptionFailed:
                raise MCError(
                    f"this result was stored with a data key {first['key_id']!r} that differs from "
                    "this relay's key of that id: every relay node, and every restart, must be "
                    "given the same MC_RELAY_DATA_KEY(S) (see docs/SECURITY.md)",
                    code="INTERNAL_ERROR", details={"keyId": first["key_id"]}, retryable=False,
                ) from None


async def _read_chunk(src: Sources, job_id: str, attempt: int, seq: int, names: list[str]) -> Batch:
    recent = src.recent.get(job_id, attempt, seq)  # stored here just now (relay/jobs/live_chunks.py)
    if recent is not None:
        declared, data = recent
    else:
        stored = await src.store.run(chunk_store.read, job_id, attempt, seq)
        if stored is None:
            raise StreamAborted("a stored chunk vanished (the result expired or was replaced)")
        aad = f"{job_id}:{attempt}:{seq}".encode()
        try:
            data = atrest.unseal(src.cipher, stored["key_id"], stored["data"], aad, limit=MAX_DECOMPRESSED)
        except DecryptionFailed as exc:
            raise StreamAborted(f"chunk {seq} cannot be read back: {exc}") from None
        declared = stored["rows"]
    if is_object_lines(data):
        # Intake parsed every line (each one is a JSON object); here the count and the
        # first line's keys, then the bytes are served as they are (docs/ARCHITECTURE.md).
        held = data.count(b"\n")
        if held != declared:
            raise StreamAborted(f"chunk {seq} declared {declared} rows but holds {held}")
        if first_keys(data) != names:
            raise StreamAborted(f"chunk {seq}'s rows are not keyed by the job's column names")
        return ObjectLines(data, held, names)
    try:
        batch = decode_rows(data) if data else []
    except ValueError as exc:  # intake checks the frame only; rows are parsed here, once
        raise StreamAborted(f"chunk {seq} does not hold a JSON array of rows") from exc
    if len(batch) != declared:
        raise StreamAborted(f"chunk {seq} declared {declared} rows but holds {len(batch)}")
    if not set(map(type, batch)) <= {list}:  # intake's cheap count cannot tell (0.07 ms/5k rows)
        raise StreamAborted(f"chunk {seq} holds a row that is not a JSON array")
    if set(map(len, batch)) - {len(names)}:  # a row of another width: keys lost or made up
        raise StreamAborted(f"chunk {seq} holds a row without one value per column")
    return batch


# ---------------------------------------------------------------- formats


def ndjson(names: list[str], batch: Batch) -> bytes:
    """One JSON object per row, newline-terminated: object lines as stored; array rows
    as dicts encoded a batch at a time (``shared.rows.object_lines``). Duplicate names
    keep the last value under the first position, as ``dict(zip(...))`` does."""
    if isinstance(batch, ObjectLines):
        return batch.data
    if not batch:
        return b""
    return object_lines(names, [dict(zip(names, row, strict=False)) for row in batch])


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    return value


def _object_values(batch: ObjectLines) -> list[list[Any]]:
    try:
        objs = decode_object_lines(batch.data)
    except ValueError as exc:
        raise StreamAborted("a chunk does not hold JSON object lines") from exc
    if len(objs) != batch.rows:
        raise StreamAborted(f"a chunk declared {batch.rows} rows but holds {len(objs)}")
    names = batch.names
    out = []
    for obj in objs:
        if len(obj) != len(names) or list(obj) != names:
            raise StreamAborted("an object line's keys are not the job's column names in order")
        out.append(list(obj.values()))
    return out


def csv_rows(batch: Batch, numeric: list[bool] | None = None) -> bytes:
    """CSV lines. ``numeric`` (one flag per column: typed integer/number/decimal) turns on
    formula neutralising (``csv_cells.csv_cell``); None writes cells raw."""
    if isinstance(batch, ObjectLines):
        batch = _object_values(batch)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    if numeric is None:
        for row in batch:
            writer.writerow([_csv_value(v) for v in row])
    else:
        width = len(numeric)
        for row in batch:
            writer.writerow([csv_cell(_csv_value(v), i < width and numeric[i]) for i, v in enumerate(row)])
    return buf.getvalue().encode("utf-8")


def csv_header(names: list[str], *, neutralise: bool = False) -> bytes:
    return csv_rows([list(names)], [False] * len(names) if neutralise else None)
