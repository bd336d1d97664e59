"""A hostile but authenticated agent cannot stall or bloat the relay (issue 13, class 5).

The relay runs in process (its app on a real socket) and the hostile agent speaks the real
protocol over a real WebSocket: decompression bombs for a job it does not hold (refused
from the chunk header, the payload never read), bombs for its own job (refused by the
size and ratio bounds), log floods (throttled, with one summary line), while ``/health``
answers and an honest agent's jobs complete. Memory is measured with tracemalloc.
"""

from __future__ import annotations

import asyncio
import functools
import time
import tracemalloc
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import zstandard

from relay.config import RelayConfig
from relay.ids_and_times import parse_iso
from shared import protocol as p
from tests.relay.conftest import TIMEOUT, Api, FakeAgent, relay_of, wait_until

BOMB_SIZE = 64 << 20
MEMORY_GROWTH_MAX = 100 << 20


@functools.cache
def _zstd(size: int, *, record: bool = True) -> bytes:
    return zstandard.ZstdCompressor(level=1, write_content_size=record).compress(b"\0" * size)


@functools.cache
def _zlib(size: int) -> bytes:
    return zlib.compress(b"\0" * size, 9)


def _lying_size(frame: bytes, size: int) -> bytes:
    """A zstd frame whose header records ``size`` (4-byte field) instead of the truth."""
    descriptor = frame[4]
    assert descriptor >> 6 == 2 and not descriptor & 0x20, "expected a 4-byte content size and a window byte"
    return frame[:6] + size.to_bytes(4, "little") + frame[10:]


def _frame(job_id: str, attempt: int, seq: int, payload: bytes, flags: int, rows: int = 1) -> bytes:
    header = orjson.dumps({"jobId": job_id, "attempt": attempt, "seq": seq, "rows": rows})
    return bytes([p.FRAME_CHUNK, flags]) + len(header).to_bytes(2, "big") + header + payload


def _bombs(job_id: str, attempt: int) -> list[bytes]:
    """~2 KB to ~65 KB frames that would expand to 64 MiB each."""
    return [
        _frame(job_id, attempt, 0, _zstd(BOMB_SIZE), p.FLAG_ZSTD),
        _frame(job_id, attempt, 1, _zlib(BOMB_SIZE), p.FLAG_ZLIB),
        _frame(job_id, attempt, 2, _lying_size(_zstd(BOMB_SIZE), 1 << 20), p.FLAG_ZSTD),
        _frame(job_id, attempt, 3, _zstd(BOMB_SIZE, record=False), p.FLAG_ZSTD),
    ]


def _metric(client: Any, name: str, **labels: str) -> float:
    value = relay_of(client).metrics.registry.get_sample_value(name, labels)
    return value or 0.0


async def _errors_until_closed(agent: FakeAgent) -> list[str]:
    """The relay.error.v1 messages the agent gets until the relay closes the socket."""
    messages = []
    deadline = time.monotonic() + TIMEOUT * 4
    assert agent.ws is not None
    while not agent.ws.closed:
        assert time.monotonic() < deadline, "the relay did not close the hostile socket"
        msg = await agent.recv(max(0.1, deadline - time.monotonic()))
        if msg is not None and msg.type == "relay.error.v1":
            messages.append(msg["message"])
    return messages


async def _measure(coro: Awaitable[Any]) -> tuple[Any, int]:
    """Run ``coro``; (its result, the peak of traced memory above the start)."""
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        result = await coro
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak - start


async def _hostile(client: Any, api: Api, name: str = "hostile") -> FakeAgent:
    con = await api.new_connector(name)
    return await FakeAgent(client, con["apiKey"], capacity=1).connect()


async def test_bombs_for_a_foreign_job_are_refused_without_reading_the_payload(
    client: Any, api: Api, agent: FakeAgent
) -> None:
    """(a) Frames for a job leased to another connector are refused from their header: the
    relay never decompresses them (no payload counted), memory stays bounded, the socket
    is closed with 4008 after the violation limit, and the job's owner is unaffected."""
    job_id = await api.submit(agent.connector_id or "")
    assign = await agent.expect("job.assign.v1", jobId=job_id)
    bombs = _bombs(job_id, assign["attempt"])
    decoded_before = _metric(client, "mini_relay_chunk_payloads_decoded_total")

    async def attack() -> list[str]:
        hostile = await _hostile(client, api)
        for i in range(12):
            await hostile.send_raw(bombs[i % len(bombs)])
        return await _errors_until_closed(hostile)

    errors, growth = await _measure(attack())
    assert errors and all("not leased to this connector" in e for e in errors), errors
    assert _metric(client, "mini_relay_agent_frames_refused_total", reason="foreign") >= 10
    assert _metric(client, "mini_relay_chunk_payloads_decoded_total") == decoded_before
    assert growth < MEMORY_GROWTH_MAX, f"traced memory grew {growth >> 20} MiB"
    await agent.start(assign, ["x"])
    await agent.chunk(assign, 0, [[1]])
    await agent.done(assign, 1, 1)
    assert (await api.job(job_id))["status"] == "succeeded"


