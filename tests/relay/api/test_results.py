"""Results: NDJSON, CSV, offset, streaming while the job runs, errors, TTL."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from relay.store import chunks as chunk_store
from tests.relay.conftest import Api, FakeAgent, relay_of


async def _finished_job(api: Api, agent: FakeAgent) -> str:
    job_id = await api.submit(agent.connector_id or "")
    assign = await agent.expect("job.assign.v1", jobId=job_id)
    await agent.start(assign, ["id", "name", "amount", "meta"])
    await agent.chunk(assign, 0, [[1, "a,b", "1.50", {"k": [1]}], [2, None, "2.00", None]])
    await agent.chunk(assign, 1, [[3, 'say "hi"', "3.25", None]])
    await agent.done(assign, 2, 3)
    return job_id


async def test_ndjson_rows_keep_column_order(api: Api, agent: FakeAgent) -> None:
    """Results are NDJSON, one object per row, keys in column order, values as sent."""
    job_id = await _finished_job(api, agent)
    status, text, resp = await api.call("GET", f"/jobs/{job_id}/results")
    assert status == 200 and resp.content_type == "application/x-ndjson"
    lines = text.splitlines()
    assert len(lines) == 3
    first = json.loads(lines[0])
    assert list(first) == ["id", "name", "amount", "meta"]
    assert first == {"id": 1, "name": "a,b", "amount": "1.50", "meta": {"k": [1]}}
    assert json.loads(lines[1])["name"] is None


async def test_csv_has_a_header_and_quotes_properly(api: Api, agent: FakeAgent) -> None:
    """?format=csv gives text/csv with a header row; null is empty, nested values are JSON."""
    job_id = await _finished_job(api, agent)
    status, text, resp = await api.call("GET", f"/jobs/{job_id}/results?format=csv")
    assert status == 200 and resp.content_type == "text/csv"
    rows = text.split("\r\n")
    assert rows[0] == "id,name,amount,meta"
    assert rows[1] == '1,"a,b",1.50,"{""k"":[1]}"'
    assert rows[2] == "2,,2.00,"
    assert rows[3] == '3,"say ""hi""",3.25,'


async def test_offset_starts_at_row_n_across_chunks(api: Api, agent: FakeAgent) -> None:
    """?offset=N skips N rows, whichever chunk they are in."""
    job_id = await _finished_job(api, agent)
    _, text, _ = await api.call("GET", f"/jobs/{job_id}/results?offset=1")
    assert [json.loads(x)["id"] for x in text.splitlines()] == [2, 3]
    _, text, _ = await api.call("GET", f"/jobs/{job_id}/results?offset=2")
    assert [json.loads(x)["id"] for x in text.splitlines()] == [3]
    _, text, _ = await api.call("GET", f"/jobs/{job_id}/results?offset=9")
    assert text == ""
    status, body, _ = await api.call("GET", f"/jobs/{job_id}/results?offset=-1")
    assert status == 422 and body["error"]["details"]["field"] == "offset"


async def test_results_stream_while_the_job_runs(api: Api, client: object, agent: FakeAgent) -> None:
    """A reader gets rows as chunks arrive and its response ends when the job ends."""
    job_id = await api.submit(agent.connector_id or "")
    assign = await agent.expect("job.assign.v1", jobId=job_id)
    await agent.start(assign, ["n"])
    resp = await client.get(f"/api/v1/jobs/{job_id}/results", headers=api.headers())
    assert resp.status == 200
    await agent.chunk(assign, 0, [[1], [2]])
    first = await asyncio.wait_for(resp.content.readline(), 5)
    assert json.loads(first) == {"n": 1}
    assert json.loads(await asyncio.wait_for(resp.content.readline(), 5)) == {"n": 2}
    await agent.chunk(assign, 1, [[3]])
    assert json.loads(await asyncio.wait_for(resp.content.readline(), 5)) == {"n": 3}
    await agent.done(assign, 2, 3)
    rest = await asyncio.wait_for(resp.content.read(), 5)
    assert rest == b""


async def test_reader_sees_error_when_the_attempt_is_abandoned(
    api: Api, client: object, agent: FakeAgent
) -> None:
    """A live reader of an attempt that gets requeued sees its response end in error."""
    job_id = await api.submit(agent.connector_id or "")
    assign = await agent.expect("job.assign.v1", jobId=job_id)
    await agent.start(assign, ["n"])
    await agent.chunk(assign, 0, [[1]])
    resp = await client.get(f"/api/v1/jobs/{job_id}/results", headers=api.headers())
    assert json.loads(await asyncio.wait_for(resp.content.readline(), 5)) == {"n": 1}
    await agent.close()
    again = FakeAgent(client, agent.api_key)
    again.private_key, again.public_key = agent.private_key, agent.public_key
    await again.connect()  # holds nothing: the job goes back to the queue as attempt 2
    with pytest.raises(aiohttp.ClientPayloadError):
        await asyncio.wait_for(resp.content.read(), 5)
    await again.close()


async def test_failed_before_any_row_is_409_with_the_job_error(api: Api, agent: FakeAgent) -> None:
    """A job that fails before its first row answers 409 with the job's own error."""
    job_id = await api.submit(agent.connector_id or "")
    assign = await agent.expect("job.assign.v1", jobId=job_id)
    await agent.done(assign, 0, 0, status="failed",
                     error={"code": "QUERY_FAILED", "message": "relation nope does not exist", "retryable": False})
    status, body, _ = await api.call("GET", f"/jobs/{job_id}/results")
    assert status == 409
    assert body["error"]["code"] == "QUERY_FAILED"
    assert "nope" in body["error"]["message"]


