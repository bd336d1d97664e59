"""The relay's operations surface in process: /metrics, /downloads, the log-level raise,
log line dedupe and catch-up cursor, and the graceful-shutdown handshake refusal."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from relay.shutdown import drain
from shared import protocol
from tests.relay.conftest import Api, FakeAgent, relay_of, wait_until


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def _metrics(client: Any, **headers: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = await client.get("/metrics", headers=headers)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/plain")
    return _samples(await resp.text())


async def test_metrics_report_agents_jobs_latency_bytes_and_failed_handshakes(
    client: Any, api: Api, agent: FakeAgent
) -> None:
    """/metrics (Prometheus text) counts the connected agent, jobs by state, one dispatch
    latency sample, the job's result bytes and a handshake refused for a bad key."""
    job_id = await api.submit(agent.connector_id or "")
    assign = await agent.expect("job.assign.v1", jobId=job_id)
    await agent.start(assign, ["n"])
    await agent.chunk(assign, 0, [[1], [2]])
    await agent.done(assign, chunks=1, rows=2)
    bad = await client.get("/api/v1/agent/connect", headers={"Authorization": "Bearer vmc_nope"})
    assert bad.status == 401
    m = await _metrics(client)
    assert m[("mini_relay_connected_agents", ())] == 1
    assert m[("mini_relay_jobs", (("state", "succeeded"),))] == 1
    assert m[("mini_relay_jobs", (("state", "queued"),))] == 0
    assert m[("mini_relay_dispatch_latency_seconds_count", ())] == 1
    assert m[("mini_relay_result_bytes_total", ())] == 20  # the fake agent reports rows * 10
    assert m[("mini_relay_failed_handshakes_total", (("reason", "unauthorized"),))] == 1
    # Group commit on the SQLite store: every store call ran in some committed batch.
    tx, ops = m[("mini_relay_store_transactions", ())], m[("mini_relay_store_ops", ())]
    assert 1 <= tx <= ops and ops >= 5  # at least submit, claim, started, chunk and done


async def test_metrics_need_the_configured_token_and_each_app_has_its_own_registry(
    start_relay: Any,
) -> None:
    """With MC_RELAY_METRICS_TOKEN set, /metrics is 401 (envelope) without it; two apps in
    one process keep separate counters."""
    one = await start_relay(metrics_token="scrape-me")
    resp = await one.get("/metrics")
    assert resp.status == 401 and (await resp.json())["error"]["code"] == "UNAUTHORIZED"
    resp = await one.get("/metrics", headers={"Authorization": "Bearer wrong"})
    assert resp.status == 401
    relay_of(one).metrics.failed_handshakes.labels(reason="unauthorized").inc(5)
    m = await _metrics(one, Authorization="Bearer scrape-me")
    assert m[("mini_relay_failed_handshakes_total", (("reason", "unauthorized"),))] == 5
    assert relay_of(one).metrics.registry is not None
    assert ("mini_relay_failed_handshakes_total", (("reason", "unauthorized"),)) in m


# ---------------------------------------------------------------- downloads


def _folder(tmp_path: Path) -> Path:
    d = tmp_path / "downloads"
    d.mkdir()
    (d / "mini-connector-linux").write_bytes(b"\x7fELF fake agent build")
    (d / "mini-connector-windows.exe").write_bytes(b"MZ fake windows build")
    (d / "mini-connector_0.1.0_amd64.deb").write_bytes(b"!<arch> fake deb")
    (tmp_path / "secret.txt").write_text("outside the folder")
    (d / "escape").symlink_to(tmp_path / "secret.txt")
    return d


