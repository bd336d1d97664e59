"""``status`` and ``source list`` for admins: JSON forms, and no listening port on the agent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def test_a_source_added_or_removed_while_the_agent_runs_is_used_without_a_restart(
    ops_stack: Stack, tmp_path
) -> None:
    """source add on a running agent: it says the agent picks it up, the agent reloads it
    and tells the relay, and a job on it succeeds, all without a restart; source remove
    takes it away the same way (a job on it is then SOURCE_NOT_FOUND at submission)."""
    import sqlite3

    agent = ops_stack.add_agent("status-changed", [Source("erp", "sqlite", f"sqlite:///{tmp_path / 'e.db'}")])
    assert ops_stack.api is not None and agent.proc is not None
    pid = agent.proc.pid

    def status() -> dict:
        return json.loads(run_agent_cli(agent.config, "status", "--json", env=agent.env).out)

    wait_until(lambda: status()["state"] == "connected", 15, what="connected")
    db = sqlite3.connect(tmp_path / "crm.db")
    db.execute("CREATE TABLE c (id INTEGER)")
    db.execute("INSERT INTO c VALUES (7)")
    db.commit()
    db.close()
    added = run_agent_cli(agent.config, "source", "add", "crm", "--type", "sqlite",
                          "--url", f"sqlite:///{tmp_path / 'crm.db'}", env=agent.env)  # fmt: skip
    assert added.code == 0 and "picks this up" in added.err, added.err
    wait_until(lambda: {s["name"] for s in status()["sources"]} == {"erp", "crm"}, 15,
               what="the running agent to use crm")  # fmt: skip
    job, rows = ops_stack.api.run_job(agent.connector_id, "crm", sql="SELECT id FROM c")
    assert job["status"] == "succeeded" and rows == [{"id": 7}], (job, rows)
    text = run_agent_cli(agent.config, "status", env=agent.env).out
    assert "crm (sqlite)" in text and "note:" not in text
    removed = run_agent_cli(agent.config, "source", "remove", "crm", env=agent.env)
    assert removed.code == 0
    wait_until(lambda: [s["name"] for s in status()["sources"]] == ["erp"], 15, what="crm gone")
    wait_until(lambda: _refused(ops_stack, agent.connector_id), 15, what="the relay to refuse crm")
    assert agent.proc.pid == pid and agent.proc.popen.poll() is None  # never restarted


def _refused(stack: Stack, connector_id: str) -> bool:
    assert stack.api is not None
    try:
        stack.api.submit(connector_id, "crm", sql="SELECT 1")
    except Exception as exc:
        return "SOURCE_NOT_FOUND" in str(exc)
    return False


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


def test_status_says_when_another_agent_holds_the_connector(ops_stack: Stack, tmp_path) -> None:
    """A second agent with the same key (a copied config folder) is refused with
    DUPLICATE_CONNECTION: its status says 'connecting' and why, not just 'connecting'."""
    first = ops_stack.add_agent("status-dup", [])
    # The config and key, not the agent's own key pair: another machine, the same API key.
    second = _run_a_copy(ops_stack, first, tmp_path, "second-agent", "agent_key*", "agent_kem*")

    def why() -> str | None:
        out = run_agent_cli(second.config, "status", env=second.env).out
        return out if "why:" in out else None

    out = wait_until(why, 30, what="the second agent's status to say why")
    assert "state:          connecting" in out, out
    assert "DUPLICATE_CONNECTION" in out or "already connected" in out, out
    first_status = json.loads(run_agent_cli(first.config, "status", "--json", env=first.env).out)
    assert first_status["state"] == "connected"  # the first keeps the connector


def test_a_cloned_machine_takes_the_session_and_the_first_stops_for_good(ops_stack: Stack, tmp_path) -> None:
    """A copy of the whole state folder, key pair included (a cloned VM), is the same agent
    to the relay: the newer session is kept and the first agent exits 7 saying why. The
    systemd unit does not restart on 7 (``RestartPreventExitStatus``): restarting would
    take the session back, and the two would displace each other for ever."""
    from agent.admin.errors import EXIT_REPLACED
    from agent.admin.service import unit_text

    first = ops_stack.add_agent("status-clone", [])
    assert first.proc is not None
    second = _run_a_copy(ops_stack, first, tmp_path, "clone-agent")
    wait_until(lambda: not first.proc.alive(), 30, what="the first agent to stop once the clone connects")
    assert first.proc.popen.returncode == EXIT_REPLACED, first.proc.tail()
    assert "took over the session" in first.proc.tail(), first.proc.tail()

    def second_connected() -> bool:
        return json.loads(run_agent_cli(second.config, "status", "--json", env=second.env).out)["state"] == "connected"

    wait_until(second_connected, 30, what="the clone to be connected")
    assert ops_stack.api is not None
    assert ops_stack.api.connector(first.connector_id)["status"] == "online"
    unit = unit_text(exec_path="/usr/bin/mini-connector", config_path="/etc/mini-connector/agent.toml")
    assert f"RestartPreventExitStatus={EXIT_REPLACED}" in unit.splitlines()


def _run_a_copy(stack: Stack, first: Any, tmp_path: Path, name: str, *leave_out: str) -> Any:
    """Another machine started from a copy of ``first``'s state folder (its local status,
    logs and spool never copied; ``leave_out``: more to leave behind), running."""
    import shutil

    from tests.harness import Agent, Proc

    copy = tmp_path / name
    shutil.copytree(first.config.parent, copy,
                    ignore=shutil.ignore_patterns("status.json", "logs", "spool.db*", *leave_out))  # fmt: skip
    second = Agent(None, copy / "agent.toml", first.connector_id, first.api_key, first.env)
    stack.procs.append(Proc(name, [*ops_stack_command(), "--config", str(second.config), "run"],
                            second.env, tmp_path / f"{name}.log"))  # fmt: skip
    return second


def ops_stack_command() -> list[str]:
    from tests.harness import command

    return command("mini-connector")
