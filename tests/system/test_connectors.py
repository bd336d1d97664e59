"""Connector life seen from the API: heartbeats, logs, metrics, revocation."""

from __future__ import annotations

import pytest

from tests.harness import HarnessError, holds_for, scaled, wait_until
from tests.system.conftest import SystemEnv

pytestmark = pytest.mark.system


def test_online_connector_reports_cpu_and_memory(system: SystemEnv) -> None:
    """After a heartbeat the connector is online with host CPU and memory percentages."""
    def reported() -> dict | None:
        con = system.api.connector(system.connector_id)
        ok = isinstance(con.get("cpuUsage"), (int, float)) and isinstance(con.get("memoryUsage"), (int, float))
        return con if ok else None

    con = wait_until(reported, 10, interval=0.2, what="a heartbeat with cpuUsage/memoryUsage")
    assert con["status"] == "online"
    assert 0 <= con["cpuUsage"] <= 100 and 0 < con["memoryUsage"] <= 100
    assert con["lastSeen"] and con["connectedSince"] and con["hostname"]
    assert {"name": "erp", "type": "sqlite"} in con["sources"]
    assert con["publicKey"] and con["apiKeyPrefix"].startswith("vmc_")
    assert "apiKey" not in con


def test_metrics_hold_heartbeat_samples(system: SystemEnv) -> None:
    samples = wait_until(
        lambda: system.api.call("GET", f"/connectors/{system.connector_id}/metrics", expect=200).data,
        10, interval=0.2, what="metrics samples",
    )  # fmt: skip
    assert {"timestamp", "cpuUsage", "memoryUsage", "activeJobs"} <= set(samples[0])


def test_agent_logs_are_served_by_the_relay(system: SystemEnv) -> None:
    """The agent ships its log lines; the relay serves them oldest first, without secrets."""
    system.api.run_job(system.connector_id, "erp", sql="SELECT 1 AS x")
    page = wait_until(lambda: system.api.logs(system.connector_id).get("logs"), 15, interval=0.2,
                      what="agent log lines at the relay")  # fmt: skip
    line = page[0]
    assert {"id", "timestamp", "level", "message"} <= set(line)
    stamps = [entry["timestamp"] for entry in page]
    assert stamps == sorted(stamps)
    text = str(page)
    assert system.agent.api_key not in text and system.agent.api_key[12:] not in text


def test_deleted_connector_is_disconnected_within_2s_and_stays_out(system: SystemEnv) -> None:
    """DELETE revokes the key: the agent is gone within 2 s and does not come back."""
    stack = system.stack
    doomed = stack.add_agent("doomed", [_erp(system)])
    before = stack.api.health()["connectedAgents"]
    assert stack.api.connector(doomed.connector_id)["status"] == "online"
    stack.api.delete_connector(doomed.connector_id)

    def gone() -> bool:
        return (stack.api.health()["connectedAgents"] <= before - 1
                and stack.api.connector(doomed.connector_id)["status"] == "revoked")  # fmt: skip

    try:
        wait_until(gone, 2, interval=0.05, what="the revoked agent to be disconnected")
    except HarnessError as exc:
        pytest.fail(f"{exc}; connector now {stack.api.connector(doomed.connector_id)}")
    stays_out = holds_for(gone, scaled(4), interval=0.2)
    assert stays_out, "the revoked agent came back"
    resp = stack.api.call("POST", "/jobs", {"connectorId": doomed.connector_id, "source": "erp",
                                            "operation": "query", "query": {"sql": "SELECT 1"}})  # fmt: skip
    assert resp.status == 409 and resp.json["error"]["code"] == "CONNECTOR_REVOKED", resp.body
    assert system.api.connector(system.connector_id)["status"] == "online"


def _erp(system: SystemEnv):
    from tests.harness import Source

    return Source("erp", "sqlite", f"sqlite:///{system.sqlite_path}")
