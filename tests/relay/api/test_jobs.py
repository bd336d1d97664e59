"""Jobs: validation, sealing, jobKey dedupe, dispatch order, cancel."""

from __future__ import annotations

import pytest

from relay.store import jobs as job_store
from shared.crypto import seal_query_for_platform
from tests.relay.conftest import Api, FakeAgent, relay_of, wait_until


def _body(cid: str, **over: object) -> dict:
    body = {"connectorId": cid, "source": "erp", "operation": "query",
            "query": {"sql": "SELECT id FROM t WHERE id > :m", "params": {"m": 5}}}
    body.update(over)
    return body


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"connectorId": None}, "connectorId"),
        ({"source": ""}, "source"),
        ({"operation": "delete"}, "operation"),
        ({"query": None}, "query"),
        ({"query": {"sql": ""}}, "query.sql"),
        ({"query": {"sql": "SELECT 1", "params": [1]}}, "query.params"),
        ({"query": {"nothing": 1}}, "query"),
        ({"options": {"timeoutSeconds": 0}}, "options.timeoutSeconds"),
        ({"options": {"priority": "high"}}, "options.priority"),
        ({"options": {"maxRows": -1}}, "options.maxRows"),
        ({"options": {"jobKey": ""}}, "options.jobKey"),
        ({"options": {"bogus": 1}}, "options.bogus"),
        ({"options": []}, "options"),
        ({"sealedQuery": "not base64!!"}, "sealedQuery"),
        ({"extra": 1}, "extra"),
    ],
)
async def test_job_fields_are_validated_with_422_naming_the_field(
    api: Api, agent: FakeAgent, change: dict, field: str
) -> None:
    """Every bad field of POST /jobs is a 422 whose details name that field."""
    body = _body(agent.connector_id or "")
    body.update(change)
    if body.get("connectorId") is None:
        body.pop("connectorId")
    if "sealedQuery" in change:
        body.pop("query")
    status, out, _ = await api.call("POST", "/jobs", json=body)
    assert status == 422, out
    assert out["error"]["code"] == "VALIDATION_ERROR"
    assert out["error"]["details"]["field"] == field


async def test_unknown_pending_and_revoked_connectors_are_refused(api: Api, client: object) -> None:
    """Unknown connector 404; never connected 409 CONNECTOR_PENDING; revoked 409 CONNECTOR_REVOKED."""
    status, out, _ = await api.call("POST", "/jobs", json=_body("con_00000000000000000000"))
    assert status == 404 and out["error"]["code"] == "NOT_FOUND"
    con = await api.new_connector()
    status, out, _ = await api.call("POST", "/jobs", json=_body(con["id"]))
    assert status == 409 and out["error"]["code"] == "CONNECTOR_PENDING"
    agent = await FakeAgent(client, con["apiKey"]).connect()
    await agent.close()
    await api.call("DELETE", f"/connectors/{con['id']}", expect=204)
    status, out, _ = await api.call("POST", "/jobs", json=_body(con["id"]))
    assert status == 409 and out["error"]["code"] == "CONNECTOR_REVOKED"


async def test_query_is_sealed_on_receipt_and_only_the_agent_can_open_it(
    api: Api, client: object, agent: FakeAgent
) -> None:
    """The store holds sealed bytes, not the SQL; the agent opens them with its private key."""
    sql = "SELECT secret_column FROM payroll"
    status, out, _ = await api.call("POST", "/jobs", json=_body(agent.connector_id or "", query={"sql": sql, "params": {}}))
    assert status == 202 and out["data"]["status"] == "queued" and out["data"]["queuedAt"].endswith("Z")
    job_id = out["data"]["id"]
    row = await relay_of(client).store.run(job_store.get, None, job_id)
    assert b"secret_column" not in row["sealed"] and b"payroll" not in row["sealed"]
    assign = await agent.expect("job.assign.v1", jobId=job_id)
    assert assign["attempt"] == 1 and assign["operation"] == "query" and assign["source"] == "erp"
    assert agent.open(assign) == {"sql": sql, "params": {}}


