"""OpenAPI document, health, and the tenant event stream."""

from __future__ import annotations

import asyncio
import json

from openapi_spec_validator import validate

from relay.api.asyncapi import document as asyncapi_document
from relay.api.openapi import WEBSOCKET_ROUTES
from relay.store.engine import open_engine
from relay.web.auth import make_token
from tests.relay.conftest import SECRET, Api, FakeAgent, relay_of, wait_until


async def test_openapi_is_valid_and_covers_every_route(client: object) -> None:
    """Both spec URLs serve a valid OpenAPI 3.1 document with every registered route in it
    (the two WebSocket routes in the AsyncAPI document)."""
    for path in ("/openapi.json", "/api/v1/openapi.json"):
        resp = await client.get(path)
        assert resp.status == 200
        doc = await resp.json()
        validate(doc)
        assert doc["openapi"].startswith("3.1")
    for route in client.server.app.router.routes():
        if route.method == "HEAD":  # aiohttp adds HEAD beside every GET
            continue
        info = route.resource.get_info()
        path = info.get("path") or info.get("formatter")
        if path in WEBSOCKET_ROUTES:  # described by the AsyncAPI document instead
            assert path in {c["address"] for c in asyncapi_document("0")["channels"].values()}
            continue
        assert path in doc["paths"], path
        assert route.method.lower() in doc["paths"][path], (route.method, path)


async def test_health_is_public_and_healthy(client: object) -> None:
    """/health and /api/v1/health answer 200 healthy without a token."""
    for path in ("/health", "/api/v1/health"):
        resp = await client.get(path)
        body = await resp.json()
        assert resp.status == 200
        assert body == {"success": True, "status": "healthy", "version": "0.1.0",
                        "checks": {"database": {"status": "healthy", "disk": "ok"}}, "connectedAgents": 0}


async def test_health_is_503_when_the_store_is_unreachable(client: object) -> None:
    """With its database gone (a closed port), health answers 503 unhealthy."""
    relay = relay_of(client)
    good = relay.store.engine
    relay.store.engine = open_engine("postgresql://nobody@127.0.0.1:1/none")
    try:
        resp = await client.get("/health")
        body = await resp.json()
        assert resp.status == 503 and body["status"] == "unhealthy"
        assert body["checks"]["database"]["status"] == "unhealthy"
    finally:
        relay.store.engine.dispose()
        relay.store.engine = good


async def test_health_counts_connected_agents(client: object, agent: FakeAgent) -> None:
    """connectedAgents counts the live agent sessions."""
    body = await (await client.get("/health")).json()
    assert body["connectedAgents"] == 1


async def test_events_stream_job_and_connector_events(api: Api, client: object) -> None:
    """The tenant's event socket receives connector_status_changed, job_started and job_completed."""
    token = make_token(SECRET, "t1", "service", 60)
    ws = await client.ws_connect(f"/api/v1/events?token={token}")
    other = await client.ws_connect(f"/api/v1/events?token={make_token(SECRET, 't2', 'admin', 60)}")
    con = await api.new_connector()
    agent = await FakeAgent(client, con["apiKey"]).connect()
    job_id = await api.submit(con["id"])
    assign = await agent.expect("job.assign.v1", jobId=job_id)
    await agent.start(assign, ["x"])
    await agent.chunk(assign, 0, [[1]])
    await agent.done(assign, 1, 1)
    seen: dict[str, dict] = {}
    while "job_completed" not in seen:
        msg = json.loads(await asyncio.wait_for(ws.receive_str(), 5))
        assert set(msg) == {"type", "data", "timestamp"}
        seen.setdefault(msg["type"], msg["data"])
    assert seen["connector_status_changed"] == {"connectorId": con["id"], "status": "online",
                                                "lastSeen": seen["connector_status_changed"]["lastSeen"]}
    assert seen["job_started"] == {"jobId": job_id, "connectorId": con["id"]}
    done = seen["job_completed"]
    assert done["jobId"] == job_id and done["status"] == "succeeded" and done["rowCount"] == 1
    assert isinstance(done["durationMs"], int)
    # The other tenant saw nothing of it.
    assert relay_of(client).events.subscribers("t2") == 1
    try:
        got = await asyncio.wait_for(other.receive_str(), 0.2)
    except TimeoutError:
        got = None
    assert got is None
    await ws.close()
    await other.close()
    await agent.close()


async def test_events_need_a_valid_token(client: object) -> None:
    """Without a valid token the event socket is refused with 401."""
    resp = await client.get("/api/v1/events?token=nope")
    assert resp.status == 401 and (await resp.json())["error"]["code"] == "UNAUTHORIZED"


async def test_the_event_stream_closes_when_its_token_expires(client: object) -> None:
    """A token is good until its ``exp``: the event socket it opened is closed (4001, the
    reason saying why) once it expires (plus the accepted clock skew), instead of
    streaming the tenant's events forever on a credential that is no longer valid."""
    import time

    import aiohttp
    import jwt

    from relay.web.auth import LEEWAY

    exp = int(time.time()) - LEEWAY + 2  # still accepted (clock-skew leeway) for 1-2 s
    token = jwt.encode({"sub": "s", "tenantId": "t1", "role": "support", "exp": exp, "jti": "j1"},
                       SECRET, algorithm="HS256")
    ws = await client.ws_connect(f"/api/v1/events?token={token}")
    msg = await asyncio.wait_for(ws.receive(), 5)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING), msg
    assert ws.close_code == 4001 and "expired" in str(msg.extra)
    assert time.time() >= exp + LEEWAY - 0.1
    await ws.close()


async def test_event_sockets_are_capped_per_tenant(start_relay: object) -> None:
    """Each event socket buffers up to 1,000 events: a tenant may hold at most
    ``MC_RELAY_EVENT_SOCKETS`` open (here 2) on a relay node; the next is 429 with
    ``Retry-After`` and ``details.retryAfter``, other tenants are not affected, and a
    closed socket makes room again."""
    client = await start_relay(event_sockets_per_tenant=2)
    token = make_token(SECRET, "t1", "service", 600)
    first = await client.ws_connect(f"/api/v1/events?token={token}")
    second = await client.ws_connect(f"/api/v1/events?token={token}")
    relay = relay_of(client)
    assert relay.events.subscribers("t1") == 2
    resp = await client.get(f"/api/v1/events?token={token}", headers={
        "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})  # fmt: skip
    body = await resp.json()
    assert resp.status == 429 and body["error"]["code"] == "RATE_LIMITED"
    assert resp.headers["Retry-After"] == str(body["error"]["details"]["retryAfter"])
    other = await client.ws_connect(f"/api/v1/events?token={make_token(SECRET, 't2', 'admin', 600)}")
    await first.close()
    async def one_left() -> bool:
        return relay.events.subscribers("t1") == 1

    await wait_until(one_left, what="the closed socket's subscription to end")
    third = await client.ws_connect(f"/api/v1/events?token={token}")
    for ws in (second, third, other):
        await ws.close()
