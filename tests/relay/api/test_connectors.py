"""Connectors: register, list, read, rename, revoke, rotate."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from shared import keys, protocol
from tests.relay.conftest import Api, FakeAgent, relay_of, wait_until

CONNECTOR_FIELDS = {"id", "name", "status", "os", "hostname", "ipAddress", "version", "lastSeen",
                    "connectedSince", "cpuUsage", "memoryUsage", "activeJobs", "capacity", "sources",
                    "apiKeyPrefix", "previousKeys", "publicKey", "createdAt"}


async def test_register_shows_the_key_once_with_setup_instructions(api: Api) -> None:
    """POST /connectors answers 201 with a valid vmc_ key, its prefix, download URL and setup text."""
    con = await api.new_connector("Delhi Warehouse", "windows")
    assert keys.is_valid_key(con["apiKey"]) and con["apiKey"].startswith(con["apiKeyPrefix"])
    # This relay serves no builds: no link that would answer 404 (docs/OPERATIONS.md)
    assert con["downloadUrl"] is None and "serves no agent build" in con["setupInstructions"]
    assert "mini-connector configure --relay-url" in con["setupInstructions"]
    assert con["apiKey"] in con["setupInstructions"]
    assert f"--relay-url ws://{api.client.host}:{api.client.port} " in con["setupInstructions"]  # the agent's URL
    got = await api.connector(con["id"])
    assert set(got) == CONNECTOR_FIELDS
    assert got["status"] == "pending" and got["os"] == "windows" and "apiKey" not in got
    linux = await api.new_connector("x", "linux")
    assert linux["downloadUrl"] is None


@pytest.mark.parametrize(
    ("body", "field"),
    [({"os": "linux"}, "name"), ({"name": "", "os": "linux"}, "name"), ({"name": "x" * 101, "os": "linux"}, "name"),
     ({"name": 5, "os": "linux"}, "name"), ({"name": "a"}, "os"), ({"name": "a", "os": "mac"}, "os")],
)
async def test_register_validates_fields(api: Api, body: dict, field: str) -> None:
    """Bad name or os: 422 naming the field."""
    status, out, _ = await api.call("POST", "/connectors", json=body)
    assert status == 422 and out["error"]["details"]["field"] == field


@pytest.mark.parametrize("name", ["\u200b", "\ufeff", " \u2060 ", "\u200b\u200c\u200d", "\u00a0\u3000"])
async def test_a_name_with_nothing_visible_is_refused(api: Api, name: str) -> None:
    """A name of spaces or invisible format characters only (zero-width space, BOM, word
    joiner) is as empty as "": 422 naming it, on POST and on PATCH. Before, the
    zero-width ones were taken and the connector showed with no name at all."""
    status, out, _ = await api.call("POST", "/connectors", json={"name": name, "os": "linux"})
    assert status == 422 and out["error"]["details"]["field"] == "name", out
    con = await api.new_connector("kept")
    status, out, _ = await api.call("PATCH", f"/connectors/{con['id']}", json={"name": name})
    assert status == 422 and out["error"]["details"]["field"] == "name", out
    _, out, _ = await api.call("PATCH", f"/connectors/{con['id']}", json={"name": "\u200bx"}, expect=200)
    assert out["data"]["name"] == "\u200bx"  # a visible character with it is a name


async def test_list_filters_and_pages(api: Api) -> None:
    """GET /connectors pages with meta and filters by status."""
    for i in range(3):
        await api.new_connector(f"c{i}")
    _, out, _ = await api.call("GET", "/connectors?page=2&limit=2", expect=200)
    assert out["meta"] == {"page": 2, "limit": 2, "total": 3} and len(out["data"]) == 1
    _, out, _ = await api.call("GET", "/connectors?status=online", expect=200)
    assert out["data"] == [] and out["meta"]["total"] == 0
    status, out, _ = await api.call("GET", "/connectors?status=sleepy")
    assert status == 422 and out["error"]["details"]["field"] == "status"
    status, out, _ = await api.call("GET", "/connectors?limit=0")
    assert status == 422 and out["error"]["details"]["field"] == "limit"


async def test_rename(api: Api) -> None:
    """PATCH changes the name and answers the connector."""
    con = await api.new_connector()
    _, out, _ = await api.call("PATCH", f"/connectors/{con['id']}", json={"name": "renamed"}, expect=200)
    assert out["data"]["name"] == "renamed"
    status, out, _ = await api.call("PATCH", f"/connectors/{con['id']}", json={"os": "windows"})
    assert status == 422 and out["error"]["details"]["field"] == "os"


async def test_other_tenants_connector_is_404(api: Api) -> None:
    """Another tenant's connector does not exist for this tenant."""
    con = await api.new_connector()
    other = api.as_("admin", tenant="t2")
    for method, path in [("GET", ""), ("PATCH", ""), ("DELETE", ""), ("GET", "/logs"), ("GET", "/metrics")]:
        status, out, _ = await other.call(method, f"/connectors/{con['id']}{path}",
                                          json={"name": "x"} if method == "PATCH" else None)
        assert status == 404 and out["error"]["code"] == "NOT_FOUND", (method, path)


