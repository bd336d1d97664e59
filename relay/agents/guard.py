"""What keeps one agent connection from stalling or bloating the relay (issue 13).

- ``admit``: a chunk frame is checked against the jobs this session holds from its header
  alone (``protocol.read_chunk_head``), before any work on its payload. A frame for a job
  the session does not hold is refused and its payload never read.
- ``prepare``: the payload work of an admitted chunk (bounded decompression, the row
  check, compression and encryption at rest), run in ``ChunkWorkers``' threads, off the
  event loop, unless the payload is small enough that the hop would cost more.
- ``Budget``: the bytes of frames a connection has in hand (read, not yet finished);
  past it the connection's socket is not read until frames finish (TCP pushes back).
- ``LogThrottle``: lines and bytes per second of ``agent.logs.v1`` per connector.
- ``Penalties``: a key closed for protocol violations gets 429 for a few seconds.

docs/SECURITY.md ("Hostile agents") says what each stops and which tests prove it.
"""

from __future__ import annotations

import asyncio
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from shared import protocol
from shared.crypto import DataCipher
from shared.errors import ProtocolError
from shared.rows import payload_rows

from .. import atrest
from ..web.envelope import envelope_error
from ..web.request_keys import REQUEST_ID

INLINE_BYTES = 64 << 10  # a chunk whose payload is at most this is handled on the loop
CLOSED_KEEP = 4096  # jobs that left a session, remembered to tell late frames from foreign ones

# admit's verdicts
ADMIT = "admit"
FOREIGN = "foreign"  # not a job of this session: a protocol violation
STALE = "stale"  # an attempt given back: the agent is told (once) to drop it
LATE = "late"  # a job of this session that ended here: a resend, dropped quietly


def admit(session: Any, head: protocol.ChunkHead) -> str:
    """Whether a chunk may be worked on, from its header and the session's jobs alone."""
    held = session.in_flight.get(head.job_id)
    if held == head.attempt:
        return ADMIT
    if (head.job_id, head.attempt) in session.superseded:
        return LATE
    closed = session.closed.get(head.job_id)
    if held is not None or (closed is not None and closed[0] != head.attempt):
        return STALE
    if closed is not None:
        return STALE if closed[1] else LATE
    return FOREIGN


@dataclass(frozen=True)
class Prepared:
    """An admitted chunk, ready for the store: its clear payload and sealed blob."""

    payload: bytes
    key_id: str
    blob: bytes


def prepare(head: protocol.ChunkHead, data: bytes, cipher: DataCipher, compress: bool) -> Prepared:
    """Decompress (within ``protocol.payload_limit``), count the rows, seal for the store
    (a zstd frame as the agent sent it: ``atrest.seal``)."""
    payload = protocol.chunk_payload(head, data)
    try:  # arrays: counted cheaply, the payload stays opaque; object lines: each line parsed
        held = payload_rows(payload, head.rows)
    except ValueError as exc:
        raise ProtocolError(f"chunk {head.seq}: {exc}") from None
    if held != head.rows:
        raise ProtocolError(f"chunk {head.seq} declares {head.rows} rows but holds {held}")
    aad = f"{head.job_id}:{head.attempt}:{head.seq}".encode()
    frame = memoryview(data)[head.offset :] if head.codec == "zstd" else None
    key_id, blob = atrest.seal(cipher, payload, aad, compress=compress, frame=frame)
    return Prepared(payload, key_id, blob)


def inline(head: protocol.ChunkHead) -> bool:
    """A small payload is cheaper to handle on the loop than to hand to a thread."""
    return head.bound <= INLINE_BYTES


class ChunkWorkers:
    """The threads chunk payloads are worked on (started on first use)."""

    def __init__(self, threads: int = 2) -> None:
        self.threads = max(1, threads)
        self._pool: ThreadPoolExecutor | None = None

    def size(self, threads: int) -> None:
        """How many threads, until the first use."""
        if self._pool is None:
            self.threads = max(1, threads)

    async def run(self, fn: Any, *args: Any) -> Any:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="relay-chunk")
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


