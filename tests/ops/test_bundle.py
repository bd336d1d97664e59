"""``diagnose --bundle``: what the support bundle holds, and that it holds no secret."""

from __future__ import annotations

import base64
import json
import stat
import zipfile
from pathlib import Path

from tests.harness import Source, Stack, wait_until
from tests.ops.conftest import run_agent_cli

PASSWORD = "Pw-d0-not-leak-7781"


def test_bundle_holds_facts_and_no_secret(ops_stack: Stack, tmp_path: Path) -> None:
    """Logs, config, versions, facts are there; the key, the password, secret.key are not."""
    sqlite_db = tmp_path / "erp.db"
    sources = [
        Source("erp", "sqlite", f"sqlite:///{sqlite_db}"),
        Source("pg", "postgres", f"postgresql://reader:{PASSWORD}@127.0.0.1:1/db",
               {"sslmode": "disable"}),
    ]  # fmt: skip
    agent = ops_stack.add_agent("bundle", sources)  # runs, so it writes logs and status
    wait_until(lambda: (agent.config.parent / "logs" / "agent.log").exists(), 15, what="the agent's log")
    wait_until(lambda: "connected" in run_agent_cli(agent.config, "status", env=agent.env).out, 15,
               what="status to say connected")  # fmt: skip
    (agent.config.parent / "runner.py").write_text("# someone else's file in the config folder\n")
    target = tmp_path / "support.zip"
    r = run_agent_cli(agent.config, "diagnose", "--bundle", str(target), env=agent.env)
    assert r.code == 0, r.out + r.err
    assert "support bundle written" in r.out
    assert stat.S_IMODE(target.stat().st_mode) == 0o600

    with zipfile.ZipFile(target) as zf:
        names = {n.split("/", 1)[1] for n in zf.namelist()}
        blobs = {n: zf.read(n) for n in zf.namelist()}
    assert {"README.txt", "diagnose.txt", "config.json", "status.json", "versions.json",
            "system.json", "logs/agent.log"} <= names  # fmt: skip
    assert not any(n.endswith((".pem", ".key", ".db")) for n in names)

    secret_key = (agent.config.parent / "secret.key").read_bytes()
    private_pem = (agent.config.parent / "agent_key.pem").read_bytes()
    forbidden = [agent.api_key.encode(), PASSWORD.encode(), secret_key, secret_key.hex().encode(),
                 base64.b64encode(secret_key), private_pem.strip().splitlines()[1]]  # fmt: skip
    for name, data in blobs.items():
        for secret in forbidden:
            assert secret not in data, f"a secret leaked into {name}"

    cfg = json.loads(blobs["mini-connector-bundle/config.json"])
    assert cfg["relayUrl"] == ops_stack.relay.ws_url  # type: ignore[union-attr]
    assert cfg["apiKeyKept"] == "stored encrypted"
    # The agent's own files by name; another file in its folder is only counted.
    assert {"agent.toml", "secret.key", "agent_key.pem", "logs", "status.json"} <= set(cfg["stateFiles"])
    assert "runner.py" not in cfg["stateFiles"] and cfg["otherFiles"] >= 1  # (+ the harness's run log)
    pg = next(s for s in cfg["sources"] if s["name"] == "pg")
    assert pg["passwordKept"] == "stored encrypted" and PASSWORD not in pg["url"]
    versions = json.loads(blobs["mini-connector-bundle/versions.json"])
    assert versions["mini-connector"] and versions["python"]
    system = json.loads(blobs["mini-connector-bundle/system.json"])
    assert system["cpuCount"] >= 1 and system["hostname"]
    assert b"starting" in blobs["mini-connector-bundle/logs/agent.log"]
    status = json.loads(blobs["mini-connector-bundle/status.json"])
    assert status["running"] is True and status["connectorId"] == agent.connector_id


def test_unwritable_bundle_path_is_one_sentence_and_exit_13(ops_stack: Stack, tmp_path: Path) -> None:
    """A bundle path in a missing folder fails with its own exit code and no traceback."""
    agent = ops_stack.add_agent("bundle-bad", [], start=False)
    r = run_agent_cli(agent.config, "diagnose", "--bundle", str(tmp_path / "no" / "such" / "b.zip"),
                      env=agent.env)  # fmt: skip
    assert r.code == 13, r.out + r.err
    assert r.err.startswith("mini-connector: cannot write the support bundle") and "Traceback" not in r.err