async def test_platform_sealed_query_is_passed_through_opaque(api: Api, agent: FakeAgent) -> None:
    """A sealedQuery reaches the agent byte for byte and opens with the platform info."""
    cid = agent.connector_id or ""
    sealed = seal_query_for_platform({"sql": "SELECT 42"}, agent.public_key, cid)
    body = _body(cid, sealedQuery=sealed)
    body.pop("query")
    _, out, _ = await api.call("POST", "/jobs", json=body, expect=202)
    assign = await agent.expect("job.assign.v1", jobId=out["data"]["id"])
    assert assign["sealed"] == sealed
    assert agent.open(assign) == {"sql": "SELECT 42"}


async def test_same_job_key_returns_the_existing_job(api: Api, agent: FakeAgent) -> None:
    """A second POST with the same jobKey in the tenant answers 200 with the first job."""
    body = _body(agent.connector_id or "", options={"jobKey": "nightly-1"})
    _, first, _ = await api.call("POST", "/jobs", json=body, expect=202)
    _, second, _ = await api.call("POST", "/jobs", json=body, expect=200)
    assert second["data"]["id"] == first["data"]["id"]
    assert second["data"]["jobKey"] == "nightly-1"
    _, listing, _ = await api.call("GET", f"/jobs?connectorId={agent.connector_id}", expect=200)
    assert listing["meta"]["total"] == 1


async def test_dispatch_respects_capacity_then_priority(api: Api, client: object) -> None:
    """Never more in flight than capacity; queued jobs go out by priority, then FIFO."""
    con = await api.new_connector()
    agent = await FakeAgent(client, con["apiKey"], capacity=1).connect()
    await agent.close()
    await wait_until(lambda: _status(api, con["id"], "offline"), what="offline")
    low = await api.submit(con["id"], priority=0)
    high = await api.submit(con["id"], priority=5)
    low2 = await api.submit(con["id"], priority=0)
    agent = await FakeAgent(client, con["apiKey"], capacity=1).connect()
    first = await agent.expect("job.assign.v1")
    assert first["jobId"] == high
    assert not [m for m in agent.inbox if m.type == "job.assign.v1"]
    await agent.done(first, 0, 0)
    second = await agent.expect("job.assign.v1")
    assert second["jobId"] == low
    await agent.done(second, 0, 0)
    third = await agent.expect("job.assign.v1")
    assert third["jobId"] == low2
    await agent.close()


async def _status(api: Api, cid: str, status: str) -> bool:
    return (await api.connector(cid))["status"] == status


async def test_cancel_queued_job_at_once_and_finished_job_is_409(api: Api, agent: FakeAgent) -> None:
    """Cancelling a queued job answers cancelled; a finished job answers 409 JOB_ALREADY_FINISHED."""
    cid = agent.connector_id or ""
    running = await api.submit(cid)
    assign = await agent.expect("job.assign.v1", jobId=running)
    await agent.start(assign, ["x"])
    await agent.chunk(assign, 0, [[1]])
    await agent.done(assign, 1, 1)
    status, out, _ = await api.call("POST", f"/jobs/{running}/cancel")
    assert status == 409 and out["error"]["code"] == "JOB_ALREADY_FINISHED"

    # With the agent gone, a new job stays queued.
    await agent.close()
    await wait_until(lambda: _status(api, cid, "offline"), what="offline")
    job_id = await api.submit(cid)
    _, out, _ = await api.call("POST", f"/jobs/{job_id}/cancel", expect=200)
    assert out["data"] == {"id": job_id, "status": "cancelled", "cancelledAt": out["data"]["cancelledAt"]}
    assert out["data"]["cancelledAt"].endswith("Z")
    job = await api.job(job_id)
    assert job["status"] == "cancelled" and job["error"]["code"] == "CANCELLED"


