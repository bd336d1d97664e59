"""``status`` and ``source list`` for admins: JSON forms, and no listening port on the agent."""

from __future__ import annotations

import json

import psutil

from tests.harness import Source, Stack, wait_until
from tests.ops.conftest import run_agent_cli


def test_status_json_and_no_listening_socket(ops_stack: Stack, tmp_path) -> None:
    """A running agent reports through its status file and listens on no port at all."""
    agent = ops_stack.add_agent("status", [Source("erp", "sqlite", f"sqlite:///{tmp_path / 'e.db'}")])

    def connected() -> dict | None:
        r = run_agent_cli(agent.config, "status", "--json", env=agent.env)
        data = json.loads(r.out)
        return data if r.code == 0 and data["state"] == "connected" else None

    data = wait_until(connected, 15, what="status --json to say connected")
    assert data["connectorId"] == agent.connector_id and data["sources"] == [{"name": "erp", "type": "sqlite"}]
    assert agent.proc is not None
    proc = psutil.Process(agent.proc.pid)
    listening = [c for p in [proc, *proc.children(recursive=True)] for c in p.net_connections("all")
                 if c.status == psutil.CONN_LISTEN or (c.type == 2 and not c.raddr)]  # fmt: skip
    assert listening == []

    listed = run_agent_cli(agent.config, "source", "list", "--json", env=agent.env)
    assert listed.code == 0 and json.loads(listed.out)[0]["name"] == "erp"


def test_status_of_a_stopped_agent_is_exit_6(ops_stack: Stack) -> None:
    """No running agent: status says so and exits 6 (JSON too)."""
    agent = ops_stack.add_agent("status-stopped", [], start=False)
    r = run_agent_cli(agent.config, "status", "--json", env=agent.env)
    assert r.code == 6 and json.loads(r.out)["running"] is False


def test_status_shows_the_running_agents_sources_and_says_when_the_config_changed(
    ops_stack: Stack, tmp_path
) -> None:
    """A source added while the agent runs is not in use until a restart: source add says
    so, and status shows what the agent uses now, the config's list, and the note."""
    import sqlite3

    agent = ops_stack.add_agent("status-changed", [Source("erp", "sqlite", f"sqlite:///{tmp_path / 'e.db'}")])
    wait_until(lambda: json.loads(run_agent_cli(agent.config, "status", "--json", env=agent.env).out)["state"]
               == "connected", 15, what="connected")  # fmt: skip
    sqlite3.connect(tmp_path / "crm.db").close()
    added = run_agent_cli(agent.config, "source", "add", "crm", "--type", "sqlite",
                          "--url", f"sqlite:///{tmp_path / 'crm.db'}", env=agent.env)  # fmt: skip
    assert added.code == 0 and "uses this after a restart" in added.err, added.err
    data = json.loads(run_agent_cli(agent.config, "status", "--json", env=agent.env).out)
    assert data["sources"] == [{"name": "erp", "type": "sqlite"}]
    assert {s["name"] for s in data["configSources"]} == {"erp", "crm"}
    text = run_agent_cli(agent.config, "status", env=agent.env).out
    assert "sources:        erp (sqlite)" in text and "added or changed crm" in text and "restart" in text


def test_status_says_why_it_is_not_connected(ops_stack: Stack, tmp_path) -> None:
    """An agent that cannot reach its relay shows 'connecting' and the reason."""
    from tests.harness import free_port

    agent = ops_stack.add_agent("status-why", [], wait_online=False, relay_url=f"ws://127.0.0.1:{free_port()}")

    def why() -> str | None:
        out = run_agent_cli(agent.config, "status", env=agent.env).out
        return out if "why:" in out else None

    out = wait_until(why, 20, what="status to say why it is not connected")
    assert "state:          connecting" in out and "cannot reach the relay" in out
    assert json.loads(run_agent_cli(agent.config, "status", "--json", env=agent.env).out)["lastError"]
