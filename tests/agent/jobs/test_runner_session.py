"""The agent's session and runner against a real WebSocket server speaking the protocol."""

from __future__ import annotations

import asyncio
import base64
import logging

from agent.logs import ShipBuffer
from shared.rows import decode_payload

from ..conftest import ROWS
from ..fake_relay import FakeRelay

SLOW_SQL = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
    "SELECT count(*) FROM c"
)  # never ends on its own: only a cancel at the database stops it


async def test_hello_then_query_streams_every_row_in_order(start_agent, api_key, sample_db):
    """The hello names sources without secrets; a query arrives as started, chunks, done."""
    async with FakeRelay(api_key, max_chunk_bytes=16 * 1024) as relay:
        await start_agent(relay.url)
        await relay.wait_for(lambda: relay.ws, 5, "the agent to connect")
        hello = relay.hellos[0]
        assert hello["sources"] == [{"name": "lite", "type": "sqlite"}]
        assert len(base64.b64decode(hello["publicKey"])) == 32
        assert hello["capacity"] == 4 and hello["heldJobs"] == []
        await relay.assign("job_1", "lite", query={"sql": "SELECT id, name, price FROM items ORDER BY id"})
        done = await relay.wait_for(lambda: relay.done("job_1"), 10, "job_1 done")
        assert done["status"] == "succeeded", done.data
        started = relay.of_type("job.started.v1", "job_1")[0]
        assert [c["name"] for c in started["columns"]] == ["id", "name", "price"]
        rows = relay.rows("job_1")
        assert len(rows) == ROWS == done["rowCount"]
        assert [r[0] for r in rows] == list(range(ROWS))
        assert rows[7][2] == "7.25"
        seqs = sorted(c.seq for c in relay.got.chunks)
        assert seqs == list(range(done["chunks"])) and done["chunks"] > 2
        assert all(len(c.payload) <= 16 * 1024 for c in relay.got.chunks)


async def test_never_more_than_window_chunks_unacknowledged(start_agent, api_key):
    """With acks held back the agent stops at `window` chunks and its reader waits."""
    async with FakeRelay(api_key, window=2, max_chunk_bytes=4096, auto_ack=False) as relay:
        agent = await start_agent(relay.url)
        await relay.wait_for(lambda: relay.ws, 5)
        await relay.assign("job_w", "lite", query={"sql": "SELECT * FROM items"})
        await relay.wait_for(lambda: len(relay.got.chunks) == 2, 5, "two chunks")
        job = agent.runner.jobs["job_w"]
        await relay.wait_for(lambda: job.producer and job.producer.queue.full(), 5, "reader blocked")
        assert len(relay.got.chunks) == 2 and len(job.unacked) == 2
        await relay.ack("job_w", 1, 0)
        await relay.wait_for(lambda: len(relay.got.chunks) == 3, 5, "a third chunk after one ack")
        await relay.wait_for(lambda: job.producer.queue.full(), 5)
        assert len(relay.got.chunks) == 3
        relay.auto_ack = True
        await relay.ack("job_w", 1, 2)
        done = await relay.wait_for(lambda: relay.done("job_w"), 10)
        await relay.send("job.done.ack.v1", jobId="job_w", attempt=1)
        assert done["status"] == "succeeded" and len(relay.rows("job_w")) == ROWS
        await relay.wait_for(lambda: "job_w" not in agent.runner.jobs, 5, "job released")


async def test_cancel_stops_the_query_at_the_database(start_agent, api_key):
    async with FakeRelay(api_key) as relay:
        agent = await start_agent(relay.url)
        await relay.wait_for(lambda: relay.ws, 5)
        await relay.assign("job_c", "lite", query={"sql": SLOW_SQL})
        await relay.wait_for(lambda: agent.runner.jobs.get("job_c") and agent.runner.jobs["job_c"].stream, 5)
        await relay.send("job.cancel.v1", jobId="job_c", attempt=1)
        done = await relay.wait_for(lambda: relay.done("job_c"), 3, "cancelled job done")
        assert done["status"] == "cancelled" and done["error"]["code"] == "CANCELLED"
        producer = agent.runner.jobs.get("job_c")
        await relay.wait_for(lambda: not (producer and producer.producer.alive), 5, "worker ended")


async def test_timeout_ends_as_timed_out_and_retryable(start_agent, api_key):
    async with FakeRelay(api_key) as relay:
        await start_agent(relay.url)
        await relay.wait_for(lambda: relay.ws, 5)
        await relay.assign("job_t", "lite", query={"sql": SLOW_SQL}, options={"timeoutSeconds": 0.5})
        done = await relay.wait_for(lambda: relay.done("job_t"), 5)
        assert done["status"] == "timed_out"
        assert done["error"]["code"] == "TIMEOUT" and done["error"]["retryable"] is True


