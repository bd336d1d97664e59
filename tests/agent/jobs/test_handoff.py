"""The worker thread's hand-over to the event loop (agent/producer.Handoff), and what a
finished job leaves behind: items arrive in order, at most ``depth`` chunks wait (the
thread blocks, an abort frees it at once), the loop is woken only when it waits, and a
finished job's objects are freed by reference counting, not left to the garbage collector."""

from __future__ import annotations

import asyncio
import base64
import gc
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import pytest

from agent.config import SecretBox, SourceConfig
from agent.jobs.producer import Aborted, ChunkItem, Handoff
from agent.jobs.runner import Runner
from agent.sources.configured import SourceSet
from shared.crypto import generate_private_key, relay_info, seal_query
from shared.protocol import Message, decode_chunk, make

from ..conftest import DoneRecorder, until

TIMEOUT = 10.0


def _chunk(seq: int) -> tuple[str, ChunkItem]:
    return ("chunk", ChunkItem(seq, 1, 1, b"f%d" % seq))


async def test_items_keep_their_order_and_only_chunks_wait_for_room() -> None:
    loop = asyncio.get_running_loop()
    handoff = Handoff(loop, 2)
    never = threading.Event()
    put: list[str] = []

    def produce() -> None:
        for item in [("columns", ["c"]), _chunk(0), _chunk(1), _chunk(2), _chunk(3), ("end", None)]:
            handoff.put(item, never)
            put.append(item[0] if item[0] != "chunk" else f"chunk{item[1].seq}")

    t = threading.Thread(target=produce)
    t.start()
    await until(lambda: put == ["columns", "chunk0", "chunk1"] and handoff.full(), "two chunks waiting")
    await asyncio.sleep(0.05)
    assert put == ["columns", "chunk0", "chunk1"]  # the third chunk waits for room
    got = []
    while not got or got[-1] != "end":
        kind, value = await asyncio.wait_for(handoff.get(), TIMEOUT)
        got.append(kind if kind != "chunk" else f"chunk{value.seq}")
    t.join(TIMEOUT)
    assert got == ["columns", "chunk0", "chunk1", "chunk2", "chunk3", "end"]


async def test_an_abort_frees_a_thread_waiting_for_room_at_once() -> None:
    handoff = Handoff(asyncio.get_running_loop(), 1)
    aborted = threading.Event()
    outcome: list[str] = []

    def produce() -> None:
        try:
            handoff.put(_chunk(0), aborted)
            handoff.put(_chunk(1), aborted)  # blocks: no room
            outcome.append("put")
        except Aborted:
            outcome.append("aborted")

    t = threading.Thread(target=produce)
    t.start()
    await until(lambda: handoff.full() and handoff._blocked, "the thread blocked")
    t0 = time.monotonic()
    aborted.set()
    handoff.unblock()
    await until(lambda: outcome, "the thread gave up")
    assert outcome == ["aborted"] and time.monotonic() - t0 < 0.2  # not its 0.25 s poll


async def test_the_loop_is_woken_only_while_it_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    wakes: list[object] = []
    real = loop.call_soon_threadsafe

    def counting(*args: Any, **kw: Any) -> Any:
        wakes.append(args[0])
        return real(*args, **kw)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
    handoff = Handoff(loop, 4)
    never = threading.Event()

    def burst() -> None:
        for item in [("columns", []), _chunk(0), ("end", None)]:
            handoff.put(item, never)

    t = threading.Thread(target=burst)
    t.start()
    t.join(TIMEOUT)
    assert [handoff.get_nowait()[0] for _ in range(3)] == ["columns", "chunk", "end"]
    assert wakes == []  # nobody waited: no wake-up at all
    waiting = asyncio.ensure_future(handoff.get())
    await asyncio.sleep(0)
    t = threading.Thread(target=burst)
    t.start()
    assert (await asyncio.wait_for(waiting, TIMEOUT))[0] == "columns"
    t.join(TIMEOUT)
    assert len(wakes) == 1  # one wake for the three items
    assert [(await handoff.get())[0] for _ in range(2)] == ["chunk", "end"]


async def test_a_cancelled_get_loses_nothing() -> None:
    handoff = Handoff(asyncio.get_running_loop(), 2)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(handoff.get(), 0.01)
    t = threading.Thread(target=lambda: handoff.put(("end", None), threading.Event()))
    t.start()
    t.join(TIMEOUT)
    assert await asyncio.wait_for(handoff.get(), TIMEOUT) == ("end", None)


class _AckingLink:
    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.done: dict[str, str] = {}
        self.tasks: set[asyncio.Future[None]] = set()

    async def send_message(self, msg: Message) -> None:
        if msg.type == "job.done.v1":
            self.done[msg["jobId"]] = msg["status"]
            asyncio.get_running_loop().call_soon(self._ack, msg["jobId"], msg["attempt"])

    def _ack(self, job_id: str, attempt: int) -> None:
        task = asyncio.ensure_future(self.runner.on_message(make("job.done.ack.v1", jobId=job_id, attempt=attempt)))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def send_binary(self, data: bytes) -> None:
        c = decode_chunk(data)
        await self.runner.on_message(make("job.chunk.ack.v1", jobId=c.job_id, attempt=c.attempt, seq=c.seq))


