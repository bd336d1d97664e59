"""The agent socket: handshake, heartbeats, liveness, duplicates, bad frames."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time

import aiohttp
import pytest

from relay.web.auth import make_token
from shared import keys, protocol
from tests.relay.conftest import SECRET, Api, FakeAgent, wait_until


async def _status(api: Api, cid: str) -> str:
    return (await api.connector(cid))["status"]


@pytest.mark.parametrize(
    "header",
    [None, "Basic abc", "Bearer not-a-key", "Bearer " + keys.generate_key()],
    ids=["none", "basic", "not-a-key", "unknown-key"],  # the same names in every collection
)
async def test_bad_or_unknown_key_is_refused_with_401_before_upgrade(client: object, header: str | None) -> None:
    """Missing, malformed, mistyped or unknown keys get HTTP 401 in the envelope, no socket."""
    headers = {"Authorization": header} if header else {}
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await client.ws_connect("/api/v1/agent/connect", headers=headers)
    assert err.value.status == 401
    resp = await client.get("/api/v1/agent/connect", headers=headers)
    body = await resp.json()
    assert resp.status == 401 and body["error"]["code"] == "UNAUTHORIZED"
    presented = (header or "").partition(" ")[2]
    assert not presented or presented not in body["error"]["message"]


async def test_hello_makes_the_connector_online_with_its_details(api: Api, agent: FakeAgent) -> None:
    """After hello the connector is online with hostname, version, sources and publicKey."""
    assert agent.welcome is not None and agent.welcome["heartbeatInterval"] == 15.0
    con = await api.connector(agent.connector_id or "")
    assert con["status"] == "online" and con["hostname"] == "fake-host"
    assert con["publicKey"] == agent.public_key and con["sources"] == [{"name": "erp", "type": "postgres"}]
    assert con["capacity"] == 4 and con["connectedSince"] and con["ipAddress"]


async def test_heartbeat_updates_cpu_and_memory(api: Api, agent: FakeAgent) -> None:
    """A heartbeat's CPU and memory show on the connector and as a metrics sample."""
    await agent.heartbeat(cpu=33.5, mem=61.0, active=1)

    async def updated() -> dict | None:
        con = await api.connector(agent.connector_id or "")
        return con if con["cpuUsage"] == 33.5 else None

    con = await wait_until(updated, what="heartbeat applied")
    assert con["memoryUsage"] == 61.0 and con["activeJobs"] == 1

    async def sampled() -> list:
        _, body, _ = await api.call("GET", f"/connectors/{agent.connector_id}/metrics", expect=200)
        return body["data"]

    samples = await wait_until(sampled, what="metrics sample")
    assert samples[-1]["cpuUsage"] == 33.5 and samples[-1]["activeJobs"] == 1


async def test_missed_heartbeats_make_the_connector_offline(start_relay: object) -> None:
    """Three missed heartbeat intervals close the session and mark the connector offline."""
    client = await start_relay(heartbeat_interval=0.1)
    api = Api(client)
    con = await api.new_connector()
    agent = await FakeAgent(client, con["apiKey"]).connect()
    assert agent.welcome["heartbeatInterval"] == 0.1
    await wait_until(lambda: _is(api, con["id"], "offline"), what="offline")
    assert await agent.wait_closed() == protocol.CLOSE_CODES["HEARTBEAT_TIMEOUT"]


async def test_offline_after_silence_carries_the_last_heartbeat_as_last_seen(start_relay: object) -> None:
    """``connector_status_changed`` (and the connector's ``lastSeen``) after a heartbeat
    timeout say when the agent was last heard, not when the relay noticed its silence."""
    client = await start_relay(heartbeat_interval=0.4)  # silent for 1.2 s: offline
    api = Api(client)
    con = await api.new_connector()
    ws = await client.ws_connect(f"/api/v1/events?token={make_token(SECRET, 't1', 'service', 60)}")
    agent = await FakeAgent(client, con["apiKey"]).connect()
    await agent.heartbeat()
    heard = time.time()  # the heartbeat left (the relay read it a moment later)

    while True:
        msg = json.loads(await asyncio.wait_for(ws.receive_str(), 10))
        if msg["type"] == "connector_status_changed" and msg["data"]["status"] == "offline":
            break
    noticed = time.time()
    last_seen = dt.datetime.fromisoformat(msg["data"]["lastSeen"].replace("Z", "+00:00")).timestamp()
    assert noticed - heard >= 1.1  # the relay waited out three intervals ...
    assert heard - 0.5 <= last_seen <= heard + 0.3, (heard, last_seen, noticed)  # ... and says when it last heard
    assert (await api.connector(con["id"]))["lastSeen"] == msg["data"]["lastSeen"]
    await ws.close()


