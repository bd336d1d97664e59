"""The relay's operations with real ``mini-relay`` and ``mini-connector`` processes: log
catch-up after a cut, the support log-level raise and its expiry, /metrics, downloads and
install.sh fetching from them, and a SIGTERM of the relay in the middle of a job."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import shutil
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import Agent, Source, Stack, scaled, wait_until

ROOT = Path(__file__).resolve().parents[2]
RECONNECT_MIN, RECONNECT_SPREAD = 2.0, 1.0


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / "mini-connector-linux").write_bytes(b"#!/bin/sh\necho fake agent build\n")
    env = {
        "MC_RELAY_DOWNLOADS_DIR": str(downloads),
        "MC_RELAY_RECONNECT_DELAY_MIN": str(RECONNECT_MIN),
        "MC_RELAY_RECONNECT_DELAY_SPREAD": str(RECONNECT_SPREAD),
        "MC_RELAY_SHUTDOWN_GRACE": "5",
    }
    s = Stack(tmp_path / "stack", tenant="relayops", heartbeat=1.0, extra_env=env)
    try:
        s.start_relay_on()
        yield s
    finally:
        s.close()


def _sqlite_source(tmp_path: Path) -> Source:
    db = tmp_path / "erp.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)")
    con.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"n{i}") for i in range(1, 51)])
    con.commit()
    con.close()
    return Source("erp", "sqlite", f"sqlite:///{db}")


def _relay_lines(stack: Stack, connector_id: str, **params: Any) -> list[dict[str, Any]]:
    """Every line the relay holds for the connector, paging with the cursor."""
    assert stack.api is not None
    lines: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = stack.api.logs(connector_id, limit=1000, cursor=cursor, **params)
        lines += page["logs"]
        cursor = page["nextCursor"]
        if not cursor:
            return lines


def _local_lines(agent: Agent) -> list[dict[str, Any]]:
    """The agent's local JSON lines that it ships (INFO and above, not the transport's)."""
    out = []
    for raw in (agent.config.parent / "logs" / "agent.log").read_text().splitlines():
        line = json.loads(raw)
        if line["level"] != "DEBUG" and not line["logger"].startswith("websockets"):
            out.append(line)
    return out


def _key(line: dict[str, Any]) -> tuple[str, str, str]:
    return (line["timestamp"], line["message"], line["logger"])


def test_lines_logged_while_disconnected_reach_the_relay_once_after_it_returns(
    stack: Stack, tmp_path: Path
) -> None:
    """A job's lines, then the relay is killed; the agent logs its failed reconnects while
    alone and is then restarted itself (so those lines are only in its local file); once
    the relay is back every shipped-level line of the local log is at the relay, exactly
    once (catch-up from the file after the welcome's logsThrough, deduplicated by line id)."""
    agent = stack.add_agent("catch-up", [_sqlite_source(tmp_path)])
    assert stack.api is not None
    job, _ = stack.api.run_job(agent.connector_id, "erp", "test")
    wait_until(lambda: any(x["jobId"] == job["id"] for x in _relay_lines(stack, agent.connector_id)),
               15, what="the job's lines at the relay")  # fmt: skip
    stack.kill_relay()
    wait_until(lambda: any("cannot reach the relay" in x["message"] for x in _local_lines(agent)),
               30, what="the agent to log while disconnected")  # fmt: skip
    assert agent.proc is not None
    agent.proc.stop()  # its buffer is gone: only the file holds the lines logged alone
    alone = [x for x in _local_lines(agent) if "cannot reach the relay" in x["message"]]
    stack.start_relay_on()
    stack.start_agent(agent)

    def all_shipped() -> bool:
        have = {_key(x) for x in _relay_lines(stack, agent.connector_id)}
        return {_key(x) for x in _local_lines(agent)} <= have

    wait_until(all_shipped, 30, interval=0.2, what="every local line at the relay")
    lines = _relay_lines(stack, agent.connector_id)
    dupes = [k for k, n in Counter(_key(x) for x in lines).items() if n > 1]
    assert not dupes, dupes
    assert {_key(x) for x in alone} <= {_key(x) for x in lines}
    job_lines = _relay_lines(stack, agent.connector_id, jobId=job["id"])
    assert job_lines and all(x["jobId"] == job["id"] for x in job_lines)
    warnings = _relay_lines(stack, agent.connector_id, level="warning")
    assert warnings and all(x["level"] in ("warning", "error", "critical") for x in warnings)


def test_support_raises_the_shipped_level_and_it_falls_back_to_info(stack: Stack, tmp_path: Path) -> None:
    """PATCH logLevel DEBUG for 0.05 minutes (as support): the agent ships DEBUG lines
    (a job's 'acknowledged' line), then goes back to INFO by itself when the time is up."""
    agent = stack.add_agent("raise", [_sqlite_source(tmp_path)])
    assert stack.relay is not None
    support = stack.relay.api(stack.tenant, "support")
    support.call("PATCH", f"/connectors/{agent.connector_id}",
                 {"logLevel": "DEBUG", "logLevelMinutes": 0.05}, expect=200)  # fmt: skip

    def says(text: str) -> bool:
        return any(text in x["message"] for x in _relay_lines(stack, agent.connector_id))

    wait_until(lambda: says("shipping DEBUG and above"), 15, what="the agent to ship DEBUG")
    assert stack.api is not None
    job, _ = stack.api.run_job(agent.connector_id, "erp", sql="SELECT id FROM t")
    wait_until(lambda: any(x["level"] == "debug" for x in
                           _relay_lines(stack, agent.connector_id, jobId=job["id"])),
               15, what="a DEBUG line of the job")  # fmt: skip
    wait_until(lambda: says("shipping INFO and above"), 20, what="the raise to expire")
    support.call("PATCH", f"/connectors/{agent.connector_id}", {"name": "renamed"}, expect=403)


def _metrics(stack: Stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    assert stack.api is not None
    text = stack.api.call("GET", "/metrics", expect=200).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_downloads_and_install_sh_fetching_a_verified_build(stack: Stack, tmp_path: Path) -> None:
    """/metrics parses as Prometheus text with the stack's numbers; the relay serves the
    build with its checksum; install.sh with nothing local downloads and verifies it."""
    agent = stack.add_agent("metrics", [_sqlite_source(tmp_path)])
    assert stack.api is not None and stack.relay is not None
    stack.api.run_job(agent.connector_id, "erp", sql="SELECT id, name FROM t")
    req = urllib.request.Request(f"{stack.relay.url}/api/v1/agent/connect",
                                 headers={"Authorization": "Bearer vmc_not_a_key"})  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=scaled(10))
    assert refused.value.code == 401
    m = _metrics(stack)
    assert m[("mini_relay_connected_agents", ())] == 1
    assert m[("mini_relay_jobs", (("state", "succeeded"),))] >= 1
    assert m[("mini_relay_dispatch_latency_seconds_count", ())] >= 1
    assert m[("mini_relay_result_bytes_total", ())] > 0
    assert m[("mini_relay_failed_handshakes_total", (("reason", "unauthorized"),))] >= 1

    with urllib.request.urlopen(f"{stack.relay.url}/downloads/mini-connector-linux", timeout=scaled(10)) as resp:
        assert resp.headers["X-Checksum-SHA256"] == hashlib.sha256(resp.read()).hexdigest()
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{stack.relay.url}/downloads/mini-connector-windows.exe", timeout=scaled(10))
    assert missing.value.code == 404 and json.loads(missing.value.read())["error"]["code"] == "NOT_FOUND"

    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(ROOT / "installers" / "linux" / "install.sh", lone / "install.sh")
    done = subprocess.run(
        ["bash", str(lone / "install.sh"), "--dry-run", "--api-key", agent.api_key,
         "--relay-url", stack.relay.ws_url],
        cwd=lone, capture_output=True, text=True, timeout=scaled(60), check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "checksum OK: mini-connector-linux" in done.stdout
    assert re.search(r"would run: install -m 0755 \S+/mini-connector-linux /usr/local/bin/mini-connector", done.stdout)
    assert agent.api_key not in done.stdout + done.stderr


PG_ROWS = 100_000


def _iso(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_sigterm_mid_job_sends_agents_away_and_the_job_completes_once(
    stack: Stack, pg_url: str
) -> None:
    """SIGTERM of the relay while a job streams: it exits 0 after telling the agent when
    to come back; the agent waits that long (plus jitter); the relay restarted on the same
    store and port finishes the same attempt, every row exactly once."""
    agent = stack.add_agent("sigterm", [Source("pg", "postgres", pg_url)])
    assert stack.api is not None and stack.relay is not None
    sql = (f"SELECT g AS id FROM generate_series(1, {PG_ROWS}) g"
           " WHERE g % 20000 <> 0 OR pg_sleep(0.4) IS NOT NULL")  # fmt: skip
    job_id = stack.api.submit(agent.connector_id, "pg", sql=sql, options={"timeoutSeconds": 300})
    stack.api.wait_status(job_id, {"running"})
    relay_proc = stack.relay.proc
    stopped_at = time.time()
    assert relay_proc.stop(timeout=20) == 0, relay_proc.tail()
    assert agent.proc is not None
    told = agent.proc.wait_for_line(
        re.compile(r"reconnect after ([\d.]+) s; reconnecting in ([\d.]+) s"), 10
    )
    asked, waits = float(told.group(1)), float(told.group(2))
    assert RECONNECT_MIN <= asked <= RECONNECT_MIN + RECONNECT_SPREAD, asked
    assert asked <= waits <= asked + 1.0 + 1e-6, (asked, waits)
    stack.start_relay_on()
    con = stack.wait_online(agent, timeout=30)
    assert _iso(con["connectedSince"]) - stopped_at >= asked - 0.5, (con, stopped_at, asked)
    job = stack.api.wait_job(job_id, 90, interval=0.2)
    assert job["status"] == "succeeded", (job, stack.logs_text(40))
    assert job["attempts"] == 1, job
    rows = stack.api.results(job_id)
    ids = [r["id"] for r in rows]
    assert len(ids) == PG_ROWS and set(ids) == set(range(1, PG_ROWS + 1))
    assert "agents did not disconnect" not in "\n".join(relay_proc.lines)
