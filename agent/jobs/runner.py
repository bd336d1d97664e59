"""Jobs on the agent: take them up to capacity, run them, stream their chunks, hold them.

The runner owns every job from ``job.assign.v1`` until the relay's ``job.done.ack.v1``.
Each job runs as one asyncio task; its rows are read by a ``Producer`` in a worker thread.
Chunks go out numbered from 0, never more than ``window`` unacknowledged; what the relay
has not acknowledged stays here and is resent (with ``job.done.v1``) when the session
reattaches after a reconnect. Every started/chunk/done/ack also goes to the spool
(``agent.jobs.spool``), so a finished job survives an agent restart (``restore``); a redelivered
finished job is answered or handed over, never run twice. Cancel and timeout stop the
query at the database through the source's stream. The runner never touches the socket:
the session hands it a ``Link``.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from shared.crypto import PrivateKey
from shared.errors import JobError
from shared.protocol import FLAG_ZSTD, Message, chunk_flags, decode_chunk, encode_chunk, make

from ..logs import current_job
from ..sources.base import Source
from .job import FINISHED, Job, from_spool, rekey_frames
from .producer import ChunkItem, Producer
from .spool import FINISHED_KEEP_COUNT, AsyncSpool, Spool, SpooledJob
from .work import Opener, open_request, reader

log = logging.getLogger("agent.runner")

DEFAULT_WINDOW = 8
DEFAULT_MAX_CHUNK = 1 << 20
RECANCEL_EVERY = 1.0
STARTED_LOG_AFTER = 1.0  # s: a job running longer logs that it started
BEGUN_GRACE = 0.05  # s: a query whose columns come sooner announces itself once
RECANCEL_FOR = 30.0
# Finished jobs held for a relay that has not acknowledged their done message. An honest
# relay acknowledges within a round trip, so this is reached only by one that never does:
# past it the oldest is dropped (memory and spool), and the relay redelivers that job after
# its lease lapses. Below the hello's limit of 1000 held jobs (shared/protocol.py).
MAX_HELD_FINISHED = 512
USED_OPTIONS = ("timeoutSeconds", "maxRows")
MAX_TIMEOUT = 7 * 86_400.0  # s: past the relay's own ceiling (a day); anything above is taken as this
MAX_HELD_IN_HELLO = 1000


class Link(Protocol):
    """What the runner needs from a live connection."""

    async def send_message(self, msg: Message) -> None: ...

    async def send_binary(self, data: bytes) -> None: ...


class Runner:
    def __init__(
        self,
        *,
        get_source: Callable[[str], Source],
        private_key: PrivateKey | Sequence[PrivateKey],
        capacity: int = 4,
        compress: bool = True,
        spool: AsyncSpool | None = None,
    ) -> None:
        self.get_source = get_source
        self.spool = spool
        # job id -> the attempt whose result the relay acknowledged, oldest first
        self.finished: dict[str, int] = {}
        self.private_key = private_key  # one key or the keyring's opening keys
        self._opener: Opener | None = None
        self.capacity = capacity
        self.compress = compress  # compression pays on this link (producer.compression_pays)
        self.zstd_chunks = False  # the relay of the current session takes zstd chunks
        self.connector_id = ""
        self.window = DEFAULT_WINDOW
        self.max_chunk_bytes = DEFAULT_MAX_CHUNK
        self.draining = False
        self.started_without_columns = False  # the relay takes job.started.v1 without columns
        self.jobs: dict[str, Job] = {}
        self._link: Link | None = None
        self._send_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self.max_held_finished = MAX_HELD_FINISHED
        # Acks that moved a job on (a chunk or a result the relay took): the session reads
        # it to tell a link that works but drops often from a relay that drops at once.
        self.progress = 0

    # ------------------------------------------------------------ session side

    @property
    def active_jobs(self) -> int:
        return sum(1 for j in self.jobs.values() if j.running)

    def held_jobs(self) -> list[dict[str, Any]]:
        held = [{"jobId": j.job_id, "attempt": j.attempt} for j in self.jobs.values()]
        return held[-MAX_HELD_IN_HELLO:]  # the protocol's limit; the newest are kept

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

    def restore(self, spooled: list[SpooledJob], finished: list[tuple[str, int]]) -> None:
        """After a restart: hold the finished jobs the relay has not acknowledged (they go
        out again on attach) and remember the acknowledged ones with their attempt."""
        self.finished = dict(finished)
        for sj in spooled:  # oldest first: the live bound then drops the oldest past it
            self.jobs[sj.job_id] = from_spool(sj)
        self._bound_held()
        if self.jobs:
            log.info("holding %d finished jobs from before the restart until the relay has them", len(self.jobs))

    async def attach(
        self, link: Link, *, connector_id: str, window: int, max_chunk_bytes: int,
        started_without_columns: bool = False, zstd_chunks: bool = False,
    ) -> None:
        """A session is ready: resend everything the relay has not acknowledged."""
        async with self._send_lock:
            self._link = link
            self.connector_id = connector_id
            self.window = window
            self.max_chunk_bytes = max_chunk_bytes
            self.started_without_columns = started_without_columns
            self.zstd_chunks = zstd_chunks
            for job in list(self.jobs.values()):
                job.sent_through = -1
                if job.done_sent:
                    job.fire("resend")  # a new connection: the done message goes out again
                # The columns go out again before any chunk unless the relay acked one
                # (then it has them); a job still waiting for its columns says it began.
                if job.started_msg is not None and not job.any_acked:
                    await link.send_message(job.started_msg)
                elif job.started_msg is None and job.begun and job.running and started_without_columns:
                    await link.send_message(self._begun_msg(job))
                for seq, frame in list(job.unacked.items()):
                    await link.send_binary(self._wire(frame))
                    job.sent_through = seq
                    job.sent_max = max(job.sent_max, seq)
                if job.done_msg is not None:
                    await link.send_message(job.done_msg)
                    job.fire("send_done")
                job.acked.set()  # the window may have changed

    @property
    def codec(self) -> str | None:
        """How new chunks are compressed: zstd where the relay takes it, else zlib; none
        where compression does not pay (loopback)."""
        if not self.compress:
            return None
        return "zstd" if self.zstd_chunks else "zlib"

    def _wire(self, frame: bytes) -> bytes:
        """``frame`` as this session's relay can read it: a zstd chunk made for another
        relay (before a reconnect, or spooled) goes to one without zstd as zlib."""
        if self.zstd_chunks or not chunk_flags(frame) & FLAG_ZSTD:
            return frame
        c = decode_chunk(frame)
        return encode_chunk(c, compress="zlib" if self.compress else None)

    def detach(self) -> None:
        self._link = None

    async def on_message(self, msg: Message) -> None:
        if msg.type == "job.assign.v1":
            self.assign(msg)
        elif msg.type == "job.cancel.v1":
            if msg.get("reason") == "SUPERSEDED":
                self._supersede(msg["jobId"], msg["attempt"])
            else:
                self.cancel(msg["jobId"], msg["attempt"], reason="cancelled")
        elif msg.type == "job.chunk.ack.v1":
            self._chunk_ack(msg["jobId"], msg["attempt"], msg["seq"])
        elif msg.type == "job.done.ack.v1":
            job = self.jobs.get(msg["jobId"])
            if job is not None and job.attempt == msg["attempt"] and job.done_msg is not None:
                del self.jobs[job.job_id]
                self.progress += 1
                self._remember_finished(job.job_id, job.attempt)
                self._spool(Spool.finish, job.job_id, job.attempt)
                log.debug("job %s acknowledged", job.job_id, extra={"jobId": job.job_id})
            else:
                # A late or repeated ack (it crossed a reconnect), or a relay's mistake:
                # nothing of ours to change.
                _not_held(msg, job)

    # ------------------------------------------------------------ job lifecycle

    def assign(self, msg: Message) -> None:
        job_id, attempt = msg["jobId"], msg["attempt"]
        held = self.jobs.get(job_id)
        if held is not None and held.attempt == attempt:
            return  # a duplicate delivery: the held job answers for itself on attach
        if held is not None and attempt < held.attempt:
            # An older attempt never replaces a newer one (a relay's stale or replayed
            # assignment): the newer one goes on, and the relay has it in heldJobs.
            log.warning("ignored job.assign.v1 for job %s attempt %d: the agent holds its newer attempt %d",
                        job_id, attempt, held.attempt, extra={"jobId": job_id})  # fmt: skip
            return
        if held is not None and not held.running and not held.any_acked and held.done_msg["status"] == "succeeded":
            # Finished, and the relay has none of its chunks: hand the same result over
            # as the new attempt instead of running the job twice.
            self._spawn(self._rebind(held, attempt))
            return
        if held is not None:
            # A newer attempt supersedes ours: its data must not mix with the old one's.
            self._abandon(held)
        # Only the options the agent reads are kept: a finished job may be held a while,
        # and a relay's options object may be up to a frame's size (1 MiB).
        options = msg.get("options") or {}
        job = Job(job_id, attempt, msg["source"], msg["operation"], {k: options[k] for k in USED_OPTIONS if k in options})
        self.jobs[job_id] = job
        if self.finished.get(job_id, 0) >= attempt:
            # The relay already acknowledged this attempt's result: never run it twice. (A
            # later attempt is the relay retrying a failure, and runs.)
            self._finish_now(job, JobError(
                "JOB_ALREADY_FINISHED", "this agent already ran the job and the relay acknowledged its result",
                retryable=False,
            ))  # fmt: skip
        elif self.draining:
            self._finish_now(job, JobError("AGENT_SHUTDOWN", "the agent is shutting down"))
        elif len(self.jobs) > self.capacity and self.active_jobs > self.capacity:  # (count only when it may)
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
            if reason == "cancelled":  # (from the relay; a shutdown stops what there is)
                log.debug("ignored job.cancel.v1 for job %s attempt %d: not running here", job_id, attempt)
            return
        job.request_stop(reason)
        _stop(job)

    def _abandon(self, job: Job) -> None:
        job.request_stop("cancelled")
        _stop(job)
        self.jobs.pop(job.job_id, None)
        self._spool(Spool.drop, job.job_id, job.attempt)

    def _supersede(self, job_id: str, attempt: int) -> None:
        """The relay gave this attempt back (a newer one exists or will): drop it."""
        job = self.jobs.get(job_id)
        if job is not None and job.attempt == attempt:
            log.info("job %s attempt %d was superseded; dropping it", job_id, attempt, extra={"jobId": job_id})
            self._abandon(job)

    async def _rebind(self, job: Job, attempt: int) -> None:
        old = job.attempt
        frames = await asyncio.to_thread(rekey_frames, job.unacked, attempt, self.codec)
        async with self._send_lock:
            if self.jobs.get(job.job_id) is not job or job.attempt != old:
                return
            job.attempt, job.unacked, job.sent_through, job.sent_max = attempt, frames, -1, -1
            job.done_msg = make("job.done.v1", **{**job.done_msg.data, "attempt": attempt})
            if job.started_msg is not None:
                job.started_msg = make("job.started.v1", **{**job.started_msg.data, "attempt": attempt})
            job.fire("resend")  # the same result, as the new attempt
            spooled = SpooledJob(job.job_id, attempt, job.source, job.operation,
                                 job.started_msg.data if job.started_msg else None,
                                 job.done_msg.data, dict(frames))  # fmt: skip
            self._spool(Spool.rebind, spooled, attempt)
            log.info("job %s redelivered as attempt %d: resending its result, not rerunning it",
                     job.job_id, attempt, extra={"jobId": job.job_id})  # fmt: skip
            if self._link is not None:
                if job.started_msg is not None:
                    await self._link.send_message(job.started_msg)
                for seq, frame in list(job.unacked.items()):
                    await self._link.send_binary(self._wire(frame))
                    job.sent_through = seq
                    job.sent_max = max(job.sent_max, seq)
                await self._link.send_message(job.done_msg)
                job.fire("send_done")

    def _remember_finished(self, job_id: str, attempt: int) -> None:
        self.finished.pop(job_id, None)  # (re-inserted last: the newest is kept longest)
        self.finished[job_id] = attempt
        while len(self.finished) > FINISHED_KEEP_COUNT:
            del self.finished[next(iter(self.finished))]

    def _spool(self, fn: Callable[..., Any], *args: Any) -> None:
        if self.spool is not None:
            self.spool.submit(fn, *args)

    def _bound_held(self) -> None:
        """At most ``max_held_finished`` finished jobs wait for the relay's acknowledgement:
        past it the oldest is dropped, here and in the spool (the relay never acknowledged
        it, so it still owns the job and redelivers it after the lease lapses)."""
        finished = [j for j in self.jobs.values() if not j.running]
        for job in finished[: max(0, len(finished) - self.max_held_finished)]:
            log.warning("the relay has not acknowledged %d finished jobs; dropping the oldest, job %s "
                        "(attempt %d): the relay will deliver it again", len(finished), job.job_id,
                        job.attempt, extra={"jobId": job.job_id})  # fmt: skip
            del self.jobs[job.job_id]
            self._spool(Spool.drop, job.job_id, job.attempt)

    def _spool_done(self, job: Job) -> None:
        """Spool a finished job with the chunks the relay has not acknowledged yet, in one
        write. Nothing is spooled while a job runs: after a crash an unfinished job is
        discarded (the relay redelivers it), so only a finished one's data is ever read
        back, and chunks acknowledged before the end never touch the disk."""
        assert job.done_msg is not None
        started = job.started_msg.data if job.started_msg is not None else None
        self._spool(Spool.record_done, job.job_id, job.attempt, job.source, job.operation,
                    started, job.done_msg.data, dict(job.unacked))  # fmt: skip
        self._bound_held()

    def _finish_now(self, job: Job, error: JobError) -> None:
        job.finish(self._done(job, "failed", error))
        self._spool_done(job)
        self._spawn(self._send_done(job))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _run(self, job: Job, sealed: str | None) -> None:
        current_job.set(job.job_id)
        extra = {"jobId": job.job_id}
        what = f"{job.operation} on source {job.source} (attempt {job.attempt})"
        # A job still running after STARTED_LOG_AFTER says so; a quick one logs one line
        # when it ends (two INFO lines per job were ~13 % of the agent on small jobs).
        started = asyncio.get_running_loop().call_later(
            STARTED_LOG_AFTER, lambda: log.info("job %s started: %s", job.job_id, what, extra=extra)
        )
        t0 = time.monotonic()
        status, error = "succeeded", None
        try:
            status, error = await self._execute(job, sealed)
        except JobError as exc:
            status = {"CANCELLED": "cancelled", "TIMEOUT": "timed_out"}.get(exc.code, "failed")
            error = exc
        except Exception as exc:  # a bug in one job must not stop the agent
            log.exception("job %s failed unexpectedly", job.job_id, extra=extra)
            status, error = "failed", JobError("INTERNAL_ERROR", f"the agent failed: {type(exc).__name__}")
        finally:
            started.cancel()
        ms = round((time.monotonic() - t0) * 1000)
        if self.jobs.get(job.job_id) is not job:
            return  # abandoned for a newer attempt: say nothing about this one
        job.finish(self._done(job, status, error))
        self._spool_done(job)
        if error is None:
            log.info("job %s succeeded: %s in %s, %d ms; %s", job.job_id, _count(job.rows, "row"),
                     _count(job.next_seq, "chunk"), ms, what, extra=extra)  # fmt: skip
        else:
            log.log(_end_level(status, error), "job %s %s after %d ms: %s %s; %s",
                    job.job_id, status, ms, error.code, error.message, what, extra=extra)  # fmt: skip
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
            # Only when true, so a relay that predates the field reads the rest.
            **({"truncated": True} if status == "succeeded" and _truncated(job) else {}),
        )

    async def _execute(self, job: Job, sealed: str | None) -> tuple[str, JobError | None]:
        request = open_request(job, sealed, self._opener_now(), self.connector_id)
        timeout = _positive(job.options.get("timeoutSeconds"))
        max_rows = job.options.get("maxRows")
        max_rows = max_rows if isinstance(max_rows, int) and not isinstance(max_rows, bool) else None
        # ``begun`` runs in the worker thread, after ``producer`` below exists.
        read = reader(job, request, timeout, self.get_source, begun=lambda: producer.begun())
        producer = Producer(
            loop=asyncio.get_running_loop(),
            job_id=job.job_id,
            attempt=job.attempt,
            read=read,
            max_rows=max_rows,
            max_chunk_bytes=self.max_chunk_bytes,
            compress=self.codec,
        )
        job.producer = producer
        producer.start(contextvars.copy_context().run)
        producer.watch_begun(BEGUN_GRACE)
        # The job's rows are taken in this task. A cancel, a shutdown or the timeout stops
        # it by cancelling the task (as ``asyncio.timeout`` does, told apart from any other
        # cancellation), instead of a consumer task and a stop-watching task per job.
        task = asyncio.current_task()
        assert task is not None
        stopped = False

        def stop_now() -> None:
            nonlocal stopped
            if not stopped:
                stopped = True
                task.cancel()

        job.on_stop = stop_now
        timer = asyncio.get_running_loop().call_later(timeout, stop_now) if timeout else None
        try:
            if not job.stop.is_set():  # else stopped before it started
                await self._consume(job, producer)
                return "succeeded", None
        except asyncio.CancelledError:
            if not stopped or task.uncancel() > 0:
                raise  # not (only) our stop: someone cancelled the job's task
        finally:
            job.on_stop = None
            if timer is not None:
                timer.cancel()
            producer.stop_watching_begun()
        reason = job.request_stop("timed_out")  # unless it was asked to stop for another reason
        producer.abort()
        self._spawn(self._stop_at_database(job, producer))
        if reason == "timed_out":
            return "timed_out", JobError("TIMEOUT", f"the job ran past its limit of {timeout:g} s and was stopped")
        if reason == "shutdown":
            return "failed", JobError("AGENT_SHUTDOWN", "the agent stopped before the job finished")
        return "cancelled", JobError("CANCELLED", "the job was cancelled")

    def _opener_now(self) -> Opener:
        """The ``Opener`` of ``private_key`` (made again if the keys were replaced)."""
        if self._opener is None or self._opener.source is not self.private_key:
            self._opener = Opener(self.private_key)
        return self._opener

    async def _consume(self, job: Job, producer: Producer) -> None:
        queue = producer.queue
        while True:
            item = queue.get_nowait()
            kind, value = item if item is not None else await queue.get()
            if kind == "begun":
                # Running as far as the relay can tell (status, startedAt) while the query
                # executes; the columns follow in a second job.started.v1. Only a job whose
                # columns take longer than BEGUN_GRACE gets this item (Producer.watch_begun):
                # one frame and one store write fewer per small job.
                job.fire("begin")
                async with self._send_lock:
                    if self._link is not None and self.started_without_columns and self.jobs.get(job.job_id) is job:
                        await self._link.send_message(self._begun_msg(job))
            elif kind == "columns":
                job.fire("columns")
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

    @staticmethod
    def _begun_msg(job: Job) -> Message:
        return make("job.started.v1", jobId=job.job_id, attempt=job.attempt)

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
                await self._link.send_binary(self._wire(item.frame))
                job.sent_through = item.seq
                job.sent_max = max(job.sent_max, item.seq)

    def _chunk_ack(self, job_id: str, attempt: int, seq: int) -> None:
        job = self.jobs.get(job_id)
        if job is None or job.attempt != attempt:
            log.debug("ignored job.chunk.ack.v1 for job %s attempt %d: not held here", job_id, attempt)
            return
        if seq > job.sent_max:
            # The relay acknowledges a chunk it was never sent: believing it would drop
            # chunks it does not have (and skip the columns on the next connection).
            if not job.bad_ack_logged:
                job.bad_ack_logged = True
                log.warning("ignored job.chunk.ack.v1 for job %s: chunk %d was never sent (sent up to %d)",
                            job_id, seq, job.sent_max, extra={"jobId": job_id})  # fmt: skip
            return
        # Acks are cumulative: the relay acknowledges only a gap-free prefix.
        taken = [s for s in job.unacked if s <= seq]
        for s in taken:
            del job.unacked[s]
        self.progress += 1 if taken else 0
        if job.done_msg is not None:  # a running job has nothing spooled (_spool_done)
            self._spool(Spool.ack, job_id, attempt, seq)
        job.any_acked = True
        job.acked.set()

    async def _send_done(self, job: Job) -> None:
        async with self._send_lock:
            if self._link is not None and job.phase == FINISHED:
                await self._link.send_message(job.done_msg)
                job.fire("send_done")

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


def _not_held(msg: Message, job: Job | None) -> None:
    if job is None:
        why = "not held here"
    elif job.attempt != msg["attempt"]:
        why = f"the agent holds attempt {job.attempt}"
    else:
        why = "its done message was not sent yet"
    log.debug("ignored %s for job %s attempt %d: %s", msg.type, msg["jobId"], msg["attempt"], why)


def _stop(job: Job) -> None:
    job.stop.set()  # the worker thread checks it before it starts the statement
    if job.on_stop is not None:
        job.on_stop()


def _positive(value: Any) -> float | None:
    """A relay's ``timeoutSeconds``: a positive number, at most ``MAX_TIMEOUT`` (a timeout
    of 1e300 s cannot be waited for: the deadline thread's wait raises OverflowError)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return min(float(value), MAX_TIMEOUT)
    return None


# Codes that say the agent itself went wrong, not the query or the source.
AGENT_FAULTS = frozenset({"INTERNAL_ERROR", "DECRYPTION_FAILED"})


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def _end_level(status: str, error: JobError) -> int:
    """How loud a job's end is (docs/OPERATIONS.md, "Log levels"): a cancel someone asked
    for is INFO, a failed or timed-out job WARNING, a fault of the agent's own ERROR."""
    if error.code in AGENT_FAULTS:
        return logging.ERROR
    return logging.INFO if status == "cancelled" else logging.WARNING


def _truncated(job: Job) -> bool:
    """``maxRows`` cut the job's result: the source had at least one more row."""
    return bool(getattr(job.producer, "truncated", False))