async def _is(api: Api, cid: str, status: str) -> bool:
    return await _status(api, cid) == status


async def test_closed_socket_makes_the_connector_offline(api: Api, agent: FakeAgent) -> None:
    """Closing the socket marks the connector offline at once."""
    await agent.close()
    await wait_until(lambda: _is(api, agent.connector_id or "", "offline"), what="offline")


async def test_no_hello_in_time_closes_with_4008(start_relay: object) -> None:
    """An agent that says nothing is closed with PROTOCOL_VIOLATION after hello_timeout."""
    client = await start_relay(hello_timeout=0.2)
    api = Api(client)
    con = await api.new_connector()
    agent = await FakeAgent(client, con["apiKey"]).connect(hello=False)
    assert await agent.wait_closed() == 4008


async def test_same_agent_reconnecting_replaces_its_stale_session(api: Api, client: object, agent: FakeAgent) -> None:
    """Same public key: the old session is closed with 4010, the new one is kept."""
    again = FakeAgent(client, agent.api_key)
    again.private_key, again.public_key = agent.private_key, agent.public_key
    await again.connect()
    assert await agent.wait_closed() == protocol.CLOSE_CODES["SESSION_REPLACED"]
    assert await _status(api, again.connector_id or "") == "online"
    await again.heartbeat()
    await again.close()


async def test_second_machine_with_the_same_key_is_refused(api: Api, client: object, agent: FakeAgent) -> None:
    """Different public key while connected: the newcomer is closed with 4009."""
    other = FakeAgent(client, agent.api_key)
    await other.connect(hello=False)
    await other.send("agent.hello.v1", protocolVersion=1, agentVersion="0.1.0", hostname="x", os="linux",
                     publicKey=other.public_key, capacity=1, sources=[])
    assert await other.wait_closed() == protocol.CLOSE_CODES["DUPLICATE_CONNECTION"]
    errors = [m for m in other.inbox if m.type == "relay.error.v1"]
    assert errors and errors[0]["code"] == "DUPLICATE_CONNECTION"
    assert await _status(api, agent.connector_id or "") == "online"
    await agent.heartbeat()  # the first session is untouched


async def test_malformed_frames_get_errors_then_4008_without_harming_others(
    api: Api, client: object, agent: FakeAgent
) -> None:
    """Bad frames earn relay.error.v1 each and a 4008 close at the limit; other agents carry on."""
    con = await api.new_connector("bad")
    bad = await FakeAgent(client, con["apiKey"]).connect()
    junk: list[str | bytes] = ["not json", "[]", '{"type": "nope.v1"}', '{"type": "relay.welcome.v1"}',
                               '{"type": "agent.heartbeat.v1", "cpuUsage": "high"}', b"\x09\x00\x00",
                               b"\x01\x00\x00\x05{}", "x" * (protocol.MAX_TEXT_FRAME + 1)]
    for frame in junk:
        await bad.send_raw(frame)
        err = await bad.expect("relay.error.v1")
        assert err["code"] == "PROTOCOL_ERROR" and err["message"]
    for _ in range(2):
        await bad.send_raw("{")
    assert await bad.wait_closed() == protocol.CLOSE_CODES["PROTOCOL_VIOLATION"]
    # The good agent still works end to end.
    job_id = await api.submit(agent.connector_id or "")
    assign = await agent.expect("job.assign.v1", jobId=job_id)
    await agent.start(assign, ["x"])
    await agent.chunk(assign, 0, [[1]])
    await agent.done(assign, 1, 1)
    assert (await api.job(job_id))["status"] == "succeeded"