async def test_downloads_serve_builds_with_checksums(start_relay: Any, tmp_path: Path) -> None:
    """Each build comes with X-Checksum-SHA256; <name>.sha256 and SHA256SUMS agree; HEAD works."""
    client = await start_relay(downloads_dir=str(_folder(tmp_path)))
    api = Api(client)
    con = await api.new_connector()
    assert con["downloadUrl"] == "/downloads/mini-connector-linux"
    resp = await client.get(con["downloadUrl"])
    body = await resp.read()
    digest = hashlib.sha256(body).hexdigest()
    assert resp.status == 200 and body == b"\x7fELF fake agent build"
    assert resp.headers["X-Checksum-SHA256"] == digest
    line = await (await client.get("/downloads/mini-connector-linux.sha256")).text()
    assert line == f"{digest}  mini-connector-linux\n"
    sums = await (await client.get("/downloads/SHA256SUMS")).text()
    names = [row.split("  ")[1] for row in sums.splitlines()]
    assert names == ["mini-connector-linux", "mini-connector-windows.exe", "mini-connector_0.1.0_amd64.deb"]
    assert f"{digest}  mini-connector-linux" in sums.splitlines()
    head = await client.head("/downloads/mini-connector-windows.exe")
    assert head.status == 200 and len(head.headers["X-Checksum-SHA256"]) == 64


async def test_download_url_names_only_what_is_served(start_relay: Any, tmp_path: Path) -> None:
    """A build missing from the folder gives downloadUrl null (not a 404 link); a CDN base
    (MC_RELAY_DOWNLOADS_URL) is named as configured, which the relay cannot check."""
    folder = tmp_path / "only-linux"
    folder.mkdir()
    (folder / "mini-connector-linux").write_bytes(b"\x7fELF")
    api = Api(await start_relay(downloads_dir=str(folder)))
    assert (await api.new_connector("l", "linux"))["downloadUrl"] == "/downloads/mini-connector-linux"
    windows = await api.new_connector("w", "windows")
    assert windows["downloadUrl"] is None and "serves no agent build" in windows["setupInstructions"]
    cdn = Api(await start_relay(downloads_url_base="https://cdn.example.com/agent/"))
    got = await cdn.new_connector("w", "windows")
    assert got["downloadUrl"] == "https://cdn.example.com/agent/mini-connector-windows.exe"
    assert got["setupInstructions"].startswith("Download the agent")


async def test_downloads_404_in_the_envelope_and_no_path_escapes(start_relay: Any, tmp_path: Path) -> None:
    """A missing build, traversal attempts and a symlink out of the folder are all 404."""
    client = await start_relay(downloads_dir=str(_folder(tmp_path)))
    for path in ("/downloads/nothing-here", "/downloads/..%2Fsecret.txt", "/downloads/%2e%2e",
                 "/downloads/escape", "/downloads/.hidden", "/downloads/escape.sha256",
                 "/downloads/..%2F..%2Fetc%2Fpasswd"):  # fmt: skip
        resp = await client.get(path)
        assert resp.status == 404, path
        body = await resp.json()
        assert body["success"] is False and body["error"]["code"] == "NOT_FOUND", path
    unconfigured = await start_relay()
    resp = await unconfigured.get("/downloads/mini-connector-linux")
    assert resp.status == 404 and "not configured" in (await resp.json())["error"]["message"]


# ---------------------------------------------------------------- log level raise


