"""A job as the runner holds it, from ``job.assign.v1`` until the relay's ``job.done.ack.v1``.

``Job`` carries the state the runner needs to resume a job on any connection: its
``job.started.v1`` and ``job.done.v1`` messages and its unacknowledged chunk frames (the
same ones the spool keeps on disk). ``from_spool`` rebuilds a finished job after an agent
restart; ``rekey_frames`` readdresses a finished job's chunks to a newer attempt, so a
redelivered finished job hands over its result instead of running again.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shared.protocol import Chunk, Message, decode_chunk, encode_chunk, make

from .producer import Producer
from .spool import SpooledJob

# ---------------------------------------------------------------- the job's phases
#
# A job's progress as the runner sees it, one transition table that every change goes
# through (``Job.fire``; the h11 habit, like agent/link/state.py): an event with no entry
# for the current phase is a bug and raises ``IllegalJobEvent``.
#
#   assigned --begin--> begun --columns--> started --finish--> finished --send_done--> done_sent
#   assigned/begun --columns--> started          (the columns came before the begun timer)
#   assigned/begun/started --finish--> finished  (failed, cancelled, timed out, or done)
#   done_sent --resend--> finished               (a new connection, or a redelivered attempt:
#                                                 the done message has to go out again)
#
# The job leaves the runner when the relay acknowledges its done message (job.done.ack.v1)
# in finished or done_sent. A stop (cancel, timeout, shutdown) is a request the running
# job answers by finishing; its first reason wins (``request_stop``).

ASSIGNED = "assigned"
BEGUN = "begun"
STARTED = "started"
FINISHED = "finished"
DONE_SENT = "done_sent"
PHASES = (ASSIGNED, BEGUN, STARTED, FINISHED, DONE_SENT)
RUNNING_PHASES = frozenset({ASSIGNED, BEGUN, STARTED})

JOB_TRANSITIONS: dict[tuple[str, str], str] = {
    (ASSIGNED, "begin"): BEGUN,
    (ASSIGNED, "columns"): STARTED,
    (BEGUN, "columns"): STARTED,
    (STARTED, "begin"): STARTED,  # late: the begun timer fired as the columns arrived
    (ASSIGNED, "finish"): FINISHED,
    (BEGUN, "finish"): FINISHED,
    (STARTED, "finish"): FINISHED,
    (FINISHED, "send_done"): DONE_SENT,
    (DONE_SENT, "resend"): FINISHED,
    (FINISHED, "resend"): FINISHED,
}
STOP_REASONS = ("cancelled", "timed_out", "shutdown")


class IllegalJobEvent(RuntimeError):
    pass


@dataclass
class Job:
    job_id: str
    attempt: int
    source: str
    operation: str
    options: dict[str, Any]
    started_at: float = field(default_factory=time.time)
    phase: str = ASSIGNED  # changed only by fire()
    started_msg: Message | None = None  # the job.started.v1 with the columns
    unacked: OrderedDict[int, bytes] = field(default_factory=OrderedDict)
    next_seq: int = 0
    sent_through: int = -1
    sent_max: int = -1  # the highest seq ever sent, on any connection: what an ack may name
    bad_ack_logged: bool = False  # an ack past what was sent was logged (once per job)
    any_acked: bool = False  # the relay acknowledged a chunk: it has the columns
    rows: int = 0
    bytes: int = 0
    done_msg: Message | None = None  # set with fire("finish")
    stop_reason: str | None = None  # one of STOP_REASONS, set by request_stop()
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    on_stop: Callable[[], None] | None = None  # the running job's way to stop at once
    acked: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    producer: Producer | None = None
    stream: Any = None

    @property
    def key(self) -> tuple[str, int]:
        return (self.job_id, self.attempt)

    def fire(self, event: str) -> str:
        new = JOB_TRANSITIONS.get((self.phase, event))
        if new is None:
            raise IllegalJobEvent(f"job {self.job_id}: event {event!r} is not allowed in phase {self.phase!r}")
        self.phase = new
        return new

    def finish(self, done: Message) -> None:
        self.fire("finish")
        self.done_msg = done

    def request_stop(self, reason: str) -> str:
        """Ask the running job to stop; the first reason is the one it reports."""
        if reason not in STOP_REASONS:
            raise ValueError(reason)
        if self.stop_reason is None:
            self.stop_reason = reason
        return self.stop_reason

    @property
    def running(self) -> bool:
        return self.phase in RUNNING_PHASES

    @property
    def begun(self) -> bool:
        """Its source was found: the relay may show it running."""
        return self.phase != ASSIGNED

    @property
    def done_sent(self) -> bool:
        return self.phase == DONE_SENT


def from_spool(sj: SpooledJob) -> Job:
    """A finished job restored from the spool after a restart, ready to be resent."""
    job = Job(sj.job_id, sj.attempt, sj.source, sj.operation, {}, phase=FINISHED)
    job.started_msg = make("job.started.v1", **sj.started) if sj.started else None
    job.done_msg = make("job.done.v1", **sj.done)
    job.unacked = OrderedDict(sorted(sj.chunks.items()))
    job.next_seq = job.done_msg["chunks"]
    job.rows, job.bytes = job.done_msg["rowCount"], job.done_msg["byteCount"]
    job.any_acked = job.next_seq > 0 and 0 not in job.unacked
    # Before the restart every chunk below the first unacknowledged one was sent (the
    # relay acknowledged it); the unacknowledged ones may not have been, until attach.
    job.sent_max = (min(job.unacked) - 1) if job.unacked else job.next_seq - 1
    return job


def rekey_frames(frames: OrderedDict[int, bytes], attempt: int, compress: str | None) -> OrderedDict[int, bytes]:
    """The same chunks, addressed to another attempt (the attempt is in each header)."""
    out: OrderedDict[int, bytes] = OrderedDict()
    for seq, frame in frames.items():
        c = decode_chunk(frame)
        out[seq] = encode_chunk(Chunk(c.job_id, attempt, c.seq, c.rows, c.payload), compress=compress)
    return out
