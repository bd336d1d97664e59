"""The runner says a job began (job.started.v1 without columns) as soon as it has found the
source, before the work returns its columns; the started with columns still comes before
any chunk, on every connection, and an older relay gets only that one."""

from __future__ import annotations

import threading
from typing import Any

from agent.jobs.runner import Runner
from shared.crypto import generate_private_key
from shared.protocol import Message, make

from ..conftest import SentLink, until

TIMEOUT = 10.0


class _SlowSource:
    """A source whose connection test blocks until the test releases it."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def test(self) -> dict[str, Any]:
        if not self.release.wait(TIMEOUT):
            raise AssertionError("never released")
        return {"ok": True}


def _assign(job_id: str) -> Message:
    return make("job.assign.v1", jobId=job_id, attempt=1, source="erp", operation="test", sealed=None, options={})


async def test_started_without_columns_goes_out_first_and_again_after_a_reconnect() -> None:
    source = _SlowSource()
    runner = Runner(get_source=lambda name: source, private_key=generate_private_key())
    first = SentLink()
    await runner.attach(first, connector_id="con_1", window=8, max_chunk_bytes=1 << 20,
                        started_without_columns=True)  # fmt: skip
    await runner.on_message(_assign("job_s"))
    await until(lambda: first.kinds() == ["started"], "the started without columns")
    started = first.sent[0][1]
    assert started.data == {"jobId": "job_s", "attempt": 1}
    # A reconnect while the work still runs: the relay hears again that the job began.
    runner.detach()
    second = SentLink()
    await runner.attach(second, connector_id="con_1", window=8, max_chunk_bytes=1 << 20,
                        started_without_columns=True)  # fmt: skip
    assert second.kinds() == ["started"]
    source.release.set()
    await until(lambda: "job.done.v1" in second.kinds(), "the done")
    assert second.kinds() == ["started", "started+columns", "chunk", "job.done.v1"]
    assert first.kinds() == ["started"]
    # Reconnecting before any chunk is acknowledged resends the columns before the chunk.
    runner.detach()
    third = SentLink()
    await runner.attach(third, connector_id="con_1", window=8, max_chunk_bytes=1 << 20,
                        started_without_columns=True)  # fmt: skip
    assert third.kinds() == ["started+columns", "chunk", "job.done.v1"]


async def test_a_relay_that_does_not_take_started_without_columns_gets_only_the_one_with_columns() -> None:
    source = _SlowSource()
    source.release.set()
    runner = Runner(get_source=lambda name: source, private_key=generate_private_key())
    link = SentLink()
    await runner.attach(link, connector_id="con_1", window=8, max_chunk_bytes=1 << 20)
    await runner.on_message(_assign("job_o"))
    await until(lambda: "job.done.v1" in link.kinds(), "the done")
    assert link.kinds() == ["started+columns", "chunk", "job.done.v1"]


class _QuickSource:
    def test(self) -> dict[str, Any]:
        return {"ok": True}


async def test_a_quick_job_announces_itself_once_and_logs_one_line(caplog: Any) -> None:
    """Columns within BEGUN_GRACE: one job.started (with them), not two; and one INFO line
    when the job ends, saying what it was."""
    runner = Runner(get_source=lambda name: _QuickSource(), private_key=generate_private_key())
    link = SentLink()
    await runner.attach(link, connector_id="con_1", window=8, max_chunk_bytes=1 << 20,
                        started_without_columns=True)  # fmt: skip
    with caplog.at_level("INFO", logger="agent.runner"):
        await runner.on_message(_assign("job_q"))
        await until(lambda: "job.done.v1" in link.kinds(), "the done")
    assert link.kinds() == ["started+columns", "chunk", "job.done.v1"]
    lines = [r.getMessage() for r in caplog.records if "job_q" in r.getMessage()]
    assert len(lines) == 1 and "succeeded" in lines[0] and "test on source erp (attempt 1)" in lines[0]


async def test_a_job_still_running_after_a_while_logs_that_it_started(caplog: Any, monkeypatch: Any) -> None:
    import agent.jobs.runner as runner_module

    monkeypatch.setattr(runner_module, "STARTED_LOG_AFTER", 0.05)
    source = _SlowSource()
    runner = Runner(get_source=lambda name: source, private_key=generate_private_key())
    link = SentLink()
    await runner.attach(link, connector_id="con_1", window=8, max_chunk_bytes=1 << 20)
    with caplog.at_level("INFO", logger="agent.runner"):
        await runner.on_message(_assign("job_l"))
        await until(lambda: any("job_l started: test on source erp" in r.getMessage() for r in caplog.records),
                     "the started line")  # fmt: skip
        source.release.set()
        await until(lambda: "job.done.v1" in link.kinds(), "the done")
    assert any("job_l succeeded" in r.getMessage() for r in caplog.records)
