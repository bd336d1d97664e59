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
