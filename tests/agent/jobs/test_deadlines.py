"""One deadline thread for every job (agent/jobs/deadlines.py)."""

from __future__ import annotations

import threading
import time

from agent.jobs.deadlines import Deadlines


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


def test_only_a_new_earliest_deadline_wakes_the_thread() -> None:
    """Every job adds a deadline; most are later than the earliest one the thread already
    waits for, and waking the thread for those was a thread switch per job for nothing."""
    d = Deadlines()
    d.call_later(60, lambda: None)  # starts the thread
    wakes: list[float] = []
    real = d._cond.notify
    d._cond.notify = lambda n=1: (wakes.append(n), real(n))  # type: ignore[method-assign]
    d.call_later(120, lambda: None)
    d.call_later(90, lambda: None)
    assert wakes == []
    fired = threading.Event()
    d.call_later(0.05, fired.set)
    assert wakes == [1] and fired.wait(5)


def test_a_cancelled_deadline_lets_go_of_its_call() -> None:
    """A cancelled deadline waits in the heap until its time (or a sweep): it must not keep
    a finished job's stream alive that long."""
    import gc
    import weakref

    class Stream:
        def expire(self) -> None:
            raise AssertionError("cancelled")

    d = Deadlines()
    d.call_later(100, lambda: None)  # an earlier live one: the cancelled one stays queued
    stream = Stream()
    ref = weakref.ref(stream)
    entry = d.call_later(300, stream.expire)
    entry.cancel()
    del stream
    gc.collect()
    assert ref() is None and len(d) == 2


def _thread_survives(d: Deadlines) -> bool:
    """The deadline thread is still there once it has looked at the heap's head."""
    time.sleep(0.2)
    return d._thread is not None and d._thread.is_alive()


def test_a_huge_or_infinite_delay_is_clamped_and_does_not_kill_the_thread() -> None:
    """Waiting 1e300 s (or inf) raised OverflowError in the deadline thread, which died:
    a deadline already queued behind it then never ran. Only the runner's cap on
    ``timeoutSeconds`` used to stand in front of that."""
    from agent.jobs.deadlines import MAX_DELAY

    for huge in (1e300, float("inf"), 10**400):
        d = Deadlines()
        entry = d.call_later(huge, lambda: None)
        assert entry.when - time.monotonic() <= MAX_DELAY
        assert _thread_survives(d), huge
        fired = threading.Event()
        # Queued while the thread waits for the huge one: it must still run on time.
        d.call_later(0.05, fired.set)
        assert fired.wait(5), huge
        assert _thread_survives(d), huge


def test_a_nan_delay_is_refused_and_a_negative_one_runs_at_once() -> None:
    """NaN compares false with everything: it used to run at once and scramble the heap."""
    import pytest

    d = Deadlines()
    ran: list[str] = []
    with pytest.raises(ValueError):
        d.call_later(float("nan"), lambda: ran.append("nan"))
    assert len(d) == 0
    fired = threading.Event()
    d.call_later(-1e300, fired.set)
    assert fired.wait(5) and ran == []
