"""The agent's spool: a small SQLite file beside the config that outlives the process.

It holds what the relay has not acknowledged yet, so an agent restart loses nothing the
relay still needs: each job's ``job.started.v1`` and ``job.done.v1`` messages and its
unacknowledged chunk frames, keyed (job, attempt, seq). A job the agent *finished*
(its done message is spooled) is restored on start, named in the hello's ``heldJobs``
and resent; the leftovers of a job that was still *running* when the process died are
discarded on start (the relay gives that attempt back and redelivers the job). It also
remembers the jobs whose result the relay acknowledged, with that attempt, so a redelivered
finished attempt is never run twice, while a later attempt (the relay retrying a retryable
failure) runs.

``Spool`` is the synchronous core (one connection, used from one thread); ``AsyncSpool``
runs it on a single worker thread so writes keep their order and never block the event
loop. Writes are fire-and-forget in submission order: a done message is only ever
written after the chunks before it, so a spooled done always has its chunks with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson

from ..diskfull import SaidOnce, is_disk_full

T = TypeVar("T")
log = logging.getLogger("agent.spool")
# Jobs run and stream to the relay without the spool; only a restart loses what it missed.
_FULL = SaidOnce(log, "spool.db", "finished jobs' unacknowledged results are not kept across a restart "
                 "(jobs still run and stream to the relay)")

FINISHED_KEEP_SECONDS = 7 * 86400.0
FINISHED_KEEP_COUNT = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY, attempt INTEGER NOT NULL, source TEXT NOT NULL,
    operation TEXT NOT NULL, started TEXT, done TEXT, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    job_id TEXT NOT NULL, attempt INTEGER NOT NULL, seq INTEGER NOT NULL, frame BLOB NOT NULL,
    PRIMARY KEY (job_id, attempt, seq));
CREATE TABLE IF NOT EXISTS finished (
    job_id TEXT PRIMARY KEY, attempt INTEGER NOT NULL, finished_at REAL NOT NULL);
"""


@dataclass
class SpooledJob:
    """A finished job whose result the relay has not acknowledged, as restored on start."""

    job_id: str
    attempt: int
    source: str
    operation: str
    started: dict[str, Any] | None
    done: dict[str, Any]
    chunks: dict[int, bytes] = field(default_factory=dict)  # seq -> frame, in order