async def test_bombs_for_its_own_job_are_refused_by_the_bounds(client: Any, api: Api) -> None:
    """(b) The same bombs for the agent's own job: each is refused with a protocol error
    saying which bound (size, ratio, a zstd size that lies or is missing), nothing is
    stored, memory stays bounded, and the socket is closed (4008) when it persists."""
    hostile = await _hostile(client, api)
    job_id = await api.submit(hostile.connector_id or "")
    assign = await hostile.expect("job.assign.v1", jobId=job_id)
    await hostile.start(assign, ["x"])
    ratio_bomb = _frame(job_id, 1, 4, _zstd(p.MAX_CHUNK_PAYLOAD), p.FLAG_ZSTD)
    frames = [*_bombs(job_id, assign["attempt"]), ratio_bomb]

    async def attack() -> list[str]:
        for i in range(12):
            await hostile.send_raw(frames[i % len(frames)])
        return await _errors_until_closed(hostile)

    errors, growth = await _measure(attack())
    assert len(errors) >= 10, errors
    assert any("past the limit of 16 MiB" in e for e in errors), errors
    assert any("256 times" in e for e in errors), errors
    assert any("zstd" in e for e in errors), errors  # the liar, and the frame without a size
    assert hostile.close_code == p.CLOSE_CODES["PROTOCOL_VIOLATION"]
    assert growth < MEMORY_GROWTH_MAX, f"traced memory grew {growth >> 20} MiB"
    assert _metric(client, "mini_relay_agent_frames_refused_total", reason="payload") >= 2
    assert relay_of(client).recent.size == 0  # no chunk of it was stored


def _lines(n: int, message: str = "flood", **extra: Any) -> list[dict[str, Any]]:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return [{"timestamp": stamp, "level": "INFO", "message": message, **extra} for _ in range(n)]


