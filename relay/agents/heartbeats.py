"""Heartbeat writes coalesced: many agents' heartbeats share one store transaction.

Memory is updated at once by the caller (``intake.on_heartbeat``); the store write is a
group commit. The first heartbeat to arrive while no write is running is written at once
(a lone agent sees no delay); heartbeats that arrive while a write is in progress queue
up and are written together, in one transaction, as soon as it ends. Ten thousand agents
at 15 s heartbeats (~670 a second) thus cost the store a few transactions a second
instead of hundreds of fsyncs. Each caller still awaits the commit of its own heartbeat,
so nothing is reported as stored before it is.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Any

# fn(conn, [args, ...]) writes every heartbeat of the batch that names it, inside the
# batch's transaction (one executemany per statement instead of one statement each).
ItemWriter = Callable[[Any, list[tuple[Any, ...]]], None]


class HeartbeatWriter:
    """Group commit of heartbeat writes for one store."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self._pending: list[tuple[ItemWriter, tuple[Any, ...], asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None
        self.batches = 0  # transactions written (for benchmarks and tests)
        self.written = 0  # heartbeats written

    async def write(self, fn: ItemWriter, *args: Any) -> None:
        """Write ``args`` in the next batch, with every other item naming ``fn``:
        ``fn(conn, [args, ...])``; return once it is committed."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._pending.append((fn, args, fut))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drain())
        await fut

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self.store.run(_write_all, [(fn, args) for fn, args, _ in batch])
            except BaseException as exc:  # each waiter learns its write failed
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
                if not isinstance(exc, Exception):
                    raise
                continue
            self.batches += 1
            self.written += len(batch)
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_result(None)


def _write_all(conn: Any, items: list[tuple[ItemWriter, tuple[Any, ...]]]) -> None:
    """Every item, grouped by its writer, writers in the order they first appear."""
    groups: dict[ItemWriter, list[tuple[Any, ...]]] = {}
    for fn, args in items:
        groups.setdefault(fn, []).append(args)
    for fn, arg_list in groups.items():
        fn(conn, arg_list)


_WRITERS: weakref.WeakKeyDictionary[Any, HeartbeatWriter] = weakref.WeakKeyDictionary()


def writer_for(store: Any) -> HeartbeatWriter:
    """The store's heartbeat writer (one per store, made on first use)."""
    writer = _WRITERS.get(store)
    if writer is None:
        writer = _WRITERS[store] = HeartbeatWriter(store)
    return writer