class Spool:
    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.clock = clock
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a committed write survives the process being killed, which
        # is the failure the spool is for (a power cut may lose the last writes, and the
        # relay then simply redelivers the job).
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        self._in_batch = False
        path.chmod(0o600)

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        """One method's writes as one transaction, or, inside ``batch``, as one savepoint
        of the batch's transaction (undone alone if the method fails)."""
        if not self._in_batch:
            # BEGIN said outright: with isolation_level=None, ``with self.db`` opens no
            # transaction, so a write failing halfway (a full disk) left its first half.
            self.db.execute("BEGIN")
            try:
                yield
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
            return
        self.db.execute("SAVEPOINT op")
        try:
            yield
        except BaseException:
            # A full disk (SQLITE_FULL) may have rolled back the whole transaction already,
            # savepoint and all: then there is nothing to undo, and the error is the one to say.
            if self.db.in_transaction:
                self.db.execute("ROLLBACK TO op")
                self.db.execute("RELEASE op")
            raise
        self.db.execute("RELEASE op")

    def batch(self, ops: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> bool:
        """Run several methods' writes in one transaction (one WAL commit instead of one
        each); a method that fails is undone alone and logged, as ``AsyncSpool`` does.
        False when one did."""
        self.db.execute("BEGIN")
        self._in_batch = True
        ok = True
        try:
            for fn, args in ops:
                ok = _logged(self._one, fn, args) is not _FAILED and ok
                if not self.db.in_transaction:  # SQLite rolled the whole batch back (a full disk)
                    ok = False
                    self.db.execute("BEGIN")  # the rest still get their try
        finally:
            self._in_batch = False
        try:
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise
        return ok

    def _one(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        with self._tx():  # a savepoint, also for methods without a transaction of their own
            fn(self, *args)

    # ------------------------------------------------------------ writes

    def begin(self, job_id: str, attempt: int, source: str, operation: str,
              started: dict[str, Any] | None = None) -> None:  # fmt: skip
        """A job started (its columns are known); replaces any older attempt's row."""
        with self._tx():
            self._clear(job_id)
            self.db.execute(
                "INSERT INTO jobs (job_id, attempt, source, operation, started, done, created_at)"
                " VALUES (?, ?, ?, ?, ?, NULL, ?)",
                (job_id, attempt, source, operation, _dumps(started), self.clock()),
            )

    def put_chunk(self, job_id: str, attempt: int, seq: int, frame: bytes) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO chunks (job_id, attempt, seq, frame) VALUES (?, ?, ?, ?)",
            (job_id, attempt, seq, frame),
        )

    def ack(self, job_id: str, attempt: int, seq: int) -> None:
        """The relay stored every chunk up to ``seq`` (acks are cumulative)."""
        self.db.execute(
            "DELETE FROM chunks WHERE job_id = ? AND attempt = ? AND seq <= ?", (job_id, attempt, seq)
        )

    def set_done(self, job_id: str, attempt: int, source: str, operation: str,
                 done: dict[str, Any]) -> None:  # fmt: skip
        with self._tx():
            row = self.db.execute("SELECT attempt FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            if row is None or row[0] != attempt:
                self.db.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))
                self.db.execute("DELETE FROM chunks WHERE job_id = ? AND attempt <> ?", (job_id, attempt))
                self.db.execute(
                    "INSERT INTO jobs (job_id, attempt, source, operation, started, done, created_at)"
                    " VALUES (?, ?, ?, ?, NULL, ?, ?)",
                    (job_id, attempt, source, operation, _dumps(done), self.clock()),
                )
            else:
                self.db.execute("UPDATE jobs SET done = ? WHERE job_id = ?", (_dumps(done), job_id))

    def record_done(self, job_id: str, attempt: int, source: str, operation: str,
                    started: dict[str, Any] | None, done: dict[str, Any],
                    chunks: dict[int, bytes]) -> None:  # fmt: skip
        """A finished job, its started and done messages and its unacknowledged chunks,
        in place of anything spooled for it before."""
        with self._tx():
            self._clear(job_id)
            self.db.execute(
                "INSERT INTO jobs (job_id, attempt, source, operation, started, done, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (job_id, attempt, source, operation, _dumps(started), _dumps(done), self.clock()),
            )
            self.db.executemany(
                "INSERT INTO chunks (job_id, attempt, seq, frame) VALUES (?, ?, ?, ?)",
                [(job_id, attempt, seq, frame) for seq, frame in sorted(chunks.items())],
            )

    def finish(self, job_id: str, attempt: int) -> None:
        """The relay acknowledged the job's result: forget its data, remember its id."""
        with self._tx():
            self._clear(job_id)
            self.db.execute(
                "INSERT OR REPLACE INTO finished (job_id, attempt, finished_at) VALUES (?, ?, ?)",
                (job_id, attempt, self.clock()),
            )

    def drop(self, job_id: str, attempt: int | None = None) -> None:
        """An abandoned attempt: its data is never used."""
        with self._tx():
            if attempt is None:
                self._clear(job_id)
                return
            self.db.execute("DELETE FROM jobs WHERE job_id = ? AND attempt = ?", (job_id, attempt))
            self.db.execute("DELETE FROM chunks WHERE job_id = ? AND attempt = ?", (job_id, attempt))

    def rebind(self, old: SpooledJob, attempt: int) -> None:
        """Store ``old`` (already rewritten for ``attempt``) in place of its old attempt."""
        with self._tx():
            self._clear(old.job_id)
            self.db.execute(
                "INSERT INTO jobs (job_id, attempt, source, operation, started, done, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (old.job_id, attempt, old.source, old.operation, _dumps(old.started),
                 _dumps(old.done), self.clock()),
            )  # fmt: skip
            self.db.executemany(
                "INSERT INTO chunks (job_id, attempt, seq, frame) VALUES (?, ?, ?, ?)",
                [(old.job_id, attempt, seq, frame) for seq, frame in old.chunks.items()],
            )

    def _clear(self, job_id: str) -> None:
        self.db.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))
        self.db.execute("DELETE FROM chunks WHERE job_id = ?", (job_id,))

    # ------------------------------------------------------------ reads

    def load(self) -> list[SpooledJob]:
        """On start: the finished, unacknowledged jobs; the leftovers of unfinished ones go."""
        with self._tx():
            self.db.execute("DELETE FROM jobs WHERE done IS NULL")
            self.db.execute(
                "DELETE FROM chunks WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE"
                " j.job_id = chunks.job_id AND j.attempt = chunks.attempt)"
            )
        out = []
        for job_id, attempt, source, operation, started, done in self.db.execute(
            "SELECT job_id, attempt, source, operation, started, done FROM jobs ORDER BY created_at"
        ).fetchall():
            job = SpooledJob(job_id, attempt, source, operation, _loads(started), _loads(done) or {})
            for seq, frame in self.db.execute(
                "SELECT seq, frame FROM chunks WHERE job_id = ? AND attempt = ? ORDER BY seq",
                (job_id, attempt),
            ):
                job.chunks[seq] = bytes(frame)
            out.append(job)
        return out

    def finished_jobs(self) -> list[tuple[str, int]]:
        """Jobs whose result the relay acknowledged, with that attempt, oldest first (pruned first)."""
        cutoff = self.clock() - FINISHED_KEEP_SECONDS
        with self._tx():
            self.db.execute("DELETE FROM finished WHERE finished_at < ?", (cutoff,))
            self.db.execute(
                "DELETE FROM finished WHERE job_id NOT IN (SELECT job_id FROM finished"
                " ORDER BY finished_at DESC LIMIT ?)",
                (FINISHED_KEEP_COUNT,),
            )
        rows = self.db.execute("SELECT job_id, attempt FROM finished ORDER BY finished_at").fetchall()
        return [(r[0], int(r[1])) for r in rows]

    def close(self) -> None:
        self.db.close()


