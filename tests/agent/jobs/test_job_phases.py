"""The agent's job phases (agent/jobs/job.py): the table is the documentation, and an
event the table does not list raises."""

from __future__ import annotations

from typing import Any

import pytest

from agent.jobs.job import (
    ASSIGNED,
    DONE_SENT,
    FINISHED,
    JOB_TRANSITIONS,
    PHASES,
    RUNNING_PHASES,
    IllegalJobEvent,
    Job,
)
from shared.protocol import make

EVENTS = ("begin", "columns", "finish", "send_done", "resend")


def _job() -> Job:
    return Job("job_1", 1, "erp", "query", {})


def _done() -> Any:
    return make("job.done.v1", jobId="job_1", attempt=1, status="succeeded", rowCount=0, byteCount=0,
                chunks=0, durationMs=1, error=None)  # fmt: skip


def test_the_happy_path_and_a_resend_on_a_new_connection() -> None:
    job = _job()
    assert job.phase == ASSIGNED and job.running and not job.begun
    job.fire("begin")
    assert job.begun and job.running
    job.fire("columns")
    job.finish(_done())
    assert job.phase == FINISHED and not job.running and job.done_msg is not None
    job.fire("send_done")
    assert job.done_sent
    job.fire("resend")  # the connection dropped before the ack: say it again
    assert job.phase == FINISHED and not job.done_sent
    job.fire("send_done")
    assert job.phase == DONE_SENT


@pytest.mark.parametrize(("phase", "event"),
                         [(p, e) for p in PHASES for e in EVENTS if (p, e) not in JOB_TRANSITIONS])  # fmt: skip
def test_every_event_the_table_does_not_list_raises(phase: str, event: str) -> None:
    job = _job()
    job.phase = phase
    with pytest.raises(IllegalJobEvent, match=event):
        job.fire(event)
    assert job.phase == phase


def test_a_finished_job_cannot_finish_again_or_run() -> None:
    job = _job()
    job.finish(_done())
    with pytest.raises(IllegalJobEvent):
        job.finish(_done())
    with pytest.raises(IllegalJobEvent):
        job.fire("columns")
    assert FINISHED not in RUNNING_PHASES and DONE_SENT not in RUNNING_PHASES


def test_the_first_stop_reason_wins() -> None:
    job = _job()
    assert job.request_stop("cancelled") == "cancelled"
    assert job.request_stop("timed_out") == "cancelled"
    with pytest.raises(ValueError):
        job.request_stop("bored")
