"""Submit-time checks and idempotent revocation (issue 14, item 6).

A job for a source the connector has reported it does not have is refused at submit with
422 ``SOURCE_NOT_FOUND``; a connector that reported no sources is not checked. A second
``DELETE`` of a revoked connector answers 204 again and raises no second ``revoked`` event.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from relay.web.auth import make_token
from shared import protocol
from tests.relay.conftest import SECRET, Api, FakeAgent, relay_of, wait_until


async def _post_job(api: Api, cid: str, source: str, operation: str = "query") -> tuple[int, Any]:
    body: dict[str, Any] = {"connectorId": cid, "source": source, "operation": operation}
    if operation == "query":
        body["query"] = {"sql": "SELECT 1", "params": {}}
    status, out, _ = await api.call("POST", "/jobs", json=body)
    return status, out


async def test_unknown_source_is_refused_at_submit_while_connected(api: Api, agent: FakeAgent) -> None:
    """The connected agent reported only ``erp``: a job for ``nope`` is 422 SOURCE_NOT_FOUND,
    naming the field and the sources it does have; nothing is queued or dispatched."""
    cid = agent.connector_id or ""
    for operation in ("query", "discover", "test"):
        status, out = await _post_job(api, cid, "nope", operation)
        assert status == 422, out
        assert out["error"]["code"] == "SOURCE_NOT_FOUND", out
        assert out["error"]["details"] == {"field": "source", "sources": ["erp"]}
        assert "nope" in out["error"]["message"]
    _, listed, _ = await api.call("GET", f"/jobs?connectorId={cid}", expect=200)
    assert listed["data"] == []
    status, out = await _post_job(api, cid, "erp")
    assert status == 202, out
    await agent.expect("job.assign.v1", jobId=out["data"]["id"])


async def test_unknown_source_is_refused_while_the_agent_is_offline(client: Any, api: Api) -> None:
    """The store keeps the sources of the last hello: with the agent gone the check holds
    (the path that reads the connector row, not the live session)."""
    con = await api.new_connector()
    agent = await FakeAgent(client, con["apiKey"]).connect()
    await agent.close()
    await wait_until(lambda: _status_is(api, con["id"], "offline"), what="offline")
    assert con["id"] not in relay_of(client).hub.sessions
    status, out = await _post_job(api, con["id"], "nope")
    assert status == 422 and out["error"]["code"] == "SOURCE_NOT_FOUND", out
    status, out = await _post_job(api, con["id"], "erp")
    assert status == 202, out


async def _status_is(api: Api, cid: str, status: str) -> bool:
    return (await api.connector(cid))["status"] == status


async def test_a_connector_that_reported_no_sources_is_not_checked(client: Any, api: Api) -> None:
    """An agent with no sources configured yet: the relay cannot tell, the job is queued
    (its agent fails it as a job if the source is still missing when it runs)."""
    con = await api.new_connector()
    agent = FakeAgent(client, con["apiKey"])
    await agent.connect(hello=False)
    await agent.send("agent.hello.v1", protocolVersion=protocol.PROTOCOL_VERSION, agentVersion="0.1.0",
                     hostname="fake-host", os="linux", publicKey=agent.public_key, capacity=4,
                     sources=[], heldJobs=[])
    agent.welcome = await agent.expect("relay.welcome.v1")
    agent.connector_id = agent.welcome["connectorId"]
    status, out = await _post_job(api, con["id"], "anything")
    assert status == 202, out
    await agent.expect("job.assign.v1", jobId=out["data"]["id"])
    await agent.close()


async def _events_until(ws: Any, stop: Any) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    while True:
        msg = json.loads(await asyncio.wait_for(ws.receive_str(), 5))
        seen.append(msg)
        if stop(msg):
            return seen


async def test_second_delete_is_204_without_a_second_revoked_event(client: Any, api: Api) -> None:
    """DELETE twice: 204 both times, one ``revoked`` event. A later event (another
    connector coming online) marks the point by which a second one would have arrived."""
    ws = await client.ws_connect(f"/api/v1/events?token={make_token(SECRET, 't1', 'service', 60)}")
    con = await api.new_connector()
    agent = await FakeAgent(client, con["apiKey"]).connect()
    await api.call("DELETE", f"/connectors/{con['id']}", expect=204)
    await agent.wait_closed()

    def revoked(m: dict[str, Any]) -> bool:
        return m["type"] == "connector_status_changed" and m["data"]["status"] == "revoked"

    first = await _events_until(ws, revoked)
    assert first[-1]["data"]["connectorId"] == con["id"]
    await api.call("DELETE", f"/connectors/{con['id']}", expect=204)
    await api.call("DELETE", f"/connectors/{con['id']}", expect=204)
    assert (await api.connector(con["id"]))["status"] == "revoked"
    other = await api.new_connector("sentinel")
    sentinel = await FakeAgent(client, other["apiKey"]).connect()
    later = await _events_until(
        ws, lambda m: m["type"] == "connector_status_changed" and m["data"]["connectorId"] == other["id"]
    )
    assert [m for m in later if revoked(m)] == [], later
    await sentinel.close()
    await ws.close()


async def test_delete_of_an_unknown_connector_is_404(api: Api) -> None:
    """Idempotence is for a connector that exists and is revoked; an unknown id stays 404."""
    status, out, _ = await api.call("DELETE", "/connectors/con_nope")
    assert status == 404 and out["error"]["code"] == "NOT_FOUND", out


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
async def test_concurrent_deletes_raise_one_revoked_event(store: str, request: Any, start_relay: Any) -> None:
    """Five DELETEs at once: all 204, exactly one ``revoked`` event (the store's
    conditional update decides which one revoked; on PostgreSQL in concurrent transactions)."""
    overrides = {"database_url": request.getfixturevalue("pg_database")} if store == "postgres" else {}
    client = await start_relay(**overrides)
    api = Api(client)
    ws = await client.ws_connect(f"/api/v1/events?token={make_token(SECRET, 't1', 'service', 60)}")
    con = await api.new_connector()
    results = await asyncio.gather(*(api.call("DELETE", f"/connectors/{con['id']}") for _ in range(5)))
    assert [status for status, _, _ in results] == [204] * 5
    other = await api.new_connector("sentinel")
    sentinel = await FakeAgent(client, other["apiKey"]).connect()
    seen = await _events_until(
        ws, lambda m: m["type"] == "connector_status_changed" and m["data"]["connectorId"] == other["id"]
    )
    revoked = [m for m in seen if m["data"].get("status") == "revoked"]
    assert [m["data"]["connectorId"] for m in revoked] == [con["id"]], seen
    await sentinel.close()
    await ws.close()


async def test_a_running_agents_new_source_list_is_used_at_once(api: Api, agent: FakeAgent) -> None:
    """agent.sources.v1 (offered by the welcome's sourceUpdates) replaces the connector's
    sources: a job for the new one is taken, one for the dropped one refused, and the
    connector's view shows the new list. A malformed list is a protocol error that
    changes nothing."""
    cid = agent.connector_id or ""
    assert agent.welcome is not None and agent.welcome.get("sourceUpdates") is True
    await agent.send("agent.sources.v1", sources=[{"name": "crm", "type": "postgres"}])

    async def crm_taken() -> bool:
        return (await _post_job(api, cid, "crm"))[0] == 202

    await wait_until(crm_taken, what="a job for crm to be taken")
    status, out = await _post_job(api, cid, "erp")
    assert status == 422 and out["error"]["details"]["sources"] == ["crm"], out
    _, view, _ = await api.call("GET", f"/connectors/{cid}", expect=200)
    assert view["data"]["sources"] == [{"name": "crm", "type": "postgres"}]
    await agent.send_raw(json.dumps({"type": "agent.sources.v1", "sources": [{"name": 7}]}))
    error = await agent.expect("relay.error.v1")
    assert error["code"] == "PROTOCOL_ERROR"
    _, view, _ = await api.call("GET", f"/connectors/{cid}", expect=200)
    assert view["data"]["sources"] == [{"name": "crm", "type": "postgres"}]