class Budget:
    """Bytes one connection has in hand. ``take`` waits while taking would pass the limit
    (a frame larger than the whole budget is let through alone, when nothing else is)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.waits = 0  # how often the connection's reading paused for it
        self._freed = asyncio.Event()

    async def take(self, n: int) -> None:
        while self.used and self.used + n > self.limit:
            self.waits += 1
            self._freed.clear()
            await self._freed.wait()
        self.used += n

    def give(self, n: int) -> None:
        self.used -= n
        self._freed.set()


class LogThrottle:
    """Token buckets for one connection's log lines and bytes: ``rate`` per second each,
    holding up to ``burst_seconds`` of it. Lines past either are dropped and counted; the
    count goes into one summary line (``summary``) at most once a second."""

    def __init__(self, lines_per_second: float, bytes_per_second: float, burst_seconds: float) -> None:
        self.line_rate, self.byte_rate = lines_per_second, bytes_per_second
        self.line_cap = max(1.0, lines_per_second * burst_seconds)
        self.byte_cap = max(1.0, bytes_per_second * burst_seconds)
        self.lines, self.bytes = self.line_cap, self.byte_cap
        self.at = time.monotonic()
        self.dropped = 0  # since the last summary
        self.dropped_total = 0
        self.summary_at = 0.0

    def _refill(self) -> None:
        clock = time.monotonic()
        elapsed, self.at = clock - self.at, clock
        self.lines = min(self.line_cap, self.lines + elapsed * self.line_rate)
        self.bytes = min(self.byte_cap, self.bytes + elapsed * self.byte_rate)

    def _take(self, size: int) -> bool:
        if self.lines >= 1 and self.bytes >= size:
            self.lines -= 1
            self.bytes -= size
            return True
        self.dropped += 1
        self.dropped_total += 1
        return False

    def allow(self, size: int) -> bool:
        """Take one line of ``size`` bytes, or count it dropped."""
        self._refill()
        return self._take(size)

    def trim(self, lines: list[Any]) -> list[Any]:
        """The lines of a batch within the budget, before they are validated: what is past
        it is dropped here at the cost of a length, not of checking every field (an
        empty budget drops a whole batch without looking at its lines)."""
        self._refill()
        if self.lines < 1:
            self.dropped += len(lines)
            self.dropped_total += len(lines)
            return []
        kept = []
        for line in lines:
            message = line.get("message") if isinstance(line, dict) else None
            if self._take(len(message) + 64 if isinstance(message, str) else 64):
                kept.append(line)
        return kept

    def summary(self, force: bool = False) -> int:
        """The lines dropped since the last summary, when one is due (else 0)."""
        clock = time.monotonic()
        if not self.dropped or (not force and clock - self.summary_at < 1.0):
            return 0
        n, self.dropped, self.summary_at = self.dropped, 0, clock
        return n


class Penalties:
    """API keys (by hash) closed for protocol violations lately: their handshakes are
    answered 429 until the penalty ends, before any store work (``hub.handle``)."""

    KEEP = 10_000  # keys held before the expired ones are swept out

    def __init__(self) -> None:
        self._until: dict[str, float] = {}

    def punish(self, key_hash: str, seconds: float) -> None:
        at = time.time()
        if len(self._until) > self.KEEP:
            self._until = {k: t for k, t in self._until.items() if t > at}
        self._until[key_hash] = at + seconds

    def wait(self, key_hash: str) -> int:
        """Seconds the key must still wait (0: none)."""
        until = self._until.get(key_hash)
        if until is None:
            return 0
        left = until - time.time()
        if left <= 0:
            del self._until[key_hash]
            return 0
        return max(1, math.ceil(left))


def penalty_response(request: web.Request, wait: int) -> web.Response:
    response = envelope_error(
        429, "RATE_LIMITED", f"this agent was closed for protocol violations; reconnect after {wait} s",
        {"retryAfter": wait}, request.get(REQUEST_ID, ""),
    )  # fmt: skip
    response.headers["Retry-After"] = str(wait)
    return response
