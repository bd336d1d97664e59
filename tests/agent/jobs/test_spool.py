"""The agent's spool: what the relay has not acknowledged survives a restart, and the
runner resends it (not reruns it) after reconnecting."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from agent.jobs.job import Job
from agent.jobs.producer import ChunkItem
from agent.jobs.runner import Runner
from agent.jobs.spool import AsyncSpool, Spool
from shared.crypto import generate_private_key
from shared.protocol import Chunk, Message, decode_chunk, encode_chunk, make


def _frame(job_id: str, attempt: int, seq: int) -> bytes:
    return encode_chunk(Chunk(job_id, attempt, seq, 1, f"[[{seq}]]".encode()))


def _done(job_id: str, attempt: int, chunks: int) -> dict[str, Any]:
    return make("job.done.v1", jobId=job_id, attempt=attempt, status="succeeded", chunks=chunks,
                rowCount=chunks, byteCount=chunks * 5, error=None).data  # fmt: skip


def test_finished_job_survives_a_restart_with_only_its_unacknowledged_chunks(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    started = make("job.started.v1", jobId="job_a", attempt=1, columns=[{"name": "n", "type": "integer"}])
    spool.begin("job_a", 1, "pg", "query", started.data)
    for seq in range(4):
        spool.put_chunk("job_a", 1, seq, _frame("job_a", 1, seq))
    spool.ack("job_a", 1, 1)  # cumulative: 0 and 1 are stored at the relay
    spool.set_done("job_a", 1, "pg", "query", _done("job_a", 1, 4))
    spool.close()

    again = Spool(tmp_path / "spool.db")  # the agent restarted
    [job] = again.load()
    assert (job.job_id, job.attempt, job.source, job.operation) == ("job_a", 1, "pg", "query")
    assert sorted(job.chunks) == [2, 3] and decode_chunk(job.chunks[2]).seq == 2
    assert job.done["chunks"] == 4 and job.started == started.data
    assert (tmp_path / "spool.db").stat().st_mode & 0o777 == 0o600


def test_a_job_still_running_at_the_crash_is_discarded_on_start(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    spool.begin("job_r", 1, "pg", "query")
    spool.put_chunk("job_r", 1, 0, _frame("job_r", 1, 0))
    spool.put_chunk("job_old", 3, 0, _frame("job_old", 3, 0))  # an abandoned attempt's leftover
    spool.close()
    again = Spool(tmp_path / "spool.db")
    assert again.load() == []
    assert again.db.execute("SELECT count(*) FROM chunks").fetchone()[0] == 0


def test_acknowledged_jobs_are_forgotten_but_their_ids_remembered(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", clock=lambda: 1000.0)
    spool.set_done("job_f", 2, "pg", "query", _done("job_f", 2, 0))
    spool.finish("job_f", 2)
    spool.set_done("job_g", 1, "pg", "query", _done("job_g", 1, 0))
    spool.drop("job_g", 1)
    assert spool.load() == []
    assert spool.finished_jobs() == [("job_f", 2)]
    late = Spool(tmp_path / "spool.db", clock=lambda: 1000.0 + 8 * 86400)
    assert late.finished_jobs() == []  # remembered for a week


async def test_async_spool_keeps_the_order_of_writes(tmp_path: Path) -> None:
    spool = AsyncSpool(Spool(tmp_path / "spool.db"))
    for seq in range(50):
        spool.submit(Spool.put_chunk, "job_o", 1, seq, _frame("job_o", 1, seq))
        if seq % 10 == 9:
            spool.submit(Spool.ack, "job_o", 1, seq)
    spool.submit(Spool.set_done, "job_o", 1, "pg", "query", _done("job_o", 1, 50))
    [job] = await spool.call(Spool.load)
    assert job.chunks == {}  # every chunk was acknowledged before the done
    await spool.close()


def _fail_after_write(spool: Spool, job_id: str) -> None:
    spool.put_chunk(job_id, 1, 0, b"half")
    raise OSError("disk full")  # after its write: the batch must undo it alone


async def test_writes_queued_together_share_a_transaction_and_a_failure_is_undone_alone(
    tmp_path: Path,
) -> None:
    inner = Spool(tmp_path / "spool.db")
    begins: list[str] = []
    inner.db.set_trace_callback(lambda sql: begins.append(sql) if sql.strip().upper() == "BEGIN" else None)
    spool = AsyncSpool(inner)
    gate = threading.Event()
    spool.submit(lambda _spool: gate.wait(10))  # holds the spool thread while the rest queue up
    for n in range(20):
        spool.submit(Spool.begin, f"job_{n}", 1, "pg", "query", None)
        spool.submit(Spool.put_chunk, f"job_{n}", 1, 0, _frame(f"job_{n}", 1, 0))
        if n == 7:
            spool.submit(_fail_after_write, "job_bad")
        spool.submit(Spool.set_done, f"job_{n}", 1, "pg", "query", _done(f"job_{n}", 1, 1))
    gate.set()
    jobs = await spool.call(Spool.load)
    assert sorted(j.job_id for j in jobs) == sorted(f"job_{n}" for n in range(20))
    assert all(list(j.chunks) == [0] for j in jobs) and "job_bad" not in {j.job_id for j in jobs}
    bad = inner.db.execute("SELECT count(*) FROM chunks WHERE job_id = 'job_bad'").fetchone()[0]
    assert bad == 0
    assert len(begins) == 2  # the 61 writes queued behind the gate: one transaction (+ load's own)
    await spool.close()


class _Link:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.frames: list[bytes] = []

    async def send_message(self, msg: Message) -> None:
        self.messages.append(msg)

    async def send_binary(self, data: bytes) -> None:
        self.frames.append(data)


def _runner(spool: AsyncSpool) -> Runner:
    def no_source(name: str) -> Any:
        raise AssertionError("a held or finished job must not run again")

    return Runner(get_source=no_source, private_key=generate_private_key(), spool=spool)


async def test_restarted_runner_holds_and_resends_what_the_relay_lacks(tmp_path: Path) -> None:
    """After a restart the runner names the spooled job in heldJobs, resends its
    unacknowledged chunks and done on attach, and forgets it once acknowledged."""
    core = Spool(tmp_path / "spool.db")
    for seq in range(3):
        core.put_chunk("job_h", 1, seq, _frame("job_h", 1, seq))
    core.ack("job_h", 1, 0)
    core.set_done("job_h", 1, "pg", "query", _done("job_h", 1, 3))
    spool = AsyncSpool(core)
    runner = _runner(spool)
    runner.restore(await spool.call(Spool.load), await spool.call(Spool.finished_jobs))
    assert runner.held_jobs() == [{"jobId": "job_h", "attempt": 1}]
    link = _Link()
    await runner.attach(link, connector_id="con_1", window=8, max_chunk_bytes=1 << 20)
    assert [decode_chunk(f).seq for f in link.frames] == [1, 2]
    assert [m.type for m in link.messages] == ["job.done.v1"]
    await runner.on_message(make("job.done.ack.v1", jobId="job_h", attempt=1))
    assert runner.held_jobs() == []
    assert await spool.call(Spool.load) == []
    assert await spool.call(Spool.finished_jobs) == [("job_h", 1)]
    await spool.close()


async def test_restore_applies_the_bound_on_held_finished_jobs_dropping_the_oldest(
    tmp_path: Path, caplog: Any
) -> None:
    """A spool holding more unacknowledged finished jobs than the live bound (left by a
    relay that never acknowledged, or an older agent): restore keeps the newest as the live
    bound does, drops the oldest here and in the spool, and says which at WARNING."""
    import logging

    caplog.set_level(logging.WARNING, logger="agent.runner")
    core = Spool(tmp_path / "spool.db", clock=iter(range(1000, 2000)).__next__)
    for i in range(5):
        core.put_chunk(f"job_{i}", 1, 0, _frame(f"job_{i}", 1, 0))
        core.set_done(f"job_{i}", 1, "pg", "query", _done(f"job_{i}", 1, 1))
    spool = AsyncSpool(core)
    runner = _runner(spool)
    runner.max_held_finished = 3
    runner.restore(await spool.call(Spool.load), await spool.call(Spool.finished_jobs))
    assert runner.held_jobs() == [{"jobId": f"job_{i}", "attempt": 1} for i in (2, 3, 4)]
    assert [j.job_id for j in await spool.call(Spool.load)] == ["job_2", "job_3", "job_4"]
    assert core.db.execute("SELECT count(*) FROM chunks").fetchone()[0] == 3
    dropped = [r for r in caplog.records if r.levelno == logging.WARNING and "dropping the oldest" in r.getMessage()]
    assert [r.jobId for r in dropped] == ["job_0", "job_1"]  # type: ignore[attr-defined]
    assert "job_0 (attempt 1)" in dropped[0].getMessage() and "deliver it again" in dropped[0].getMessage()
    await spool.close()


async def test_a_running_job_writes_nothing_and_its_end_spools_only_what_is_unacknowledged(
    tmp_path: Path,
) -> None:
    """Chunks acknowledged while the job runs never touch the disk (a job unfinished at a
    crash is discarded anyway); at the end, the started, the done and the chunks still
    unacknowledged are spooled together, enough to resend the result after a restart."""
    core = Spool(tmp_path / "spool.db")
    spool = AsyncSpool(core)
    runner = _runner(spool)
    # connected: the chunks go out, so the relay may acknowledge them (one never sent may
    # not be acknowledged: tests/agent/link/test_relay_lies.py)
    await runner.attach(_Link(), connector_id="con_1", window=8, max_chunk_bytes=1 << 20)
    job = Job("job_r", 1, "pg", "query", {})
    runner.jobs[job.job_id] = job
    job.started_msg = make("job.started.v1", jobId="job_r", attempt=1, columns=[{"name": "n", "type": "integer"}])
    for seq in range(4):
        await runner._add_chunk(job, ChunkItem(seq, 1, 5, _frame("job_r", 1, seq)))
    runner._chunk_ack("job_r", 1, 1)
    assert await spool.call(Spool.load) == []  # nothing of a running job
    assert core.db.execute("SELECT count(*) FROM chunks").fetchone()[0] == 0
    job.done_msg = make("job.done.v1", **_done("job_r", 1, 4))
    runner._spool_done(job)
    runner._chunk_ack("job_r", 1, 2)  # acknowledged after the end: dropped from the spool too
    [held] = await spool.call(Spool.load)
    assert (held.job_id, list(held.chunks), held.started) == ("job_r", [3], job.started_msg.data)
    await spool.close()


async def test_redelivered_finished_job_is_not_run_twice(tmp_path: Path) -> None:
    """An attempt whose result the relay acknowledged is answered, not rerun; one finished but
    unacknowledged is handed over as the new attempt with the same rows."""
    core = Spool(tmp_path / "spool.db")
    core.set_done("job_done", 1, "pg", "query", _done("job_done", 1, 0))
    core.finish("job_done", 1)
    for seq in range(2):
        core.put_chunk("job_held", 1, seq, _frame("job_held", 1, seq))
    core.set_done("job_held", 1, "pg", "query", _done("job_held", 1, 2))
    spool = AsyncSpool(core)
    runner = _runner(spool)
    runner.restore(await spool.call(Spool.load), await spool.call(Spool.finished_jobs))
    link = _Link()
    await runner.attach(link, connector_id="con_1", window=8, max_chunk_bytes=1 << 20)
    link.messages.clear()
    link.frames.clear()

    assign = {"source": "pg", "operation": "query", "sealed": None, "options": {}}
    await runner.on_message(make("job.assign.v1", jobId="job_done", attempt=1, **assign))
    await runner.on_message(make("job.assign.v1", jobId="job_held", attempt=2, **assign))
    for _ in range(100):
        if len(link.messages) >= 2:
            break
        await asyncio.sleep(0.01)
    dones = {m["jobId"]: m for m in link.messages if m.type == "job.done.v1"}
    assert dones["job_done"]["status"] == "failed"
    assert dones["job_done"]["error"]["code"] == "JOB_ALREADY_FINISHED"
    assert dones["job_held"]["attempt"] == 2 and dones["job_held"]["status"] == "succeeded"
    assert [(decode_chunk(f).attempt, decode_chunk(f).seq) for f in link.frames] == [(2, 0), (2, 1)]
    [spooled] = [j for j in await spool.call(Spool.load) if j.job_id == "job_held"]
    assert spooled.attempt == 2 and sorted(spooled.chunks) == [0, 1]
    await spool.close()


async def test_a_retry_of_an_acknowledged_failure_runs(tmp_path: Path) -> None:
    """The relay acknowledged attempt 1's (retryable) failure and sends attempt 2: the agent
    runs it, also after a restart, instead of refusing it as already finished."""
    core = Spool(tmp_path / "spool.db")
    core.set_done("job_r", 1, "pg", "query", _done("job_r", 1, 0))
    core.finish("job_r", 1)
    spool = AsyncSpool(core)
    runner = _runner(spool)
    runner.restore(await spool.call(Spool.load), await spool.call(Spool.finished_jobs))
    link = _Link()
    await runner.attach(link, connector_id="con_1", window=8, max_chunk_bytes=1 << 20)
    assign = {"source": "nowhere", "operation": "query", "sealed": None, "options": {}}
    await runner.on_message(make("job.assign.v1", jobId="job_r", attempt=2, **assign))
    for _ in range(500):
        if any(m.type == "job.done.v1" for m in link.messages):
            break
        await asyncio.sleep(0.01)
    [done] = [m for m in link.messages if m.type == "job.done.v1"]
    assert done["attempt"] == 2
    assert done["error"]["code"] != "JOB_ALREADY_FINISHED", done  # it ran (and met no source)
    await runner.on_message(make("job.done.ack.v1", jobId="job_r", attempt=2))
    assert await spool.call(Spool.finished_jobs) == [("job_r", 2)]
    await spool.close()


def _traced(tmp_path: Path) -> tuple[Spool, list[str]]:
    inner = Spool(tmp_path / "spool.db")
    statements: list[str] = []
    inner.db.set_trace_callback(statements.append)
    return inner, statements


async def test_writes_of_several_jobs_share_one_hand_over_and_transaction(tmp_path: Path) -> None:
    """Submitted on the loop, writes wait COALESCE seconds for company: the spool thread is
    woken once for them all and commits them together; ``call`` still sees every one."""
    inner, statements = _traced(tmp_path)
    spool = AsyncSpool(inner)
    handed: list[int] = []
    drain = spool._drain
    spool._drain = lambda: (handed.append(len(spool._pending)), drain())  # type: ignore[method-assign]
    for n in range(10):
        spool.submit(Spool.record_done, f"job_{n}", 1, "pg", "query", None, _done(f"job_{n}", 1, 1),
                     {0: _frame(f"job_{n}", 1, 0)})  # fmt: skip
    deadline = asyncio.get_running_loop().time() + 10
    while not handed:  # the timer hands them over by itself
        assert asyncio.get_running_loop().time() < deadline, "the writes were never handed over"
        await asyncio.sleep(0.005)
    jobs = await spool.call(Spool.load)
    assert handed == [10] and sorted(j.job_id for j in jobs) == [f"job_{n}" for n in range(10)]
    assert sum(1 for s in statements if s.strip().upper() == "BEGIN") == 2  # the writes' one + load's
    await spool.close()


async def test_a_call_right_after_a_submit_sees_it(tmp_path: Path) -> None:
    spool = AsyncSpool(Spool(tmp_path / "spool.db"))
    spool.COALESCE = 60.0  # the timer would hand it over far too late: the call must
    spool.submit(Spool.set_done, "job_c", 1, "pg", "query", _done("job_c", 1, 0))
    [job] = await asyncio.wait_for(spool.call(Spool.load), 10)
    assert job.job_id == "job_c"
    await spool.close()


async def test_close_writes_what_is_pending(tmp_path: Path) -> None:
    spool = AsyncSpool(Spool(tmp_path / "spool.db"))
    spool.COALESCE = 60.0
    spool.submit(Spool.set_done, "job_z", 1, "pg", "query", _done("job_z", 1, 0))
    await asyncio.wait_for(spool.close(), 10)
    assert [j.job_id for j in Spool(tmp_path / "spool.db").load()] == ["job_z"]


def test_a_submit_off_the_loop_is_handed_over_at_once(tmp_path: Path) -> None:
    spool = AsyncSpool(Spool(tmp_path / "spool.db"))
    spool.submit(Spool.set_done, "job_t", 1, "pg", "query", _done("job_t", 1, 0))
    spool._pool.submit(lambda: None).result(10)  # everything before it has run
    assert [j.job_id for j in spool.spool.load()] == ["job_t"]
    spool._pool.shutdown()


async def test_a_job_finished_within_the_batch_is_not_written_then_deleted(tmp_path: Path) -> None:
    """record_done then finish of the same job in one batch: only the finish is run (it
    deletes what the record would write); other jobs' writes are untouched, in order."""
    inner, statements = _traced(tmp_path)
    spool = AsyncSpool(inner)
    spool.submit(Spool.record_done, "job_a", 1, "pg", "query", None, _done("job_a", 1, 1),
                 {0: _frame("job_a", 1, 0)})  # fmt: skip
    spool.submit(Spool.record_done, "job_b", 1, "pg", "query", None, _done("job_b", 1, 1),
                 {0: _frame("job_b", 1, 0)})  # fmt: skip
    spool.submit(Spool.ack, "job_a", 1, 0)
    spool.submit(Spool.finish, "job_a", 1)
    [held] = await spool.call(Spool.load)
    assert held.job_id == "job_b" and list(held.chunks) == [0]
    assert await spool.call(Spool.finished_jobs) == [("job_a", 1)]
    inserts = [s for s in statements if s.upper().startswith("INSERT INTO JOBS")]
    assert len(inserts) == 1 and "job_b" in inserts[0]  # job_a's record was never written
    await spool.close()
