"""One thread for every job's deadline, instead of a ``threading.Timer`` (a thread) each.

``call_later(delay, fn)`` runs ``fn()`` on the deadline thread after ``delay`` seconds
unless the returned handle is cancelled first. ``fn`` must be quick (the SQL streams'
deadlines only ask the database to cancel). Starting a thread per job was a visible
share of the agent's CPU on small jobs (docs/BENCHMARKS.md).

The delay is checked here, not only by its callers: a NaN delay is refused
(``ValueError``), a negative one runs at once, and one longer than ``MAX_DELAY``
(1e300, infinity) is taken as ``MAX_DELAY``. Waiting for 1e300 s or ``inf`` raises
``OverflowError`` in ``Condition.wait``, which used to kill the deadline thread.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable

log = logging.getLogger("agent.deadlines")

# The longest delay taken as given: past any job's limit (the runner caps a job's
# timeout at 7 days), well inside what ``Condition.wait`` and the monotonic clock take.
MAX_DELAY = 30 * 86_400.0
# The thread never waits longer than this in one go, whatever the heap holds.
MAX_WAIT = 3_600.0


class Deadline:
    """A pending call; ``cancel()`` makes sure it does not run (if it has not yet)."""

    __slots__ = ("cancelled", "fn", "owner", "when")

    def __init__(self, owner: Deadlines, when: float, fn: Callable[[], None]) -> None:
        self.owner, self.when, self.fn, self.cancelled = owner, when, fn, False

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            # A cancelled entry stays in the heap until it comes up (or is swept): it must
            # not keep what ``fn`` holds (a job's stream, its cursor) alive until then.
            self.fn = _nothing
            self.owner._cancelled_one()


class Deadlines:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Deadline]] = []
        self._cond = threading.Condition()
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        self._cancelled = 0  # cancelled entries still in the heap

    def __len__(self) -> int:
        return len(self._heap)

    def _cancelled_one(self) -> None:
        """Most deadlines are cancelled (the job ends first): once they are most of the
        heap, drop them, so a busy agent with long timeouts does not pile them up."""
        with self._cond:
            self._cancelled += 1
            if self._cancelled > 64 and self._cancelled * 2 > len(self._heap):
                self._heap = [item for item in self._heap if not item[2].cancelled]
                heapq.heapify(self._heap)
                self._cancelled = 0

    def call_later(self, delay: float, fn: Callable[[], None]) -> Deadline:
        entry = Deadline(self, time.monotonic() + _bounded(delay), fn)
        with self._cond:
            heapq.heappush(self._heap, (entry.when, next(self._order), entry))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="agent-deadlines", daemon=True)
                self._thread.start()
            if self._heap[0][2] is entry:
                # Only a new earliest deadline changes how long the thread waits; waking
                # it for every job (most deadlines are later ones) cost a thread switch each.
                self._cond.notify()
        return entry

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._heap and self._heap[0][2].cancelled:
                    heapq.heappop(self._heap)  # cancelled ones leave as they come up
                    self._cancelled = max(0, self._cancelled - 1)
                if not self._heap:
                    self._cond.wait()
                    continue
                wait = self._heap[0][0] - time.monotonic()
                if wait > 0:
                    self._cond.wait(min(wait, MAX_WAIT))
                    continue
                entry = heapq.heappop(self._heap)[2]
            if not entry.cancelled:
                try:
                    entry.fn()
                except Exception:  # one failing deadline must not stop the others
                    log.exception("a job's deadline failed")


def _bounded(delay: float) -> float:
    """``delay`` as a float in ``[0, MAX_DELAY]``; NaN is an error."""
    try:
        seconds = float(delay)
    except OverflowError:  # an int too large for a float
        seconds = math.inf if delay > 0 else -math.inf
    if math.isnan(seconds):
        raise ValueError("a deadline's delay cannot be NaN")
    return min(max(seconds, 0.0), MAX_DELAY)


def _nothing() -> None:
    return None


DEADLINES = Deadlines()