async def test_delete_revokes_disconnects_and_fails_queued_jobs(api: Api, client: object) -> None:
    """DELETE: 204, the live agent is closed with 4003 within 2 s, reconnects get 401,
    queued jobs fail with CONNECTOR_REVOKED."""
    con = await api.new_connector()
    agent = await FakeAgent(client, con["apiKey"], capacity=1).connect()
    busy = await api.submit(con["id"])
    await agent.expect("job.assign.v1", jobId=busy)
    waiting = await api.submit(con["id"])
    started = time.monotonic()
    await api.call("DELETE", f"/connectors/{con['id']}", expect=204)
    assert await agent.wait_closed(timeout=2.0) == 4003
    assert time.monotonic() - started < 2.0
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await client.ws_connect("/api/v1/agent/connect", headers={"Authorization": f"Bearer {con['apiKey']}"})
    assert err.value.status == 401
    for job_id in (busy, waiting):
        job = await api.job(job_id)
        assert job["status"] == "failed" and job["error"]["code"] == "CONNECTOR_REVOKED"
    assert (await api.connector(con["id"]))["status"] == "revoked"


async def test_rotate_key_keeps_the_old_key_until_it_expires(api: Api, client: object) -> None:
    """After rotation both keys connect during the grace period; with 0 the old one stops at once."""
    con = await api.new_connector()
    _, out, _ = await api.call("POST", f"/connectors/{con['id']}/rotate-key", expect=200)
    new = out["data"]
    assert keys.is_valid_key(new["apiKey"]) and new["previousKeyExpiresAt"].endswith("Z")
    old_agent = await FakeAgent(client, con["apiKey"]).connect()
    await old_agent.close()
    await wait_until(lambda: _offline(api, con["id"]), what="offline")
    _, out, _ = await api.call("POST", f"/connectors/{con['id']}/rotate-key",
                               json={"gracePeriodSeconds": 0}, expect=200)
    newest = out["data"]["apiKey"]
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await client.ws_connect("/api/v1/agent/connect", headers={"Authorization": f"Bearer {new['apiKey']}"})
    agent = await FakeAgent(client, newest).connect()
    assert agent.connector_id == con["id"]
    await agent.close()


async def _offline(api: Api, cid: str) -> bool:
    return (await api.connector(cid))["status"] == "offline"


@pytest.mark.parametrize(("trusted", "proto", "scheme"), [
    ("127.0.0.0/8, ::1", "https", "wss"),  # TLS ended at a trusted proxy: wss://
    ("", "https", "ws"),  # anyone can send the header: believed only from trusted proxies
    ("127.0.0.0/8, ::1", "gopher", "ws"),
])  # fmt: skip
async def test_setup_instructions_name_the_agents_websocket_url(start_relay: Any, trusted: str, proto: str,
                                                                scheme: str) -> None:  # fmt: skip
    client = await start_relay(trusted_proxies=trusted)
    resp = await client.post("/api/v1/connectors", json={"name": "x", "os": "linux"},
                             headers=Api(client).headers(**{"X-Forwarded-Proto": proto}))  # fmt: skip
    assert resp.status == 201
    setup = (await resp.json())["data"]["setupInstructions"]
    assert f"--relay-url {scheme}://{client.host}:{client.port} " in setup


async def test_rotating_with_grace_zero_closes_an_agent_connected_with_an_earlier_key(
    api: Api, client: object
) -> None:
    """Grace 0 is for a key thought stolen: an agent still connected with an earlier key
    (the thief's) is closed at once (4001) instead of keeping its session, and receiving
    jobs, with a key that no longer works; the real agent then connects with the new key
    rather than being refused as a duplicate of the thief."""
    con = await api.new_connector()
    thief = await FakeAgent(client, con["apiKey"]).connect()
    _, out, _ = await api.call("POST", f"/connectors/{con['id']}/rotate-key",
                               json={"gracePeriodSeconds": 0}, expect=200)  # fmt: skip
    assert await thief.wait_closed(timeout=2.0) == 4001
    await wait_until(lambda: _offline(api, con["id"]), what="offline after the thief's session ended")
    real = await FakeAgent(client, out["data"]["apiKey"]).connect()
    assert real.connector_id == con["id"]
    await real.close()