async def test_cancel_running_job_sends_job_cancel_to_the_agent(api: Api, agent: FakeAgent) -> None:
    """A running job is cancelled at once and the agent gets job.cancel.v1 for it."""
    job_id = await api.submit(agent.connector_id or "")
    assign = await agent.expect("job.assign.v1", jobId=job_id)
    await agent.start(assign, ["x"])
    await wait_until(lambda: _job_status(api, job_id, "running"), what="running")
    _, out, _ = await api.call("POST", f"/jobs/{job_id}/cancel", expect=200)
    assert out["data"]["status"] == "cancelled"
    cancel = await agent.expect("job.cancel.v1", jobId=job_id)
    assert cancel["attempt"] == 1
    await agent.done(assign, 0, 0, status="cancelled",
                     error={"code": "CANCELLED", "message": "cancelled", "retryable": False})
    assert (await api.job(job_id))["status"] == "cancelled"


async def _job_status(api: Api, job_id: str, status: str) -> bool:
    return (await api.job(job_id))["status"] == status


async def test_job_metadata_has_every_contract_field(api: Api, agent: FakeAgent) -> None:
    """GET /jobs/{id} carries every field the contract lists, with the agent's report."""
    job_id = await api.submit(agent.connector_id or "", priority=3)
    assign = await agent.expect("job.assign.v1", jobId=job_id)
    await agent.start(assign, ["id", "name"])
    await agent.chunk(assign, 0, [[1, "a"], [2, "b"]])
    await agent.done(assign, 1, 2)
    job = await api.job(job_id)
    assert set(job) >= {"id", "connectorId", "source", "operation", "status", "attempts", "priority",
                        "queuedAt", "dispatchedAt", "startedAt", "completedAt", "durationMs",
                        "rowCount", "byteCount", "columns", "error", "jobKey"}
    assert job["status"] == "succeeded" and job["rowCount"] == 2 and job["attempts"] == 1
    assert job["priority"] == 3 and job["error"] is None
    assert [c["name"] for c in job["columns"]] == ["id", "name"]
    assert isinstance(job["durationMs"], int)
    _, listing, _ = await api.call("GET", "/jobs?status=succeeded&page=1&limit=5", expect=200)
    assert listing["meta"] == {"page": 1, "limit": 5, "total": 1}


async def test_reconnect_without_held_job_requeues_it_as_a_new_attempt(
    api: Api, client: object, agent: FakeAgent
) -> None:
    """A restarted agent that no longer holds its job gets it again as attempt 2."""
    job_id = await api.submit(agent.connector_id or "")
    assign = await agent.expect("job.assign.v1", jobId=job_id)
    await agent.start(assign, ["x"])
    await agent.close()
    again = FakeAgent(client, agent.api_key)
    again.private_key, again.public_key = agent.private_key, agent.public_key
    await again.connect()
    second = await again.expect("job.assign.v1", jobId=job_id)
    assert second["attempt"] == 2
    await again.close()


async def test_reconnect_listing_held_job_keeps_it(api: Api, client: object, agent: FakeAgent) -> None:
    """An agent that lists the job in heldJobs keeps it: no new attempt, chunks still accepted."""
    job_id = await api.submit(agent.connector_id or "")
    assign = await agent.expect("job.assign.v1", jobId=job_id)
    await agent.start(assign, ["x"])
    await agent.chunk(assign, 0, [[1]])
    await agent.close()
    again = FakeAgent(client, agent.api_key)
    again.private_key, again.public_key = agent.private_key, agent.public_key
    await again.connect(held=[{"jobId": job_id, "attempt": 1}])
    await again.chunk(assign, 0, [[1]])  # a resend of an acked chunk is acked, not duplicated
    await again.chunk(assign, 1, [[2]])
    await again.done(assign, 2, 2)
    job = await api.job(job_id)
    assert job["status"] == "succeeded" and job["attempts"] == 1 and job["rowCount"] == 2
    await again.close()