async def _logs(api: Api, cid: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = ""
    while True:
        _, body, _ = await api.call("GET", f"/connectors/{cid}/logs?limit=1000{cursor}", expect=200)
        out += body["data"]["logs"]
        if not body["data"]["nextCursor"]:
            return out
        cursor = f"&cursor={body['data']['nextCursor']}"


async def test_a_log_flood_is_throttled_with_one_summary_line(start_relay: Callable[..., Any]) -> None:
    """(c) 5,000 lines in a burst against a budget of 100: the rest are dropped, counted,
    and said in a summary line in the connector's log; a malformed batch is still refused."""
    client = await start_relay(agent_log_lines_per_second=10.0, agent_log_burst_seconds=10.0)
    api = Api(client)
    hostile = await _hostile(client, api)
    for _ in range(10):
        await hostile.send("agent.logs.v1", lines=_lines(500))
    # Past the budget lines are dropped unread, but a malformed batch is still an error.
    await hostile.send_raw(orjson.dumps({"type": "agent.logs.v1", "lines": [{"level": "NOPE"}] * 50}).decode())
    assert (await hostile.expect("relay.error.v1"))["code"] == "PROTOCOL_ERROR"
    await hostile.close()
    cid = hostile.connector_id or ""

    async def summarised() -> list[dict[str, Any]]:
        logs = await _logs(api, cid)
        dropped = [x for x in logs if x["logger"] == "relay" and "log lines dropped" in x["message"]]
        return logs if sum(int(x["message"].split()[0]) for x in dropped) + len(logs) - len(dropped) == 5050 else []

    logs = await wait_until(summarised, what="every line stored or counted in a summary")
    kept = [x for x in logs if x["message"] == "flood"]
    assert 100 <= len(kept) < 200, len(kept)  # the burst, and what the rate refilled meanwhile
    # The malformed batch's 50 lines were past the budget too: counted among the dropped.
    assert _metric(client, "mini_relay_agent_log_lines_dropped_total") == 5050 - len(kept)


async def test_log_lines_are_cut_and_far_future_times_clamped(api: Api, agent: FakeAgent) -> None:
    """A long line is cut; a timestamp far in the future is clamped to the relay's receive
    time (kept as receivedAt), so it cannot sort first or outlive retention."""
    cid = agent.connector_id or ""
    await agent.send("agent.logs.v1", lines=[
        {"timestamp": "2999-01-01T00:00:00Z", "level": "INFO", "message": "from the future"},
        {"timestamp": "2026-01-01T00:00:00Z", "level": "INFO", "message": "x" * 15_000},
    ])  # fmt: skip

    async def stored() -> list[dict[str, Any]]:
        logs = await _logs(api, cid)
        return logs if len(logs) == 2 else []

    future, long = await wait_until(stored, what="two lines stored")
    skew = parse_iso(future["timestamp"]) - parse_iso(future["receivedAt"])
    assert skew == RelayConfig.agent_clock_skew  # clamped: at most that far ahead of receipt
    assert long["timestamp"].startswith("2026-01-01") and long["receivedAt"] > long["timestamp"]
    assert len(long["message"]) < 9000 and long["message"].endswith("[cut by the relay]")


async def test_memory_budget_pauses_reading_and_loses_nothing(start_relay: Callable[..., Any]) -> None:
    """An agent sending large chunks faster than they are stored: past its memory budget
    the relay stops reading its socket, and every chunk is still stored and acked."""
    client = await start_relay(agent_memory_budget=4 << 20)
    api = Api(client)
    honest = await _hostile(client, api, "big")
    job_id = await api.submit(honest.connector_id or "")
    assign = await honest.expect("job.assign.v1", jobId=job_id)
    await honest.start(assign, ["x"])
    row = ["y" * 1000]
    rows = [row] * 1000  # ~1 MB a chunk
    for seq in range(20):
        await honest.chunk(assign, seq, rows, ack=False)
    await honest.expect("job.chunk.ack.v1", jobId=job_id, seq=19, timeout=TIMEOUT * 4)
    await honest.done(assign, 20, 20_000)
    assert (await api.job(job_id))["status"] == "succeeded"
    assert _metric(client, "mini_relay_agent_reads_paused_total") >= 1


async def test_health_and_an_honest_agent_carry_on_during_the_attacks(start_relay: Callable[..., Any]) -> None:
    """(d) While a hostile agent sends foreign bombs, bombs for its own job and log floods
    (reconnecting after each close), /health keeps answering and an honest agent's jobs
    complete, each within a generous deadline."""
    # No pause after a 4008 close here: the attacker reconnects at once, the harder case.
    client = await start_relay(agent_log_lines_per_second=50.0, agent_violation_penalty=0.0)
    api = Api(client)
    con = await api.new_connector("honest")
    honest = await FakeAgent(client, con["apiKey"]).connect()
    hostile_con = await api.new_connector("hostile")
    stop = asyncio.Event()
    foreign_job = await api.submit(honest.connector_id or "")
    foreign_assign = await honest.expect("job.assign.v1", jobId=foreign_job)
    rounds = 0

    async def attacker() -> None:
        nonlocal rounds
        while not stop.is_set():
            hostile = await FakeAgent(client, hostile_con["apiKey"], capacity=1).connect()
            await api.submit(hostile.connector_id or "")
            assign = await hostile.expect("job.assign.v1")  # this one, or one given back before
            own = assign["jobId"]
            frames = [*_bombs(foreign_job, foreign_assign["attempt"]), *_bombs(own, assign["attempt"])]
            for i, frame in enumerate(frames * 2):
                if i % 3 == 0:
                    await hostile.send("agent.logs.v1", lines=_lines(1000, "flood " * 100))
                await hostile.send_raw(frame)
            await _errors_until_closed(hostile)
            rounds += 1

    async def health() -> list[float]:
        took = []
        while not stop.is_set():
            started = time.monotonic()
            resp = await asyncio.wait_for(client.get("/health"), TIMEOUT)
            assert resp.status == 200, await resp.text()
            took.append(time.monotonic() - started)
        return took

    async def honest_jobs() -> int:
        for n in range(5):
            job_id = await api.submit(honest.connector_id or "")
            assign = await honest.expect("job.assign.v1", jobId=job_id, timeout=TIMEOUT * 2)
            await honest.start(assign, ["n"])
            await honest.chunk(assign, 0, [[n]])
            await honest.done(assign, 1, 1)
            assert (await api.job(job_id))["status"] == "succeeded"
        await wait_until(lambda: _true(rounds >= 2), TIMEOUT * 6, "two rounds of attacks")
        return 5

    async def _true(value: bool) -> bool:
        return value

    attack, probe = asyncio.create_task(attacker()), asyncio.create_task(health())
    try:
        done, growth = await _measure(asyncio.wait_for(honest_jobs(), TIMEOUT * 12))
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(attack, probe, return_exceptions=True), TIMEOUT * 4)
    assert not attack.done() or attack.exception() is None, attack.exception()
    took = probe.result()
    assert done == 5 and rounds >= 2 and took
    assert max(took) < TIMEOUT, f"/health took up to {max(took):.2f} s"
    assert growth < MEMORY_GROWTH_MAX * 2, f"traced memory grew {growth >> 20} MiB"
    assert _metric(client, "mini_relay_agent_log_lines_dropped_total") > 0


