"""Leases, retries and acknowledgements at the relay, driven frame by frame."""

from __future__ import annotations

import time

from shared import protocol
from shared.rows import encode_rows
from tests.relay.conftest import Api, FakeAgent, wait_until


async def _sync(agent: FakeAgent) -> None:
    """Round-trip one frame: everything the relay sent before its answer is in the inbox."""
    await agent.send_raw("not json")
    await agent.expect("relay.error.v1")


async def test_silent_agent_loses_its_lease_and_the_job_goes_to_the_next_attempt(start_relay: object) -> None:
    """An agent that stops talking mid-job: after three heartbeat intervals its lease
    lapses, the job is queued again and the next agent gets attempt 2."""
    client = await start_relay(heartbeat_interval=0.2, sweep_interval=0.05)  # type: ignore[operator]
    api = Api(client)
    con = await api.new_connector()
    agent = await FakeAgent(client, con["apiKey"]).connect()
    job_id = await api.submit(con["id"])
    assign = await agent.expect("job.assign.v1", jobId=job_id)
    await agent.start(assign, ["x"])
    await agent.chunk(assign, 0, [[1]])

    async def queued() -> dict | None:
        job = await api.job(job_id)
        return job if job["status"] == "queued" else None

    await wait_until(queued, what="the lapsed lease to requeue the job")
    again = FakeAgent(client, con["apiKey"])
    again.private_key, again.public_key = agent.private_key, agent.public_key
    await again.connect(held=[{"jobId": job_id, "attempt": 1}])
    cancel = await again.expect("job.cancel.v1", jobId=job_id)
    assert cancel["attempt"] == 1 and cancel["reason"] == "SUPERSEDED"
    second = await again.expect("job.assign.v1", jobId=job_id)
    assert second["attempt"] == 2
    await again.start(second, ["x"])
    await again.chunk(second, 0, [[2]])
    await again.done(second, 1, 1)
    job = await api.job(job_id)
    assert job["status"] == "succeeded" and job["attempts"] == 2 and job["rowCount"] == 1
    await again.close()


async def test_retryable_failure_is_retried_after_its_delay_then_fails_with_the_last_error(
    api: Api, agent: FakeAgent
) -> None:
    """A retryable failure comes back as the next attempt no sooner than retryDelaySeconds;
    past retryLimit the job fails with the last error, still marked retryable."""
    job_id = await api.submit(agent.connector_id or "", retryLimit=1, retryDelaySeconds=0.5)
    error = {"code": "SOURCE_UNAVAILABLE", "message": "the database is down", "retryable": True}
    first = await agent.expect("job.assign.v1", jobId=job_id)
    await agent.done(first, 0, 0, status="failed", error=error)
    t0 = time.monotonic()
    second = await agent.expect("job.assign.v1", jobId=job_id)
    assert second["attempt"] == 2 and time.monotonic() - t0 >= 0.45
    await agent.done(second, 0, 0, status="failed", error=error)
    job = await api.job(job_id)
    assert job["status"] == "failed" and job["attempts"] == 2 and job["error"] == error


async def test_non_retryable_failure_fails_at_once(api: Api, agent: FakeAgent) -> None:
    job_id = await api.submit(agent.connector_id or "", retryLimit=3)
    assign = await agent.expect("job.assign.v1", jobId=job_id)
    error = {"code": "QUERY_FAILED", "message": "no such table", "retryable": False}
    await agent.done(assign, 0, 0, status="failed", error=error)
    job = await api.job(job_id)
    assert job["status"] == "failed" and job["attempts"] == 1


async def test_agent_shutdown_failure_is_not_given_back_to_the_draining_agent(api: Api, agent: FakeAgent) -> None:
    """AGENT_SHUTDOWN means the agent is going away: the retry waits for the next one."""
    job_id = await api.submit(agent.connector_id or "", retryDelaySeconds=0)
    assign = await agent.expect("job.assign.v1", jobId=job_id)
    error = {"code": "AGENT_SHUTDOWN", "message": "stopping", "retryable": True}
    await agent.done(assign, 0, 0, status="failed", error=error)

    async def queued() -> bool:
        return (await api.job(job_id))["status"] == "queued"

    await wait_until(queued, what="the job back in the queue")
    await _sync(agent)
    assert not [m for m in agent.inbox if m.type == "job.assign.v1"]


async def test_chunk_acks_are_cumulative_and_never_cover_a_gap(api: Api, agent: FakeAgent) -> None:
    """A chunk after a gap is stored but not acknowledged; the missing one acks both."""
    job_id = await api.submit(agent.connector_id or "")
    assign = await agent.expect("job.assign.v1", jobId=job_id)
    await agent.start(assign, ["x"])
    frame = protocol.encode_chunk(protocol.Chunk(job_id, 1, 1, 1, encode_rows([[2]])))
    await agent.send_raw(frame)
    await agent.chunk(assign, 0, [[1]], ack=False)
    ack = await agent.expect("job.chunk.ack.v1", jobId=job_id)
    assert ack["seq"] == 1  # one ack for 0 and 1, none for 1 alone
    await agent.done(assign, 2, 2)


async def test_capacity_is_never_exceeded(start_relay: object) -> None:
    client = await start_relay()  # type: ignore[operator]
    api = Api(client)
    con = await api.new_connector()
    agent = await FakeAgent(client, con["apiKey"], capacity=2).connect()
    ids = [await api.submit(con["id"]) for _ in range(5)]
    first = [await agent.expect("job.assign.v1") for _ in range(2)]
    await _sync(agent)
    assert not [m for m in agent.inbox if m.type == "job.assign.v1"]
    await agent.done(first[0], 0, 0)
    third = await agent.expect("job.assign.v1")
    assert third["jobId"] in ids and third["jobId"] not in {a["jobId"] for a in first}
    await agent.close()