async def test_an_agent_is_closed_when_its_keys_grace_runs_out(start_relay: Any) -> None:
    """A rotation with a grace: the agent connected with the old key keeps its session
    during the grace, and is closed (4001) once the grace has passed, as a new
    handshake with that key would be refused; an agent on the new key stays."""
    client = await start_relay(maintenance_interval=0.1, sweep_interval=0.05)
    api = Api(client)
    con = await api.new_connector()
    old = await FakeAgent(client, con["apiKey"]).connect()
    _, out, _ = await api.call("POST", f"/connectors/{con['id']}/rotate-key",
                               json={"gracePeriodSeconds": 1}, expect=200)  # fmt: skip
    assert await old.wait_closed(timeout=4.0) == 4001
    new = await FakeAgent(client, out["data"]["apiKey"]).connect()
    relay = relay_of(client)
    await relay.hub.end_lapsed_keys(relay)  # a sweep leaves the new key's session alone
    assert not relay.hub.sessions[con["id"]].dead and not new.ws.closed
    await new.close()


async def _hello(agent: FakeAgent) -> None:
    await agent.send("agent.hello.v1", protocolVersion=protocol.PROTOCOL_VERSION, agentVersion="0.1.0",
                     hostname="late-host", os="linux", publicKey=agent.public_key, capacity=4,
                     sources=[{"name": "erp", "type": "postgres"}], heldJobs=[])  # fmt: skip


async def test_an_agent_whose_hello_comes_after_delete_is_refused(api: Api, client: object) -> None:
    """The key is checked at the upgrade, the hello may come seconds later: a DELETE in
    between must not let the agent in. Before, its welcome wrote ``online`` over
    ``revoked`` and the revoked connector took jobs again (202) with a live session."""
    con = await api.new_connector()
    late = await FakeAgent(client, con["apiKey"]).connect(hello=False)  # upgraded, no hello yet
    await api.call("DELETE", f"/connectors/{con['id']}", expect=204)
    await _hello(late)
    refused = await late.recv()
    assert refused is not None and refused.type == "relay.error.v1" and refused["code"] == "UNAUTHORIZED"
    assert await late.wait_closed() == 4001
    assert (await api.connector(con["id"]))["status"] == "revoked"
    body = {"connectorId": con["id"], "source": "erp", "operation": "query", "query": {"sql": "SELECT 1"}}
    status, out, _ = await api.call("POST", "/jobs", json=body)
    assert status == 409 and out["error"]["code"] == "CONNECTOR_REVOKED", out


async def test_an_agent_whose_hello_comes_after_its_key_was_cut_is_refused(api: Api, client: object) -> None:
    """The same with a rotation of grace 0 between the upgrade and the hello: the old key
    does not get a session; the connector stays pending, and the new key connects."""
    con = await api.new_connector()
    late = await FakeAgent(client, con["apiKey"]).connect(hello=False)
    _, out, _ = await api.call("POST", f"/connectors/{con['id']}/rotate-key",
                               json={"gracePeriodSeconds": 0}, expect=200)  # fmt: skip
    await _hello(late)
    assert await late.wait_closed() == 4001
    assert (await api.connector(con["id"]))["status"] == "pending"
    real = await FakeAgent(client, out["data"]["apiKey"]).connect()
    assert real.connector_id == con["id"]
    await real.close()


async def _handshake(client: Any, key: str) -> int:
    try:
        ws = await client.ws_connect("/api/v1/agent/connect", headers={"Authorization": f"Bearer {key}"})
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status
    await ws.close()
    return 101


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
async def test_concurrent_rotations_all_succeed_and_every_key_works(store: str, request: Any, start_relay: Any) -> None:
    """Six rotations at once (two admins, a retrying client): each is 200 with its own
    key, and every key handed out works (the last as the current key, the others and the
    original through their grace). On PostgreSQL the concurrent transactions read the
    same current key and some failed 409 "a row with the same key was stored meanwhile"."""
    overrides = {"database_url": request.getfixturevalue("pg_database")} if store == "postgres" else {}
    client = await start_relay(**overrides)
    api = Api(client)
    con = await api.new_connector()
    results = await asyncio.gather(*(api.call("POST", f"/connectors/{con['id']}/rotate-key") for _ in range(6)))
    assert [status for status, _, _ in results] == [200] * 6, [body for _, body, _ in results]
    handed_out = [body["data"]["apiKey"] for _, body, _ in results]
    assert len(set(handed_out)) == 6
    for key in [con["apiKey"], *handed_out]:
        assert await _handshake(client, key) == 101
    assert len((await api.connector(con["id"]))["previousKeys"]) == 6
