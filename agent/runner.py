"""Jobs on the agent: take them up to capacity, run them, stream their chunks, hold them.

The runner owns every job from ``job.assign.v1`` until the relay's ``job.done.ack.v1``.
Each job runs as one asyncio task; its rows are read by a ``Producer`` in a worker thread.
Chunks go out numbered from 0, never more than ``window`` unacknowledged; what the relay
has not acknowledged stays here and is resent (with ``job.done.v1``) when the session
reattaches after a reconnect. Cancel and timeout stop the query at the database through
the source's stream. The runner never touches the socket: the session hands it a ``Link``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextvars
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from shared.crypto import open_job
from shared.errors import DecryptionFailed, JobError
from shared.protocol import Message, make

from .logs import current_job
from .producer import ChunkItem, Producer
from .sources.base import (
    DISCOVER_COLUMNS,
    TEST_COLUMNS,
    Batches,
    Column,
    Source,
    discover_rows,
    test_row,
)

log = logging.getLogger("agent.runner")

DEFAULT_WINDOW = 8
DEFAULT_MAX_CHUNK = 1 << 20
RECANCEL_EVERY = 1.0
RECANCEL_FOR = 30.0


class Link(Protocol):
    """What the runner needs from a live connection."""

    async def send_message(self, msg: Message) -> None: ...

    async def send_binary(self, data: bytes) -> None: ...


@dataclass
class Job:
    job_id: str
    attempt: int
    source: str
    operation: str
    options: dict[str, Any]
    started_at: float = field(default_factory=time.time)
    started_msg: Message | None = None
    unacked: OrderedDict[int, bytes] = field(default_factory=OrderedDict)
    next_seq: int = 0
    sent_through: int = -1
    any_acked: bool = False
    rows: int = 0
    bytes: int = 0
    done_msg: Message | None = None
    done_sent: bool = False
    stop_reason: str | None = None  # "cancelled" | "timed_out" | "shutdown"
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    acked: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    producer: Producer | None = None
    stream: Any = None

    @property
    def key(self) -> tuple[str, int]:
        return (self.job_id, self.attempt)

    @property
    def running(self) -> bool:
        return self.done_msg is None


class Runner:
    def __init__(
        self,
        *,
        get_source: Callable[[str], Source],
        private_key: X25519PrivateKey,
        capacity: int = 4,
        compress: bool = True,
    ) -> None:
        self.get_source = get_source
        self.private_key = private_key
        self.capacity = capacity
        self.compress = compress
        self.connector_id = ""
        self.window = DEFAULT_WINDOW
        self.max_chunk_bytes = DEFAULT_MAX_CHUNK
        self.draining = False
        self.jobs: dict[str, Job] = {}
        self._link: Link | None = None
        self._send_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------ session side

    @property
    def active_jobs(self) -> int:
        return sum(1 for j in self.jobs.values() if j.running)

    def held_jobs(self) -> list[dict[str, Any]]:
        return [{"jobId": j.job_id, "attempt": j.attempt} for j in self.jobs.values()]

    def snapshot(self) -> list[dict[str, Any]]:
        return [
            {
                "jobId": j.job_id,
                "attempt": j.attempt,
                "source": j.source,
                "operation": j.operation,
                "state": "running" if j.running else "awaiting-ack",
                "rows": j.rows,
                "startedAt": j.started_at,
            }
            for j in self.jobs.values()
        ]

    async def attach(
        self, link: Link, *, connector_id: str, window: int, max_chunk_bytes: int
    ) -> None:
        """A session is ready: resend everything the relay has not acknowledged."""
        async with self._send_lock:
            self._link = link
            self.connector_id = connector_id
            self.window = window
            self.max_chunk_bytes = max_chunk_bytes
            for job in list(self.jobs.values()):
                job.sent_through = -1
                job.done_sent = False
                if job.started_msg is not None and not job.any_acked:
                    await link.send_message(job.started_msg)
                for seq, frame in list(job.unacked.items()):
                    await link.send_binary(frame)
                    job.sent_through = seq
                if job.done_msg is not None:
                    await link.send_message(job.done_msg)
                    job.done_sent = True
                job.acked.set()  # the window may have changed

    def detach(self) -> None:
        self._link = None

    async def on_message(self, msg: Message) -> None:
        if msg.type == "job.assign.v1":
            self.assign(msg)
        elif msg.type == "job.cancel.v1":
            self.cancel(msg["jobId"], msg["attempt"], reason="cancelled")
        elif msg.type == "job.chunk.ack.v1":
            self._chunk_ack(msg["jobId"], msg["attempt"], msg["seq"])
        elif msg.type == "job.done.ack.v1":
            job = self.jobs.get(msg["jobId"])
            if job is not None and job.attempt == msg["attempt"] and job.done_msg is not None:
                del self.jobs[job.job_id]
                log.debug("job %s acknowledged", job.job_id, extra={"jobId": job.job_id})

    # ------------------------------------------------------------ job lifecycle

    def assign(self, msg: Message) -> None:
        job_id, attempt = msg["jobId"], msg["attempt"]
        held = self.jobs.get(job_id)
        if held is not None and held.attempt == attempt:
            return  # a duplicate delivery: the held job answers for itself on attach
        if held is not None:
            # A newer attempt supersedes ours: its data must not mix with the old one's.
            self._abandon(held)
        job = Job(job_id, attempt, msg["source"], msg["operation"], dict(msg.get("options") or {}))
        self.jobs[job_id] = job
        if self.draining:
            self._finish_now(job, JobError("AGENT_SHUTDOWN", "the agent is shutting down"))
        elif self.active_jobs > self.capacity:
            self._finish_now(
                job,
                JobError(
                    "INTERNAL_ERROR",
                    f"the agent is already running its capacity of {self.capacity} jobs",
                    retryable=True,
                ),
            )
        else:
            ctx = contextvars.copy_context()
            job.task = asyncio.get_running_loop().create_task(
                self._run(job, msg.get("sealed")), context=ctx
            )

    def cancel(self, job_id: str, attempt: int, *, reason: str) -> None:
        job = self.jobs.get(job_id)
        if job is None or job.attempt != attempt or not job.running:
            return
        if job.stop_reason is None:
            job.stop_reason = reason
        job.stop.set()

    def _abandon(self, job: Job) -> None:
        job.stop_reason = job.stop_reason or "cancelled"
        job.stop.set()
        self.jobs.pop(job.job_id, None)

    def _finish_now(self, job: Job, error: JobError) -> None:
        job.done_msg = self._done(job, "failed", error)
        self._spawn(self._send_done(job))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _run(self, job: Job, sealed: str | None) -> None:
        current_job.set(job.job_id)
        extra = {"jobId": job.job_id}
        log.info(
            "job %s started: %s on source %s (attempt %d)",
            job.job_id, job.operation, job.source, job.attempt, extra=extra,
        )  # fmt: skip
        status, error = "succeeded", None
        try:
            status, error = await self._execute(job, sealed)
        except JobError as exc:
            status = {"CANCELLED": "cancelled", "TIMEOUT": "timed_out"}.get(exc.code, "failed")
            error = exc
        except Exception as exc:  # a bug in one job must not stop the agent
            log.exception("job %s failed unexpectedly", job.job_id, extra=extra)
            status, error = "failed", JobError("INTERNAL_ERROR", f"the agent failed: {type(exc).__name__}")
        if self.jobs.get(job.job_id) is not job:
            return  # abandoned for a newer attempt: say nothing about this one
        job.done_msg = self._done(job, status, error)
        if error is None:
            log.info("job %s succeeded: %d rows in %d chunks", job.job_id, job.rows, job.next_seq, extra=extra)
        else:
            log.info("job %s %s: %s %s", job.job_id, status, error.code, error.message, extra=extra)
        await self._send_done(job)

    def _done(self, job: Job, status: str, error: JobError | None) -> Message:
        return make(
            "job.done.v1",
            jobId=job.job_id,
            attempt=job.attempt,
            status=status,
            chunks=job.next_seq,
            rowCount=job.rows,
            byteCount=job.bytes,
            error=None if error is None else error.to_dict(),
        )

    async def _execute(self, job: Job, sealed: str | None) -> tuple[str, JobError | None]:
        request = self._open(job, sealed)
        timeout = _positive(job.options.get("timeoutSeconds"))
        max_rows = job.options.get("maxRows")
        max_rows = max_rows if isinstance(max_rows, int) and not isinstance(max_rows, bool) else None
        read = self._reader(job, request, timeout)
        producer = Producer(
            loop=asyncio.get_running_loop(),
            job_id=job.job_id,
            attempt=job.attempt,
            read=read,
            max_rows=max_rows,
            max_chunk_bytes=self.max_chunk_bytes,
            compress=self.compress,
        )
        job.producer = producer
        producer.start(contextvars.copy_context().run)
        consumer = asyncio.create_task(self._consume(job, producer))
        stopper = asyncio.create_task(job.stop.wait())
        done, _ = await asyncio.wait(
            {consumer, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        stopper.cancel()
        if consumer in done:
            consumer.result()  # raises the job's error, if any
            return "succeeded", None
        reason = job.stop_reason or "timed_out"
        job.stop_reason = reason
        consumer.cancel()
        producer.abort()
        self._spawn(self._stop_at_database(job, producer))
        if reason == "timed_out":
            return "timed_out", JobError("TIMEOUT", f"the job ran past its limit of {timeout:g} s and was stopped")
        if reason == "shutdown":
            return "failed", JobError("AGENT_SHUTDOWN", "the agent stopped before the job finished")
        return "cancelled", JobError("CANCELLED", "the job was cancelled")

    def _open(self, job: Job, sealed: str | None) -> Any:
        if sealed is None:
            if job.operation == "query":
                raise JobError("QUERY_FAILED", "the job carries no query", retryable=False)
            return {}
        try:
            blob = base64.b64decode(sealed, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise DecryptionFailed("the sealed query is not valid base64") from exc
        return open_job(blob, self.private_key, self.connector_id, job.job_id)

    def _reader(
        self, job: Job, request: Any, timeout: float | None
    ) -> Callable[[], tuple[list[Column], Iterator[Sequence[Any]]]]:
        """The blocking part of a job, run in its worker thread (the first SQL job's
        imports, the statement guard, the connection and the statement all block)."""

        def read() -> tuple[list[Column], Iterator[Sequence[Any]]]:
            source = self.get_source(job.source)
            if job.operation == "test":
                return TEST_COLUMNS, iter([[test_row(source.test())]])
            if job.operation == "discover":
                req = request if isinstance(request, dict) else {}
                return DISCOVER_COLUMNS, iter([discover_rows(source.discover(req))])
            stream = source.prepare(request, timeout=timeout)
            job.stream = stream
            if job.stop.is_set():
                stream.close()
                raise JobError("CANCELLED", "the job was cancelled")
            try:
                stream.start()
            except BaseException:
                stream.close()
                raise
            return stream.columns, Batches(stream, 200)

        return read

    async def _consume(self, job: Job, producer: Producer) -> None:
        while True:
            kind, value = await producer.queue.get()
            if kind == "columns":
                job.started_msg = make(
                    "job.started.v1", jobId=job.job_id, attempt=job.attempt, columns=value
                )
                async with self._send_lock:
                    if self._link is not None:
                        await self._link.send_message(job.started_msg)
            elif kind == "chunk":
                await self._add_chunk(job, value)
            elif kind == "end":
                return
            elif kind == "error":
                raise value

    async def _add_chunk(self, job: Job, item: ChunkItem) -> None:
        while len(job.unacked) >= self.window:
            job.acked.clear()
            await job.acked.wait()
        job.unacked[item.seq] = item.frame
        job.next_seq = item.seq + 1
        job.rows += item.rows
        job.bytes += item.payload_bytes
        async with self._send_lock:
            if self._link is not None and item.seq > job.sent_through and item.seq in job.unacked:
                await self._link.send_binary(item.frame)
                job.sent_through = item.seq

    def _chunk_ack(self, job_id: str, attempt: int, seq: int) -> None:
        job = self.jobs.get(job_id)
        if job is None or job.attempt != attempt:
            return
        # Acks are cumulative: the relay writes a job's chunks in order.
        for s in [s for s in job.unacked if s <= seq]:
            del job.unacked[s]
        job.any_acked = True
        job.acked.set()

    async def _send_done(self, job: Job) -> None:
        async with self._send_lock:
            if self._link is not None and job.done_msg is not None and not job.done_sent:
                await self._link.send_message(job.done_msg)
                job.done_sent = True

    async def _stop_at_database(self, job: Job, producer: Producer) -> None:
        """Cancel the statement, and again every second while the worker still runs."""
        deadline = time.monotonic() + RECANCEL_FOR
        while producer.alive and time.monotonic() < deadline:
            if job.stream is not None:
                await asyncio.to_thread(job.stream.cancel)
            await asyncio.sleep(RECANCEL_EVERY)

    # ------------------------------------------------------------ shutdown

    async def drain(self, grace: float) -> None:
        """Take no new jobs; let running ones finish for up to ``grace`` seconds."""
        self.draining = True
        tasks = [j.task for j in self.jobs.values() if j.task is not None and not j.task.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=grace)

    async def stop_all(self) -> None:
        """Forced stop: every running job ends as AGENT_SHUTDOWN (retryable elsewhere)."""
        for job in list(self.jobs.values()):
            self.cancel(job.job_id, job.attempt, reason="shutdown")
        tasks = [j.task for j in self.jobs.values() if j.task is not None and not j.task.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    async def wait_acknowledged(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.jobs and self._link is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)


def _positive(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None
