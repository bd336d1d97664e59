"""Threads for jobs, kept for the next job instead of started for each one.

A job's rows are read in a thread of its own (drivers block). Starting a thread per job
was a visible share of the agent's CPU on small jobs (docs/BENCHMARKS.md), so a thread
that finished a job waits up to ``idle_seconds`` for the next before it exits. A thread
stuck in a driver call (a cancelled query the database will not give back) is simply not
idle: the next job gets a new thread, as before. All are daemon threads, so none keeps
the process from exiting.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger("agent.workers")


class Workers:
    def __init__(self, idle_seconds: float = 30.0) -> None:
        self.idle_seconds = idle_seconds
        self._idle: list[queue.SimpleQueue[Callable[[], None]]] = []
        self._lock = threading.Lock()

    def run(self, fn: Callable[[], None], name: str) -> None:
        """Run ``fn`` in an idle worker thread, or a new one; the thread takes ``name``."""
        with self._lock:
            inbox = self._idle.pop() if self._idle else None
        if inbox is None:
            inbox = queue.SimpleQueue()
            threading.Thread(target=self._work, args=(inbox,), name=name, daemon=True).start()
        inbox.put(lambda: _named(name, fn))

    def idle(self) -> int:
        with self._lock:
            return len(self._idle)

    def _work(self, inbox: queue.SimpleQueue[Callable[[], None]]) -> None:
        fn = inbox.get()
        while True:
            try:
                fn()
            except Exception:  # the job's body reports its own errors; this is a bug
                log.exception("a job's worker thread failed")
            del fn  # an idle thread must not keep its last job's objects alive
            with self._lock:
                self._idle.append(inbox)
            try:
                fn = inbox.get(timeout=self.idle_seconds)
            except queue.Empty:
                with self._lock:
                    if inbox in self._idle:
                        self._idle.remove(inbox)
                        return
                fn = inbox.get()  # taken from the idle list just now: its job is coming


def _named(name: str, fn: Callable[[], None]) -> None:
    threading.current_thread().name = name
    fn()


WORKERS = Workers()