async def test_chunk_for_another_connectors_job_is_a_violation(api: Api, client: object, agent: FakeAgent) -> None:
    """An agent cannot write rows into a job that is not assigned to it."""
    job_id = await api.submit(agent.connector_id or "")
    assign = await agent.expect("job.assign.v1", jobId=job_id)
    con = await api.new_connector("intruder")
    intruder = await FakeAgent(client, con["apiKey"]).connect()
    await intruder.chunk(assign, 0, [[666]], ack=False)
    err = await intruder.expect("relay.error.v1")
    assert err["code"] == "PROTOCOL_ERROR"
    await intruder.close()


async def test_chunk_row_count_must_match(api: Api, agent: FakeAgent) -> None:
    """A chunk whose header lies about its row count is refused, not stored."""
    job_id = await api.submit(agent.connector_id or "")
    await agent.expect("job.assign.v1", jobId=job_id)
    frame = protocol.encode_chunk(protocol.Chunk(job_id, 1, 0, 5, b"[[1]]"))
    await agent.send_raw(frame)
    assert (await agent.expect("relay.error.v1"))["code"] == "PROTOCOL_ERROR"


async def test_done_waits_for_missing_chunks(api: Api, agent: FakeAgent) -> None:
    """job.done with chunks not yet stored is acknowledged only once they arrive."""
    job_id = await api.submit(agent.connector_id or "")
    assign = await agent.expect("job.assign.v1", jobId=job_id)
    await agent.start(assign, ["x"])
    await agent.chunk(assign, 0, [[1]])
    await agent.done(assign, 2, 2, ack=False)
    assert (await api.job(job_id))["status"] == "running"
    await agent.chunk(assign, 1, [[2]])
    await agent.expect("job.done.ack.v1", jobId=job_id)
    assert (await api.job(job_id))["status"] == "succeeded"


async def test_agent_logs_are_stored_and_paged(api: Api, agent: FakeAgent) -> None:
    """Shipped log lines come back oldest first, filtered by level, paged by cursor."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    lines = [{"timestamp": now, "level": lvl, "message": f"line {i}", "logger": "agent.session", "jobId": None}
             for i, lvl in enumerate(["INFO", "DEBUG", "WARNING", "ERROR", "INFO"])]
    await agent.send("agent.logs.v1", lines=lines)
    cid = agent.connector_id

    async def stored() -> list:
        _, body, _ = await api.call("GET", f"/connectors/{cid}/logs", expect=200)
        return body["data"]["logs"] if len(body["data"]["logs"]) == 5 else []

    logs = await wait_until(stored, what="logs stored")
    assert [x["message"] for x in logs] == [f"line {i}" for i in range(5)]
    _, body, _ = await api.call("GET", f"/connectors/{cid}/logs?level=warning", expect=200)
    assert [x["level"] for x in body["data"]["logs"]] == ["warning", "error"]
    _, page1, _ = await api.call("GET", f"/connectors/{cid}/logs?limit=2", expect=200)
    assert len(page1["data"]["logs"]) == 2 and page1["data"]["nextCursor"]
    _, page2, _ = await api.call("GET", f"/connectors/{cid}/logs?limit=2&cursor={page1['data']['nextCursor']}", expect=200)
    assert page2["data"]["logs"][0]["message"] == "line 2"
    status, body, _ = await api.call("GET", f"/connectors/{cid}/logs?level=loud")
    assert status == 422 and body["error"]["details"]["field"] == "level"
    status, body, _ = await api.call("GET", f"/connectors/{cid}/logs?since=yesterday")
    assert status == 422 and body["error"]["details"]["field"] == "since"


async def test_log_retention_keeps_the_newest_lines(start_relay: object) -> None:
    """Only the newest log_retention_lines lines per connector are kept."""
    client = await start_relay(log_retention_lines=3)
    api = Api(client)
    con = await api.new_connector()
    agent = await FakeAgent(client, con["apiKey"]).connect()
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    await agent.send("agent.logs.v1", lines=[{"timestamp": now, "level": "INFO", "message": f"m{i}"} for i in range(5)])

    async def trimmed() -> list:
        _, body, _ = await api.call("GET", f"/connectors/{con['id']}/logs", expect=200)
        msgs = [x["message"] for x in body["data"]["logs"]]
        return msgs if msgs and msgs[-1] == "m4" else []

    assert await wait_until(trimmed, what="logs") == ["m2", "m3", "m4"]
    await agent.close()
