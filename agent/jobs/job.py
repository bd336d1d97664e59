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


@dataclass
class Job:
    job_id: str
    attempt: int
    source: str
    operation: str
    options: dict[str, Any]
    started_at: float = field(default_factory=time.time)
    started_msg: Message | None = None  # the job.started.v1 with the columns
    begun: bool = False  # the job began (its source was found): the relay may show it running
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
    on_stop: Callable[[], None] | None = None  # the running job's way to stop at once
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


def from_spool(sj: SpooledJob) -> Job:
    """A finished job restored from the spool after a restart, ready to be resent."""
    job = Job(sj.job_id, sj.attempt, sj.source, sj.operation, {})
    job.started_msg = make("job.started.v1", **sj.started) if sj.started else None
    job.done_msg = make("job.done.v1", **sj.done)
    job.unacked = OrderedDict(sorted(sj.chunks.items()))
    job.next_seq = job.done_msg["chunks"]
    job.rows, job.bytes = job.done_msg["rowCount"], job.done_msg["byteCount"]
    job.any_acked = job.next_seq > 0 and 0 not in job.unacked
    return job


def rekey_frames(frames: OrderedDict[int, bytes], attempt: int, compress: str | None) -> OrderedDict[int, bytes]:
    """The same chunks, addressed to another attempt (the attempt is in each header)."""
    out: OrderedDict[int, bytes] = OrderedDict()
    for seq, frame in frames.items():
        c = decode_chunk(frame)
        out[seq] = encode_chunk(Chunk(c.job_id, attempt, c.seq, c.rows, c.payload), compress=compress)
    return out