class AsyncSpool:
    """``Spool`` on one worker thread. ``submit(Spool.method, *args)`` keeps order without
    waiting; ``call`` waits for the answer; ``close`` waits for every earlier write.

    Writes submitted on the event loop wait ``COALESCE`` seconds before the thread takes
    them, so the writes of several jobs share one wake-up of the thread and one
    transaction (waking the spool thread for every job was ~6 % of the agent's CPU on
    small jobs). They were never waited for: the done message goes to the relay at
    once either way; a crash in those milliseconds loses what a crash just before the job
    ended would have (the relay redelivers the job). ``call`` and ``close`` hand pending
    writes over first, so they still see every write submitted before them. In one
    batch, a job's ``record_done``/``ack`` followed by its ``finish`` (the relay already
    acknowledged the result) are left out: ``finish`` deletes what they would write."""

    COALESCE = 0.02

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agent-spool")
        self._pending: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self._mutex = threading.Lock()
        self._timer: asyncio.TimerHandle | None = None

    def submit(self, method: Callable[..., Any], *args: Any) -> None:
        """Queue a write. Writes queued while the thread is busy go in one transaction."""
        with self._mutex:
            self._pending.append((method, args))
            first = len(self._pending) == 1
        if not first:
            return  # a hand-over is already planned (a timer, or a drain the thread will run)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None:
            self._pool.submit(self._drain)
        else:
            self._timer = loop.call_later(self.COALESCE, self._hand_over)

    def _hand_over(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        self._pool.submit(self._drain)

    def _drain(self) -> None:
        with self._mutex:
            ops, self._pending = self._pending, []
        ops = _without_superseded(ops)
        if len(ops) == 1:
            ok = _logged(ops[0][0], self.spool, *ops[0][1]) is not _FAILED
        elif ops:
            ok = _logged(self.spool.batch, ops) not in (_FAILED, False)
        else:
            return
        if ok:
            _FULL.worked()

    async def call(self, method: Callable[..., T], *args: Any) -> T:
        if self._timer is not None:
            self._hand_over()  # the writes submitted before this call go first
        return await asyncio.wrap_future(self._pool.submit(method, self.spool, *args))

    async def close(self) -> None:
        await self.call(Spool.close)
        self._pool.shutdown(wait=False)


def _without_superseded(
    ops: list[tuple[Callable[..., Any], tuple[Any, ...]]],
) -> list[tuple[Callable[..., Any], tuple[Any, ...]]]:
    """``ops`` less each ``record_done`` and ``ack`` of a job that a later ``finish`` of
    the same job in ``ops`` deletes anyway (``finish`` clears everything of the job)."""
    out: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
    finished_later: set[str] = set()
    for fn, args in reversed(ops):
        if fn is Spool.finish:
            finished_later.add(args[0])
        elif (fn is Spool.record_done or fn is Spool.ack) and args[0] in finished_later:
            continue
        out.append((fn, args))
    out.reverse()
    return out


_FAILED = object()


def _logged(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as exc:  # a full disk must not take the agent down; the relay redelivers
        if is_disk_full(exc):
            _FULL.failed(exc)  # once, not a traceback per job
        else:
            log.exception("writing the spool failed")
        return _FAILED


def _dumps(value: dict[str, Any] | None) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _loads(value: str | None) -> dict[str, Any] | None:
    return None if value is None else orjson.loads(value)