async def test_support_role_never_reads_results(api: Api, agent: FakeAgent) -> None:
    """The support role gets 403 on results even for its own tenant's job."""
    job_id = await _finished_job(api, agent)
    status, body, _ = await api.as_("support").call("GET", f"/jobs/{job_id}/results")
    assert status == 403 and body["error"]["code"] == "FORBIDDEN"
    status, _, _ = await api.as_("service").call("GET", f"/jobs/{job_id}/results")
    assert status == 200


async def test_results_past_ttl_are_gone(start_relay: object) -> None:
    """Past the result TTL the results answer 410 GONE."""
    client = await start_relay(result_ttl_seconds=0.0)
    api = Api(client)
    con = await api.new_connector()
    agent = await FakeAgent(client, con["apiKey"]).connect()
    job_id = await _finished_job(api, agent)
    status, body, _ = await api.call("GET", f"/jobs/{job_id}/results")
    assert status == 410 and body["error"]["code"] == "GONE"
    await agent.close()


async def test_chunks_are_encrypted_at_rest(api: Api, client: object, agent: FakeAgent) -> None:
    """The stored chunk bytes do not contain the row values in clear."""
    job_id = await _finished_job(api, agent)
    stored = await relay_of(client).store.run(chunk_store.read, job_id, 1, 0)
    assert b"a,b" not in stored["data"] and stored["key_id"] == "k1"


async def test_unknown_job_results_is_404(api: Api) -> None:
    """Results of a job that does not exist (or is another tenant's) are 404."""
    status, body, _ = await api.call("GET", "/jobs/job_nope/results")
    assert status == 404 and body["error"]["code"] == "NOT_FOUND"


async def test_recently_stored_chunks_are_served_from_memory_with_the_same_bytes(
    api: Api, agent: FakeAgent, client: object
) -> None:
    """A reader takes chunks this node stored lately from memory (relay/jobs/live_chunks.py); the
    bytes are those a reader gets back from the store once they are gone from it."""
    relay = relay_of(client)
    job_id = await _finished_job(api, agent)
    hits = relay.recent.hits
    _, from_memory, _ = await api.call("GET", f"/jobs/{job_id}/results")
    assert relay.recent.hits == hits + 2  # both chunks
    relay.recent.forget(job_id)
    _, from_store, _ = await api.call("GET", f"/jobs/{job_id}/results")
    assert relay.recent.hits == hits + 2
    assert from_memory == from_store and len(from_store.splitlines()) == 3


async def test_a_live_reader_asks_the_store_about_once_per_chunk(
    api: Api, agent: FakeAgent, client: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Following a running job, a reader lists only chunks it has not read and waits for
    the next wake-up instead of asking again at once: about one store call per chunk,
    not three (two listings and the job), and it still ends when the job does."""
    relay = relay_of(client)
    calls: list[str] = []
    run = relay.store.run

    async def counting(fn, *args, **kw):  # type: ignore[no-untyped-def]
        calls.append(fn.__name__)
        return await run(fn, *args, **kw)

    job_id = await api.submit(agent.connector_id or "")
    assign = await agent.expect("job.assign.v1", jobId=job_id)
    await agent.start(assign, ["n"])
    resp = await client.get(f"/api/v1/jobs/{job_id}/results", headers=api.headers())  # type: ignore[attr-defined]
    assert resp.status == 200
    monkeypatch.setattr(relay.store, "run", counting)
    chunks = 20
    for seq in range(chunks):
        await agent.chunk(assign, seq, [[seq]])
        assert json.loads(await asyncio.wait_for(resp.content.readline(), 5)) == {"n": seq}
    await agent.done(assign, chunks, chunks)
    assert await asyncio.wait_for(resp.content.read(), 5) == b""
    listed = calls.count("follow")  # the reader's only store call (besides chunks not in memory)
    assert chunks <= listed <= chunks + 3 and "get" not in calls and "seqs" not in calls, calls


async def test_a_live_reader_ends_with_the_job_without_waiting_for_its_poll(start_relay: Any) -> None:
    """The last chunk and the job's end land while the reader is busy serving the chunk
    before: the reader still ends at once, not after its poll interval (set to a minute
    here, so a wake-up it missed would fail the test), job after job."""
    client = await start_relay(result_poll_interval=60.0)
    api = Api(client)
    con = await api.new_connector()
    agent = await FakeAgent(client, con["apiKey"]).connect()
    for n in range(12):
        job_id = await api.submit(agent.connector_id or "")
        assign = await agent.expect("job.assign.v1", jobId=job_id)
        await agent.start(assign, ["n"])
        resp = await client.get(f"/api/v1/jobs/{job_id}/results", headers=api.headers())
        await agent.chunk(assign, 0, [[0]])
        assert json.loads(await asyncio.wait_for(resp.content.readline(), 5)) == {"n": 0}
        await agent.chunk(assign, 1, [[1]], ack=False)
        await agent.done(assign, 2, 2, ack=False)
        rest = await asyncio.wait_for(resp.content.read(), 5)  # the poll would take 60 s
        assert rest == b'{"n":1}\n', n
    await agent.close()
