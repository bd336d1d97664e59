"""job.started.v1 in two steps: the job is running as soon as the agent begins it (no
columns yet); the columns follow in a second started before any chunk. An older agent's
single started with columns still works."""

from __future__ import annotations

import asyncio
import json

from tests.relay.conftest import Api, FakeAgent, relay_of, wait_until


async def test_welcome_says_started_may_come_without_columns(agent: FakeAgent) -> None:
    assert agent.welcome is not None and agent.welcome["startedWithoutColumns"] is True


async def test_started_without_columns_then_with_columns(api: Api, client: object, agent: FakeAgent) -> None:
    """The first started moves dispatched -> running with startedAt and one job_started
    event; the second records the columns, keeps startedAt, raises no second event; a reader
    that came in between gets rows keyed by the columns."""
    events = relay_of(client).events.subscribe("t1")
    job_id = await api.submit(agent.connector_id or "")
    assign = await agent.expect("job.assign.v1", jobId=job_id)
    await agent.send("job.started.v1", jobId=job_id, attempt=assign["attempt"])
    job = await wait_until(lambda: _status(api, job_id, "running"), what="running")
    started_at = job["startedAt"]
    assert started_at is not None and job["columns"] == []
    # A repeated started without columns (e.g. resent after a reconnect) changes nothing.
    await agent.send("job.started.v1", jobId=job_id, attempt=assign["attempt"])
    ndjson = asyncio.create_task(client.get(f"/api/v1/jobs/{job_id}/results", headers=api.headers()))
    csv = asyncio.create_task(client.get(f"/api/v1/jobs/{job_id}/results?format=csv", headers=api.headers()))
    await agent.start(assign, ["n", "label"])
    job = await wait_until(lambda: _columns(api, job_id), what="the columns")
    assert job["status"] == "running" and job["startedAt"] == started_at
    assert [c["name"] for c in job["columns"]] == ["n", "label"]
    await agent.chunk(assign, 0, [[1, "a"], [2, "b"]])
    await agent.done(assign, 1, 2)
    resp = await asyncio.wait_for(ndjson, 5)
    assert resp.status == 200
    lines = (await asyncio.wait_for(resp.content.read(), 5)).decode().splitlines()
    assert [json.loads(line) for line in lines] == [{"n": 1, "label": "a"}, {"n": 2, "label": "b"}]
    resp = await asyncio.wait_for(csv, 5)
    assert (await asyncio.wait_for(resp.content.read(), 5)).decode().splitlines() == ["n,label", "1,a", "2,b"]
    job = await api.job(job_id)
    assert job["status"] == "succeeded" and job["startedAt"] == started_at
    seen: list[dict] = []

    async def completed() -> bool:
        while not events.empty():
            seen.append(events.get_nowait())
        return any(e["type"] == "job_completed" and e["data"]["jobId"] == job_id for e in seen)

    await wait_until(completed, what="job_completed")
    started = [e for e in seen if e["type"] == "job_started" and e["data"]["jobId"] == job_id]
    assert len(started) == 1
    assert agent.ws is not None and not agent.ws.closed  # nothing was a protocol violation


async def test_single_started_with_columns_from_an_older_agent_still_works(api: Api, agent: FakeAgent) -> None:
    job_id = await api.submit(agent.connector_id or "")
    assign = await agent.expect("job.assign.v1", jobId=job_id)
    await agent.start(assign, ["x"])
    job = await wait_until(lambda: _status(api, job_id, "running"), what="running")
    assert job["startedAt"] is not None and [c["name"] for c in job["columns"]] == ["x"]
    await agent.chunk(assign, 0, [[1]])
    await agent.done(assign, 1, 1)
    _, text, _ = await api.call("GET", f"/jobs/{job_id}/results", expect=200)
    assert [json.loads(line) for line in text.splitlines()] == [{"x": 1}]


async def test_started_without_columns_for_a_cancelled_job_is_told_to_cancel(api: Api, agent: FakeAgent) -> None:
    job_id = await api.submit(agent.connector_id or "")
    assign = await agent.expect("job.assign.v1", jobId=job_id)
    await api.call("POST", f"/jobs/{job_id}/cancel", expect=200)
    await agent.expect("job.cancel.v1", jobId=job_id)
    await agent.send("job.started.v1", jobId=job_id, attempt=assign["attempt"])
    await agent.expect("job.cancel.v1", jobId=job_id, reason="CANCELLED")
    assert (await api.job(job_id))["status"] == "cancelled"


async def _status(api: Api, job_id: str, status: str) -> dict | None:
    job = await api.job(job_id)
    return job if job["status"] == status else None


async def _columns(api: Api, job_id: str) -> dict | None:
    job = await api.job(job_id)
    return job if job["columns"] else None
