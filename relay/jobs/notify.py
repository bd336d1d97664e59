"""In-process wake-ups for readers tailing a job's results.

A reader takes a ``watch(job_id)`` *before* reading the store, so a chunk stored between
its read and its wait still wakes it (the watch is armed the whole time). Readers also
wake on a timeout and re-check the store: the safety net. With several relay nodes,
``forward`` (set by ``relay.agents.cluster``) passes each notification on to the other nodes,
which wake their own readers with ``notify_local``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable


class Watch:
    def __init__(self, notifier: JobNotifier, job_id: str) -> None:
        self._notifier = notifier
        self._job_id = job_id
        self._fut = notifier._arm(job_id)

    async def wait(self, timeout: float) -> None:
        """Return when the job was notified since the last wait (or on timeout), re-armed."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._fut), timeout)
        if self._fut.done():
            self._fut = self._notifier._arm(self._job_id)

    def close(self) -> None:
        self._notifier._disarm(self._job_id, self._fut)


class JobNotifier:
    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self.forward: Callable[[str], None] | None = None

    def watch(self, job_id: str) -> Watch:
        return Watch(self, job_id)

    def notify(self, job_id: str) -> None:
        self.notify_local(job_id)
        if self.forward is not None:
            self.forward(job_id)

    def notify_local(self, job_id: str) -> None:
        for fut in self._waiters.pop(job_id, ()):
            if not fut.done():
                fut.set_result(None)

    def _arm(self, job_id: str) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job_id, set()).add(fut)
        return fut

    def _disarm(self, job_id: str, fut: asyncio.Future[None]) -> None:
        waiters = self._waiters.get(job_id)
        if waiters is not None:
            waiters.discard(fut)
            if not waiters:
                del self._waiters[job_id]
        if not fut.done():
            fut.cancel()

    def watched(self) -> list[str]:
        """Jobs someone is waiting on here (woken after missed cluster notifications)."""
        return list(self._waiters)
