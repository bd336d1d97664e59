"""Group commit: store operations that arrive together share one transaction and one sync.

Every ``Store.run`` call becomes an *op*. While no batch is being written, the first op
starts one at once (a lone caller is not delayed); ops that arrive while a batch is
being written queue up and form the next batch as soon as it ends. A batch is one
transaction: each op runs inside its own SAVEPOINT (``begin_nested``), so an op that
raises is rolled back alone and its caller gets the exception while the others' writes
stand; then one COMMIT (one disk sync with ``synchronous=FULL``) makes them all durable
together. Only after that commit is each caller's future resolved: nobody acts on a
write (acknowledges a chunk, answers an API call) before it is durable.

Ops run in arrival order, so two ops from one caller keep their order. A failing
COMMIT fails every op of the batch, as their own transactions would have failed.
Dialect-neutral (SAVEPOINT is standard SQL); SQLite needs the pysqlite transaction fix
in ``relay/store/engine.py`` so that SAVEPOINT nests inside a real BEGIN.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, event

MAX_BATCH = 256  # ops per transaction: bounds how long one batch holds the writer


@dataclass
class _Op:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    future: asyncio.Future[Any]
    # Filled in the worker thread: (True, result) or (False, exception).
    outcome: tuple[bool, Any] = field(default=(False, None))


class GroupCommitter:
    """Runs ops in batches, one transaction per batch, in ``executor``, on the engine
    ``engine_of()`` returns when the batch starts (the store's engine may be replaced)."""

    def __init__(self, engine_of: Callable[[], Engine], executor: Executor) -> None:
        self.engine_of = engine_of
        self.executor = executor
        self._pending: list[_Op] = []
        self._task: asyncio.Task[None] | None = None
        self.batches = 0  # transactions committed (for benchmarks and tests)
        self.ops = 0  # ops that ran in them

    async def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(conn, *args, **kwargs)`` in the next batch; return its result once
        the batch is committed (or raise what ``fn`` raised, or what the commit raised)."""
        loop = asyncio.get_running_loop()
        op = _Op(fn, args, kwargs, loop.create_future())
        self._pending.append(op)
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drain())
        return await op.future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            try:
                await loop.run_in_executor(
                    self.executor, functools.partial(_write_batch, self.engine_of(), batch)
                )
            except Exception as exc:  # noqa: BLE001 - settled on the ops' futures
                if len(batch) == 1:
                    _settle(batch[0].future, False, exc)
                    continue
                # The shared transaction as a whole failed (its COMMIT: a full disk): each op
                # again in a transaction of its own, so a read or a small write that can
                # still commit is not failed for another op's rows.
                for op in batch:
                    await self._alone(loop, op)
                continue
            except BaseException as exc:  # cancelled, or the process is ending: every op fails
                failure = RuntimeError(f"store batch aborted: {exc!r}")
                for op in (*batch, *self._pending):
                    _settle(op.future, False, failure)
                self._pending = []
                raise
            self.batches += 1
            self.ops += len(batch)
            for op in batch:
                _settle(op.future, *op.outcome)


    async def _alone(self, loop: asyncio.AbstractEventLoop, op: _Op) -> None:
        try:
            await loop.run_in_executor(self.executor, functools.partial(_write_batch, self.engine_of(), [op]))
        except Exception as exc:  # noqa: BLE001 - this op's own failure, for its caller
            _settle(op.future, False, exc)
        else:
            _settle(op.future, *op.outcome)


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():  # the caller was cancelled meanwhile; its write stands anyway
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def _write_batch(engine: Engine, batch: list[_Op]) -> None:
    """One transaction for the batch. Runs in the worker.

    First without savepoints (they cost as much as the ops' own statements): when every
    op succeeds, that is the whole story. When one raises, the transaction is rolled back
    and the batch runs again with each op in its own savepoint, so only the failing op's
    writes are undone. Ops are store functions of the connection alone, so running one
    again on the rolled-back store gives the same outcome.
    """
    with engine.connect() as conn:
        if len(batch) > 1:
            try:
                with conn.begin():
                    for op in batch:
                        op.outcome = (True, op.fn(conn, *op.args, **op.kwargs))
                return
            except Exception:  # noqa: BLE001, S110 - an op failed: redo the batch the careful way
                pass
        with conn.begin():
            _careful(conn, batch)


def _careful(conn: Any, batch: list[_Op]) -> None:
    """Each op in a savepoint (a lone op needs none)."""
    if len(batch) == 1:
        op = batch[0]
        op.outcome = (True, op.fn(conn, *op.args, **op.kwargs))  # raises: nothing to keep
        return
    for op in batch:
        try:
            with conn.begin_nested():
                op.outcome = (True, op.fn(conn, *op.args, **op.kwargs))
        except Exception as exc:  # noqa: BLE001 - rolled back to its savepoint; the others stand
            op.outcome = (False, exc)


def sqlite_explicit_transactions(engine: Engine) -> None:
    """Make pysqlite's transactions real, so SAVEPOINTs nest (SQLAlchemy's documented fix).

    Left to itself the sqlite3 module emits BEGIN only before an INSERT/UPDATE/DELETE, so
    a SAVEPOINT issued first opens a transaction of its own and its RELEASE commits it:
    one sync per op again, and no rollback of a failed op alone. With the module's own
    transaction handling off, every transaction starts with BEGIN IMMEDIATE: the write
    lock is taken at once, waiting out the busy timeout, rather than on a later upgrade
    from a read snapshot, which WAL refuses at once when another process wrote meanwhile.
    """

    def no_module_transactions(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None

    def begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    event.listen(engine, "connect", no_module_transactions)
    event.listen(engine, "begin", begin)
