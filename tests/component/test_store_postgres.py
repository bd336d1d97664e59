"""The same relay, end to end, on PostgreSQL: migrations, a job, its results."""

from __future__ import annotations

import json

import pytest

from relay.app import create_app

from .conftest import Api, FakeAgent


@pytest.mark.postgres
async def test_relay_runs_a_job_on_postgres(aiohttp_client: object, make_config: object, pg_database: str) -> None:
    """On a PostgreSQL store the relay migrates, registers, dispatches and serves results."""
    client = await aiohttp_client(create_app(make_config(database_url=pg_database)))
    api = Api(client)
    con = await api.new_connector()
    agent = await FakeAgent(client, con["apiKey"]).connect()
    job_id = await api.submit(con["id"], "SELECT 1", jobKey="pg-1")
    assign = await agent.expect("job.assign.v1", jobId=job_id)
    await agent.start(assign, ["n"])
    await agent.chunk(assign, 0, [[1], [2]])
    await agent.chunk(assign, 1, [[3]])
    await agent.done(assign, 2, 3)
    _, body, _ = await api.call("GET", f"/jobs/{job_id}/results?offset=1", expect=200)
    assert [json.loads(x)["n"] for x in body.splitlines()] == [2, 3]
    await agent.send("agent.logs.v1", lines=[{"timestamp": "2026-01-01T00:00:00Z", "level": "INFO", "message": "hi"}])
    await agent.heartbeat()
    await agent.close()