async def test_late_frames_of_its_own_jobs_are_dropped_quietly(client: Any, api: Api, agent: FakeAgent) -> None:
    """Not every frame for a job the session does not hold is hostile: a resend of a job
    that ended (after a reconnect, held at hello) is dropped without a violation, and its
    done is still acknowledged."""
    job_id = await api.submit(agent.connector_id or "")
    assign = await agent.expect("job.assign.v1", jobId=job_id)
    await agent.start(assign, ["x"])
    await agent.chunk(assign, 0, [[1]])
    await agent.done(assign, 1, 1)
    late_before = _metric(client, "mini_relay_agent_frames_refused_total", reason="late")
    await agent.chunk(assign, 0, [[1]], ack=False)  # the same session, after the end
    await agent.close()
    again = await FakeAgent(client, agent.api_key).connect(held=[{"jobId": job_id, "attempt": 1}])
    await again.chunk(assign, 0, [[1]], ack=False)
    await again.done(assign, 1, 1)  # acknowledged: the agent may forget the job
    assert _metric(client, "mini_relay_agent_frames_refused_total", reason="late") == late_before + 2
    assert not [m for m in again.inbox if m.type == "relay.error.v1"], again.inbox
    assert (await api.job(job_id))["status"] == "succeeded"
    await again.close()


async def test_a_key_closed_for_violations_waits_before_it_may_reconnect(start_relay: Callable[..., Any]) -> None:
    """After a 4008 close the key's handshakes are answered 429 (Retry-After), before any
    store work, for as long as an honest agent would wait anyway; then it may come back."""
    client = await start_relay(agent_violation_penalty=1.0)
    api = Api(client)
    hostile = await _hostile(client, api)
    for _ in range(10):
        await hostile.send_raw("not json")
    await _errors_until_closed(hostile)
    assert hostile.close_code == p.CLOSE_CODES["PROTOCOL_VIOLATION"]
    resp = await client.get("/api/v1/agent/connect", headers={"Authorization": f"Bearer {hostile.api_key}"})
    body = await resp.json()
    assert resp.status == 429 and body["error"]["code"] == "RATE_LIMITED", body
    assert int(resp.headers["Retry-After"]) >= 1

    async def back() -> bool:
        r = await client.get("/api/v1/agent/connect", headers={"Authorization": f"Bearer {hostile.api_key}"})
        return r.status != 429

    await wait_until(back, TIMEOUT, "the penalty to end")
    again = await FakeAgent(client, hostile.api_key).connect()
    assert again.welcome is not None
    await again.close()


async def test_large_payloads_are_worked_on_off_the_event_loop(
    client: Any, api: Api, agent: FakeAgent, monkeypatch: Any
) -> None:
    """A chunk's payload work runs in the relay's chunk threads, not on the loop's thread,
    unless it is small enough that the hop would cost more."""
    import threading

    from relay.agents import guard

    threads: list[str] = []
    real = guard.prepare

    def spy(*args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(guard, "prepare", spy)
    job_id = await api.submit(agent.connector_id or "")
    assign = await agent.expect("job.assign.v1", jobId=job_id)
    await agent.start(assign, ["x"])
    await agent.chunk(assign, 0, [["y" * 1000]] * 300)  # ~300 KB
    await agent.chunk(assign, 1, [[1]])
    await agent.done(assign, 2, 301)
    assert threads[0].startswith("relay-chunk"), threads
    assert threads[1] == threading.current_thread().name, threads  # the loop's own thread