async def test_support_raises_the_log_level_for_a_while_and_it_expires(
    start_relay: Any,
) -> None:
    """support may PATCH logLevel (only that); the agent gets agent.config.v1 DEBUG at once,
    a reconnecting agent gets it in its welcome, and INFO when the time is up."""
    client = await start_relay(sweep_interval=0.05)
    api = Api(client)
    con = await api.new_connector()
    agent = await FakeAgent(client, con["apiKey"]).connect()
    assert agent.welcome is not None and agent.welcome["logLevel"] == "INFO"
    support = api.as_("support")
    await support.call("PATCH", f"/connectors/{con['id']}", json={"name": "x"}, expect=403)
    await api.as_("service").call("PATCH", f"/connectors/{con['id']}", json={"logLevel": "DEBUG"}, expect=403)
    for bad in ({"logLevel": "LOUD"}, {"logLevel": "DEBUG", "logLevelMinutes": 0},
                {"logLevel": "DEBUG", "logLevelMinutes": 5000}, {"logLevelMinutes": 5},
                {"logLevel": "DEBUG", "logLevelMinutes": True}):  # fmt: skip
        _, out, _ = await support.call("PATCH", f"/connectors/{con['id']}", json=bad, expect=422)
        assert out["error"]["details"]["field"] in ("logLevel", "logLevelMinutes")
    _, out, _ = await support.call("PATCH", f"/connectors/{con['id']}",
                                   json={"logLevel": "debug", "logLevelMinutes": 0.03}, expect=200)  # fmt: skip
    assert out["data"]["id"] == con["id"]
    assert (await agent.expect("agent.config.v1"))["logLevel"] == "DEBUG"
    await agent.close()
    again = await FakeAgent(client, con["apiKey"]).connect()
    assert again.welcome is not None and again.welcome["logLevel"] == "DEBUG"
    assert (await again.expect("agent.config.v1", timeout=10))["logLevel"] == "INFO"
    await again.close()
    later = await FakeAgent(client, con["apiKey"]).connect()
    assert later.welcome is not None and later.welcome["logLevel"] == "INFO"
    await later.close()


# ---------------------------------------------------------------- log lines


def _line(i: int, **kw: Any) -> dict[str, Any]:
    return {"id": i, "timestamp": "2026-11-24T10:00:00.000Z", "level": "INFO",
            "message": f"line {i}", "logger": "agent.test", "jobId": None, **kw}  # fmt: skip


async def test_resent_log_lines_are_stored_once_and_the_welcome_says_where_to_resume(
    client: Any, api: Api, agent: FakeAgent
) -> None:
    """Lines carry the agent's ids: a resend is stored once, and the next welcome's
    logsThrough is the newest id stored."""
    assert agent.welcome is not None and agent.welcome["logsThrough"] is None
    cid = agent.connector_id or ""
    await agent.send("agent.logs.v1", lines=[_line(1), _line(2), _line(3)])
    await agent.send("agent.logs.v1", lines=[_line(2), _line(3), _line(4), _line(4)])

    async def stored() -> list[str]:
        _, out, _ = await api.call("GET", f"/connectors/{cid}/logs", expect=200)
        msgs = [x["message"] for x in out["data"]["logs"]]
        return msgs if len(msgs) >= 4 else []

    assert await wait_until(stored, what="4 lines") == ["line 1", "line 2", "line 3", "line 4"]
    await agent.close()
    again = await FakeAgent(client, agent.api_key).connect()
    assert again.welcome is not None and again.welcome["logsThrough"] == 4
    await again.close()


# ---------------------------------------------------------------- shutdown


async def test_shutdown_sends_agents_away_with_jittered_delays_and_refuses_new_ones(
    start_relay: Any,
) -> None:
    """drain() sends each agent relay.reconnect.v1 with its own delay in [min, min+spread],
    waits for it to leave, and new handshakes get 503 with Retry-After."""
    client = await start_relay(reconnect_delay_min=2.0, reconnect_delay_spread=3.0, shutdown_grace=5.0)
    api = Api(client)
    agents = []
    for i in range(3):
        con = await api.new_connector(f"a{i}")
        agents.append(await FakeAgent(client, con["apiKey"]).connect())
    relay = relay_of(client)
    import asyncio

    task = asyncio.create_task(drain(relay))
    delays = []
    for a in agents:
        msg = await a.expect("relay.reconnect.v1")
        delays.append(msg["delaySeconds"])
        await a.close()
    await asyncio.wait_for(task, 10)
    assert all(2.0 <= d <= 5.0 for d in delays), delays
    assert not relay.hub.sessions
    resp = await client.get("/api/v1/agent/connect", headers={"Authorization": f"Bearer {agents[0].api_key}"})
    body = await resp.json()
    assert resp.status == 503 and body["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert int(resp.headers["Retry-After"]) >= 1
    m = await _metrics(client)
    assert m[("mini_relay_failed_handshakes_total", (("reason", "unavailable"),))] == 1
    assert protocol.CLOSE_CODES["SERVICE_RESTART"] == 1012
