"""One deadline thread for every job (agent/deadlines.py)."""

from __future__ import annotations

import threading
import time

from agent.deadlines import Deadlines


def test_due_calls_run_in_order_and_cancelled_ones_never() -> None:
    d = Deadlines()
    ran: list[str] = []
    done = threading.Event()
    d.call_later(0.06, lambda: (ran.append("late"), done.set()))
    d.call_later(0.02, lambda: ran.append("early"))
    d.call_later(0.04, lambda: ran.append("cancelled")).cancel()
    d.call_later(0.03, lambda: 1 / 0)  # a failing call does not stop the others
    assert done.wait(5)
    assert ran == ["early", "late"]


def test_cancelled_deadlines_do_not_pile_up() -> None:
    """A busy agent cancels nearly every deadline (jobs end before their timeout); the
    heap must not keep them all until their time comes."""
    d = Deadlines()
    for _ in range(10_000):
        d.call_later(300, lambda: None).cancel()
    assert len(d) < 200
    keep = d.call_later(300, lambda: None)
    assert len(d) < 200 and not keep.cancelled


def test_a_deadline_added_while_the_thread_waits_for_a_later_one_runs_on_time() -> None:
    d = Deadlines()
    d.call_later(60, lambda: None)
    fired = threading.Event()
    t0 = time.monotonic()
    d.call_later(0.05, fired.set)
    assert fired.wait(5) and time.monotonic() - t0 < 2