async def _refs_once_running(runner: Runner, job_id: str, *, query: bool) -> list[weakref.ref[Any]]:
    job = runner.jobs[job_id]
    await until(lambda: job.producer is not None and (not query or job.stream is not None), "the job running")
    assert job.producer is not None
    refs = [weakref.ref(job), weakref.ref(job.producer), weakref.ref(job.producer.queue)]
    return [*refs, weakref.ref(job.stream)] if query else refs


async def test_a_finished_job_is_freed_without_the_garbage_collector(tmp_path: Path, sample_db: Path) -> None:
    """Reference cycles (the reader's closure holding the job, a stream's close wrapper, a
    cancelled deadline holding its stream, the begun timer) used to leave every job's
    objects to the cyclic collector: ~10 % of the agent's CPU on small jobs."""
    sources = SourceSet({"lite": SourceConfig("lite", "sqlite", f"sqlite:///{sample_db}")},
                        SecretBox(tmp_path / "secret.key"))  # fmt: skip
    key = generate_private_key()
    runner = Runner(get_source=sources.get, private_key=key, capacity=4)
    link = _AckingLink(runner)
    await runner.attach(link, connector_id="con_1", window=8, max_chunk_bytes=1 << 20)
    refs: list[weakref.ref[Any]] = []
    gc.collect()
    gc.disable()
    try:
        for n in range(6):
            job_id = f"job_{n}"
            sealed = seal_query({"sql": "SELECT id FROM items WHERE id < 3"}, key.public_key(),
                                relay_info("con_1", job_id))  # fmt: skip
            await runner.on_message(make("job.assign.v1", jobId=job_id, attempt=1, source="lite",
                                         operation="test" if n % 2 else "query",
                                         sealed=base64.b64encode(sealed).decode(),
                                         options={"timeoutSeconds": 300}))  # fmt: skip
            refs += await _refs_once_running(runner, job_id, query=n % 2 == 0)
        await until(lambda: len(link.done) == 6 and not runner.jobs, "every job done and acknowledged")
        assert set(link.done.values()) == {"succeeded"}
        await until(lambda: all(r() is None for r in refs), "the jobs' objects freed")
    finally:
        gc.enable()
        sources.close()


class _Gate:
    """A source whose connection test blocks until released (or the test ends)."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def test(self) -> dict[str, Any]:
        self.release.wait(TIMEOUT)
        return {"ok": True}


def _assign(job_id: str, **options: Any) -> Message:
    return make("job.assign.v1", jobId=job_id, attempt=1, source="erp", operation="test", sealed=None,
                options=options)  # fmt: skip


async def test_cancel_timeout_and_shutdown_stop_the_job_s_own_task() -> None:
    """The runner stops a job by cancelling its task (no watcher task per job): each stop
    ends as its status, and a cancellation from anyone else is not mistaken for one."""
    gate = _Gate()
    runner = Runner(get_source=lambda name: gate, private_key=generate_private_key(), capacity=8)
    link = DoneRecorder()
    await runner.attach(link, connector_id="con_1", window=8, max_chunk_bytes=1 << 20)
    try:
        await runner.on_message(_assign("job_c"))
        await runner.on_message(_assign("job_t", timeoutSeconds=0.2))
        await runner.on_message(_assign("job_s"))
        await runner.on_message(_assign("job_x"))
        await until(lambda: all(runner.jobs[j].on_stop for j in ("job_c", "job_s", "job_x")), "the jobs running")
        runner.cancel("job_c", 1, reason="cancelled")
        runner.cancel("job_s", 1, reason="shutdown")
        task = runner.jobs["job_x"].task
        assert task is not None
        task.cancel()  # not the runner's stop
        await until(lambda: {"job_c", "job_t", "job_s"} <= set(link.done) and task.done(), "the stops")
        assert link.done["job_c"]["status"] == "cancelled" and link.done["job_c"]["error"]["code"] == "CANCELLED"
        assert link.done["job_t"]["status"] == "timed_out" and link.done["job_t"]["error"]["code"] == "TIMEOUT"
        assert link.done["job_s"]["error"]["code"] == "AGENT_SHUTDOWN"
        assert task.cancelled() and "job_x" not in link.done
    finally:
        gate.release.set()


def test_a_closed_loop_stops_the_thread() -> None:
    """The loop is gone (the agent stopped): the thread's next item, or its wait for room,
    ends its work instead of blocking forever."""
    loop = asyncio.new_event_loop()
    handoff = Handoff(loop, 1)
    never = threading.Event()
    handoff.put(_chunk(0), never)
    outcome: list[str] = []

    def produce() -> None:
        try:
            handoff.put(_chunk(1), never)  # no room
            outcome.append("put")
        except Aborted:
            outcome.append("aborted")

    t = threading.Thread(target=produce)
    t.start()
    loop.close()
    t.join(TIMEOUT)
    assert outcome == ["aborted"]
    with pytest.raises(Aborted):
        handoff.put(("end", None), never)
