"""Connectors: register, list, read, rename, revoke, rotate."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import pytest

from shared import keys
from tests.relay.conftest import Api, FakeAgent, wait_until

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
