"""Job threads kept for the next job (agent/jobs/workers.py)."""

from __future__ import annotations

import threading
import time

from agent.jobs.workers import Workers


def _wait(cond, what: str, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def test_a_finished_thread_serves_the_next_job_and_a_stuck_one_does_not_block_it() -> None:
    w = Workers(idle_seconds=5)
    seen: list[tuple[str, int]] = []
    done = threading.Event()
    w.run(lambda: (seen.append((threading.current_thread().name, threading.get_ident())), done.set()), "job-a")
    assert done.wait(5)
    _wait(lambda: w.idle() == 1, "the thread to go idle")
    done.clear()
    w.run(lambda: (seen.append((threading.current_thread().name, threading.get_ident())), done.set()), "job-b")
    assert done.wait(5)
    assert seen[0][1] == seen[1][1] and seen[1][0] == "job-b"  # the same thread, renamed
    _wait(lambda: w.idle() == 1, "the thread to go idle again")
    stuck = threading.Event()
    w.run(lambda: stuck.wait(10), "job-stuck")  # takes the idle thread and keeps it
    ran = threading.Event()
    w.run(ran.set, "job-c")  # no idle thread: a new one
    assert ran.wait(5)
    stuck.set()


def test_idle_threads_exit_after_a_while() -> None:
    w = Workers(idle_seconds=0.05)
    done = threading.Event()
    w.run(done.set, "job-x")
    assert done.wait(5)
    _wait(lambda: w.idle() == 0 and not any(t.name == "job-x" for t in threading.enumerate()), "the exit")