async def test_job_failures_carry_contract_codes(start_agent, api_key):
    async with FakeRelay(api_key) as relay:
        await start_agent(relay.url)
        await relay.wait_for(lambda: relay.ws, 5)
        await relay.assign("job_d", "lite", sealed=base64.b64encode(b"not a seal" * 10).decode())
        await relay.assign("job_s", "nope", query={"sql": "SELECT 1"})
        await relay.assign("job_r", "lite", query={"sql": "DELETE FROM items"})
        await relay.assign("job_q", "lite", query={"sql": "SELECT * FROM missing_table"})
        await relay.wait_for(lambda: all(relay.done(j) for j in ("job_d", "job_s", "job_r", "job_q")), 10)
        codes = {j: relay.done(j)["error"]["code"] for j in ("job_d", "job_s", "job_r", "job_q")}
        assert codes == {
            "job_d": "DECRYPTION_FAILED",
            "job_s": "SOURCE_NOT_FOUND",
            "job_r": "WRITE_OPERATION_REJECTED",
            "job_q": "QUERY_FAILED",
        }
        assert all(relay.done(j)["status"] == "failed" for j in codes)


async def test_test_discover_and_max_rows(start_agent, api_key):
    async with FakeRelay(api_key) as relay:
        await start_agent(relay.url)
        await relay.wait_for(lambda: relay.ws, 5)
        await relay.assign("job_test", "lite", "test", query={})
        await relay.assign("job_disc", "lite", "discover", query={})
        await relay.assign("job_max", "lite", query={"sql": "SELECT id FROM items WHERE id >= :lo", "params": {"lo": 10}}, options={"maxRows": 25})
        await relay.wait_for(lambda: all(relay.done(j) for j in ("job_test", "job_disc", "job_max")), 10)
        [test_row] = relay.rows("job_test")
        assert test_row[0] is True and test_row[3] == 2
        tables = {r[1]: r for r in relay.rows("job_disc")}
        assert set(tables) == {"items", "orders"}
        assert tables["items"][5] == ["id"]
        assert tables["orders"][6][0]["referredTable"] == "items"
        assert [r[0] for r in relay.rows("job_max")] == list(range(10, 35))
        assert relay.done("job_max")["rowCount"] == 25


async def test_reconnect_resends_unacknowledged_chunks_and_done(start_agent, api_key):
    """Work in flight survives a dropped socket: held jobs are named and resent."""
    async with FakeRelay(api_key, window=8, max_chunk_bytes=64 * 1024, auto_ack=False) as relay:
        agent = await start_agent(relay.url)
        await relay.wait_for(lambda: relay.ws, 5)
        await relay.assign("job_h", "lite", query={"sql": "SELECT id FROM items"})
        await relay.wait_for(lambda: relay.done("job_h"), 10)
        first = len(relay.got.chunks)
        relay.drop()
        relay.got.chunks.clear()
        relay.got.messages.clear()
        await relay.wait_for(lambda: len(relay.hellos) == 2 and relay.ws, 10, "reconnect")
        assert relay.hellos[1]["heldJobs"] == [{"jobId": "job_h", "attempt": 1}]
        done = await relay.wait_for(lambda: relay.done("job_h"), 10, "done resent")
        assert len(relay.got.chunks) == first
        assert [r[0] for r in relay.rows("job_h")] == list(range(ROWS)) and done["rowCount"] == ROWS
        relay.auto_ack = True
        await relay.ack("job_h", 1, first - 1)
        await relay.send("job.done.ack.v1", jobId="job_h", attempt=1)
        await relay.wait_for(lambda: not agent.runner.jobs, 5, "job released after done ack")


async def test_refused_key_backs_off_at_least_60_seconds(start_agent, api_key):
    async with FakeRelay(api_key) as relay:
        relay.refuse_key = True
        agent = await start_agent(relay.url)
        await relay.wait_for(lambda: agent.session.last_delay >= 60, 5, "a 60 s backoff")
        assert relay.connections == 0


async def test_session_replaced_is_terminal(start_agent, api_key):
    async with FakeRelay(api_key) as relay:
        agent = await start_agent(relay.url)
        await relay.wait_for(lambda: relay.ws, 5)
        await relay.close(4010, "replaced")
        assert await asyncio.wait_for(agent.task, 10) == "SESSION_REPLACED"
        assert relay.connections == 1


async def test_heartbeats_logs_and_bad_frames(start_agent, api_key):
    """Heartbeats carry host figures; job logs ship with jobId; a bad frame is ignored."""
    ship = ShipBuffer()
    root = logging.getLogger()
    root.addHandler(ship)
    old = root.level
    root.setLevel(logging.INFO)
    try:
        async with FakeRelay(api_key, heartbeat=0.1) as relay:
            await start_agent(relay.url, ship=ship)
            await relay.wait_for(lambda: len(relay.of_type("agent.heartbeat.v1")) >= 2, 5)
            hb = relay.of_type("agent.heartbeat.v1")[0]
            assert 0 <= hb["cpuUsage"] <= 100 and hb["rss"] > 0 and hb["capacity"] == 4
            await relay.ws.send("{not json")
            await relay.ws.send('{"type": "job.assign.v1"}')
            await relay.assign("job_l", "lite", query={"sql": "SELECT 1 AS one"})
            await relay.wait_for(lambda: relay.done("job_l"), 5)
            lines = lambda: [ln for m in relay.of_type("agent.logs.v1") for ln in m["lines"]]  # noqa: E731
            await relay.wait_for(lambda: any(ln.get("jobId") == "job_l" for ln in lines()), 5)
            assert all(api_key not in ln["message"] for ln in lines())
            assert decode_payload(relay.got.chunks[-1].payload) == [[1]]
    finally:
        root.removeHandler(ship)
        root.setLevel(old)
