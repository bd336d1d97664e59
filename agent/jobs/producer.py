"""The worker-thread half of a job: read rows, size chunks, encode frames, hand them over.

A job's rows are read in a worker thread (drivers block) and handed to the event loop
through a ``Handoff``: at most ``QUEUE_DEPTH`` chunks wait there; when the relay is slow it
fills, the thread blocks, and the database read slows down instead of memory growing. The
thread never waits for the loop otherwise, and it wakes the loop only when the loop is
waiting for an item, so a quick job's items (columns, chunk, end) cost one or two
wake-ups instead of a round trip each. Fetch
batches grow or shrink so each chunk's payload lands near a target size (a few hundred
KiB, never past the relay's ``maxChunkBytes``). Frames are encoded here, off the loop.

Rows travel as object lines keyed by the column names (``shared.rows.encode_objects``),
which the relay serves verbatim, or as arrays when the names repeat. A source that makes
the payloads itself (PostgreSQL's COPY fast path, ``agent.sources.pgcopy``) exposes a
``payloads`` pump on its stream: it calls back with complete object lines, which are cut
to ``max_rows`` and split on line boundaries to fit ``maxChunkBytes`` here.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from shared.errors import JobError
from shared.protocol import Chunk, encode_chunk
from shared.rows import encode_objects, encode_rows, unique_names

from ..sources.base import Column
from .workers import WORKERS

log = logging.getLogger("agent.runner")

QUEUE_DEPTH = 2
FIRST_BATCH = 200
MAX_BATCH = 100_000
TARGET_CHUNK = 512 * 1024  # within the 256 KiB - 1 MiB band, capped by maxChunkBytes


def compression_pays(urls: str | Iterable[str]) -> bool:
    """Whether zlib on chunks pays for itself: not over loopback, where the link is far
    faster than the compressor (zlib level 1 runs at ~200 MB/s, loopback at ~1 GB/s).
    ``urls`` is the relay URL or URLs; any non-loopback one means compress."""
    for url in [urls] if isinstance(urls, str) else list(urls):
        host = (urlsplit(url).hostname or "").lower()
        if host == "localhost":
            continue
        try:
            if ipaddress.ip_address(host).is_loopback:
                continue
        except ValueError:
            pass
        return True
    return False


class Aborted(Exception):
    """The loop side stopped listening (cancel, timeout, shutdown)."""


@dataclass(frozen=True)
class ChunkItem:
    seq: int
    rows: int
    payload_bytes: int
    frame: bytes


# What the consumer gets: ("begun", None) | ("columns", list) | ("chunk", ChunkItem) |
# ("end", None) | ("error", JobError).
Item = tuple[str, Any]


class Handoff:
    """Items from one worker thread to the event loop, in order.

    ``put`` (thread) never waits for the loop unless ``depth`` chunks are already waiting
    (back-pressure: only chunks are big; the other items are a few per job). It wakes the
    loop only when a ``get`` is waiting, once for however many items arrive before the
    loop runs. ``get`` (loop) takes the next item, waiting if there is none; cancelling it
    loses nothing. ``full`` says whether the thread would block on its next chunk."""

    def __init__(self, loop: asyncio.AbstractEventLoop, depth: int) -> None:
        self.loop = loop
        self.depth = depth
        self._items: collections.deque[Item] = collections.deque()
        self._chunks = 0  # chunks waiting
        self._lock = threading.Lock()
        self._room: threading.Condition | None = None  # made when the thread first waits
        self._blocked = False  # the thread waits for room
        self._waiter: asyncio.Future[None] | None = None  # a get waiting for an item
        self.taken_any = False  # the loop took an item other than "begun"

    # ------------------------------------------------------------ thread side

    def put(self, item: Item, aborted: threading.Event) -> None:
        """Add ``item``; raises ``Aborted`` once ``aborted`` is set or the loop is closed."""
        if self.loop.is_closed():
            raise Aborted  # nobody is listening any more
        with self._lock:
            if item[0] == "chunk":
                while self._chunks >= self.depth:
                    if aborted.is_set() or self.loop.is_closed():
                        raise Aborted
                    if self._room is None:
                        self._room = threading.Condition(self._lock)
                    self._blocked = True
                    self._room.wait(0.25)
                self._blocked = False
                self._chunks += 1
            self._items.append(item)
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            try:
                self.loop.call_soon_threadsafe(_wake, waiter)
            except RuntimeError as exc:  # the loop is closed: nobody is listening any more
                raise Aborted from exc

    # ------------------------------------------------------------ loop side

    def get_nowait(self) -> Item | None:
        with self._lock:
            if not self._items:
                return None
            item = self._items.popleft()
            if item[0] == "chunk":
                self._chunks -= 1
                if self._blocked and self._room is not None:
                    self._room.notify()
        if item[0] != "begun":
            self.taken_any = True
        return item

    async def get(self) -> Item:
        while True:
            item = self.get_nowait()
            if item is not None:
                return item
            with self._lock:
                if self._items:
                    continue  # came in meanwhile
                waiter = self._waiter = self.loop.create_future()
            try:
                await waiter
            finally:
                with self._lock:
                    if self._waiter is waiter:
                        self._waiter = None

    def put_begun(self) -> bool:
        """(Loop) Announce that the work began, unless anything else came first (waiting or
        taken): then the columns or the end say more. True if it was added."""
        with self._lock:
            if self._items or self.taken_any:
                return False
            self._items.append(("begun", None))
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            _wake(waiter)
        return True

    def unblock(self) -> None:
        """Wake a thread waiting for room, so it sees its abort at once."""
        with self._lock:
            if self._room is not None:
                self._room.notify_all()

    def full(self) -> bool:
        return self._chunks >= self.depth

    def qsize(self) -> int:
        return len(self._items)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Producer:
    """Runs ``read`` in a thread and feeds its batches into ``queue`` as encoded chunks.

    ``read`` opens the work (blocking) and returns ``(columns, batches)``; ``batches`` may
    have a settable ``size`` attribute, which is adjusted to reach the target chunk size.
    """

    def __init__(
        self,
        *,
        loop: asyncio.AbstractEventLoop,
        job_id: str,
        attempt: int,
        read: Callable[[], tuple[list[Column], Iterator[Sequence[Any]]]],
        max_rows: int | None,
        max_chunk_bytes: int,
        compress: str | None = None,
    ) -> None:
        self.loop = loop
        self.job_id, self.attempt = job_id, attempt
        self.read = read
        self.max_rows = max_rows
        self.max_chunk_bytes = max_chunk_bytes
        self.compress = compress  # zstd, zlib or None (shared.protocol.encode_chunk)
        self.queue = Handoff(loop, QUEUE_DEPTH)
        self.aborted = threading.Event()
        self.started = False
        self.finished = threading.Event()  # the body returned (its thread may serve others)
        self.begun_at: float | None = None  # (monotonic) the work began: its source is found
        self._begun_timer: asyncio.TimerHandle | None = None
        self._begun_grace = 0.0
        self._seq = 0
        self._names: list[str] | None = None  # unique column names: rows go as objects
        # ``max_rows`` cut the result: the source had at least one more row (the limit
        # handed to a source is one more than ``max_rows``, so that row is seen, not sent).
        self.truncated = False

    def start(self, runner: Callable[[Callable[[], None]], None] | None = None) -> None:
        """Run the body in a worker thread (``agent/jobs/workers.py``). ``runner`` wraps the
        body (the caller passes ``ctx.run``)."""
        body = self._body if runner is None else (lambda: runner(self._body))

        def run() -> None:
            try:
                body()
            finally:
                self.finished.set()

        self.started = True
        WORKERS.run(run, f"job-{self.job_id[:16]}")

    def abort(self) -> None:
        self.aborted.set()
        self.queue.unblock()
        self.stop_watching_begun()

    def watch_begun(self, grace: float) -> None:
        """(Loop) Hand the consumer a ("begun", None) item once the work has been running
        ``grace`` seconds (from ``begun``) with nothing else handed over yet: a job whose
        columns come sooner announces itself once, with them. A loop timer checks, so the
        thread does not wake the loop to say it began."""
        self.stop_watching_begun()
        self._begun_grace = grace
        self._begun_timer = self.loop.call_later(grace, self._check_begun)

    def _check_begun(self) -> None:
        self._begun_timer = None
        if self.queue.taken_any or self.queue.qsize() or self.aborted.is_set():
            return
        at = self.begun_at
        left = self._begun_grace if at is None else at + self._begun_grace - time.monotonic()
        if left > 0:
            self._begun_timer = self.loop.call_later(left, self._check_begun)
        else:
            self.queue.put_begun()

    def stop_watching_begun(self) -> None:
        """(Loop) No begun item any more (the job ended or has its columns)."""
        timer, self._begun_timer = self._begun_timer, None
        if timer is not None:
            timer.cancel()

    @property
    def alive(self) -> bool:
        return self.started and not self.finished.is_set()

    # ------------------------------------------------------------ thread side

    def begun(self) -> None:
        """From ``read``: the work has begun (its columns are not known yet). Only noted:
        ``watch_begun``'s timer tells the consumer if the columns are slow to come."""
        if self.aborted.is_set():
            raise Aborted
        self.begun_at = time.monotonic()

    def _put(self, item: Item) -> None:
        if self.aborted.is_set():
            raise Aborted
        self.queue.put(item, self.aborted)

    def _body(self) -> None:
        batches: Any = None
        # ``read`` is called once; dropping it here undoes the reference cycle through its
        # closure (it holds the job, which holds this producer), so a finished job's objects
        # are freed at once instead of waiting for the garbage collector.
        read, self.read = self.read, _no_read
        try:
            columns, batches = read()
            names = [str(c.get("name")) for c in columns]
            self._names = names if unique_names(names) else None
            self._put(("columns", columns))
            pump = getattr(getattr(batches, "stream", None), "payloads", None)
            if pump is not None and self._names is not None:
                self._stream_payloads(pump)
            else:
                self._stream(batches)
            self._put(("end", None))
        except Aborted:
            pass
        except JobError as exc:
            self._report(exc)
        except Exception as exc:  # noqa: BLE001 - any failure must end the job, not the agent
            self._report(JobError("QUERY_FAILED", f"the job failed: {type(exc).__name__}: {exc}"[:500]))
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    log.debug("closing a job's batches failed", exc_info=True)

    def _report(self, exc: JobError) -> None:
        try:
            self._put(("error", exc))
        except Aborted:
            pass

    def _stream(self, batches: Iterator[Sequence[Any]]) -> None:
        total = 0
        limit = self.max_rows
        if limit is not None and limit <= 0:
            return
        target = max(1024, min(TARGET_CHUNK, self.max_chunk_bytes // 2))
        if hasattr(batches, "size"):
            batches.size = FIRST_BATCH  # type: ignore[attr-defined]
        it = iter(batches)
        for batch in it:
            if self.aborted.is_set():
                raise Aborted
            rows = list(batch)
            if limit is not None and total + len(rows) > limit:
                rows = rows[: limit - total]
                self.truncated = True
            encoded = 0
            for payload, count in self._fit(rows):
                encoded += len(payload)
                self._emit(payload, count)
            total += len(rows)
            if limit is not None and total >= limit:
                if not self.truncated:
                    self.truncated = self._more(batches, it)
                return
            if hasattr(batches, "size") and rows:
                per_row = max(1.0, encoded / len(rows))
                current = int(batches.size)  # type: ignore[attr-defined]
                wanted = int(target / per_row)
                batches.size = max(1, min(MAX_BATCH, current * 8, wanted))  # type: ignore[attr-defined]

    def _more(self, batches: Any, it: Iterator[Sequence[Any]]) -> bool:
        """Whether the source has a row past ``max_rows`` (one more fetch, of one row
        where the batch size can be set)."""
        if self.aborted.is_set():
            raise Aborted
        if hasattr(batches, "size"):
            batches.size = 1
        for batch in it:
            if len(batch):
                return True
        return False

    def _stream_payloads(self, pump: Callable[..., None]) -> None:
        """Let the source push ready payloads (object lines) until it ends or ``max_rows``.
        The source is asked for one row more than ``max_rows``: seeing it marks the result
        truncated; it is never sent."""
        limit = self.max_rows
        if limit is not None and limit <= 0:
            return
        target = max(1024, min(TARGET_CHUNK, self.max_chunk_bytes // 2))
        total = 0

        def emit(payload: bytes, rows: int) -> bool:
            nonlocal total
            if self.aborted.is_set():
                raise Aborted
            if limit is not None and total + rows > limit:
                self.truncated = True
                rows = limit - total
                payload = payload[: _nth_newline(payload, rows) + 1]
            for part, count in self._split_lines(payload, rows):
                self._emit(part, count)
            total += rows
            return not self.truncated  # at the limit, the next row (if any) is still read

        pump(emit, limit=None if limit is None else limit + 1, target=target)

    def _split_lines(self, payload: bytes, rows: int) -> list[tuple[bytes, int]]:
        """Object lines cut on line boundaries into parts of at most ``max_chunk_bytes``."""
        if len(payload) <= self.max_chunk_bytes:
            return [(payload, rows)] if rows else []
        parts, start, end = [], 0, len(payload)
        while start < end:
            stop = start + self.max_chunk_bytes
            cut = end - 1 if stop >= end else payload.rfind(b"\n", start, stop)
            if cut < start:
                line = payload.find(b"\n", start) + 1 - start
                raise self._too_large(line)
            part = payload[start : cut + 1]
            parts.append((part, part.count(b"\n")))
            start = cut + 1
        return parts

    def _too_large(self, size: int) -> JobError:
        return JobError(
            "RESULT_TOO_LARGE",
            f"a single row encodes to {size} bytes, more than the relay's "
            f"chunk limit of {self.max_chunk_bytes} bytes",
        )

    def _encode(self, rows: list[Sequence[Any]]) -> bytes:
        return encode_rows(rows) if self._names is None else encode_objects(self._names, rows)

    def _fit(self, rows: list[Sequence[Any]]) -> list[tuple[bytes, int]]:
        """Encode ``rows`` as one payload, or split it until every part fits the limit."""
        if not rows:
            return []
        payload = self._encode(rows)
        if len(payload) <= self.max_chunk_bytes:
            return [(payload, len(rows))]
        if len(rows) == 1:
            raise self._too_large(len(payload))
        mid = len(rows) // 2
        return self._fit(rows[:mid]) + self._fit(rows[mid:])

    def _emit(self, payload: bytes, count: int) -> None:
        chunk = Chunk(self.job_id, self.attempt, self._seq, count, payload)
        frame = encode_chunk(chunk, compress=self.compress)
        self._put(("chunk", ChunkItem(self._seq, count, len(payload), frame)))
        self._seq += 1


def _no_read() -> tuple[list[Column], Iterator[Sequence[Any]]]:
    raise RuntimeError("a producer reads once")


def _nth_newline(payload: bytes, n: int) -> int:
    """Where the ``n``-th line of ``payload`` ends (-1 for n = 0)."""
    pos = -1
    for _ in range(n):
        pos = payload.index(b"\n", pos + 1)
    return pos
