"""A full disk under the relay's store and under the agent's state folder (real processes).

The disk is a small tmpfs (tests/system/smalldisk.py; skipped where mounting is not
permitted) filled by a file, as a real disk fills: writes fail with ENOSPC, and deleting
the file brings the space back without a restart. Expected (docs/OPERATIONS.md, "A full
disk"): the relay refuses new jobs with 503 ``SERVICE_UNAVAILABLE``, ends a job whose
result it cannot store as failed with that code (not running until its timeout), keeps
serving what it stored, says so once in its log, and works again once space is freed,
its store intact; the agent runs and streams jobs without its spool, says so once, and
keeps its heartbeat and ``status`` going.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Agent, Source, Stack, wait_until
from tests.system.smalldisk import MountRefused, fill, free, small_disk

pytestmark = [pytest.mark.system, pytest.mark.postgres]

BIG = "SELECT g, md5(g::text) AS h FROM generate_series(1, 200000) g"


@contextlib.contextmanager
def disk(folder: Path, size: int) -> Iterator[Path]:
    try:
        with small_disk(folder, size) as mounted:
            yield mounted
    except MountRefused as exc:
        pytest.skip(f"cannot mount a small tmpfs here: {exc}")


def lines_since(proc_lines: list[str], pattern: str) -> list[str]:
    return [line for line in proc_lines if pattern in line]


def test_relay_store_on_a_full_disk(tmp_path: Path, pg_url: str) -> None:
    with disk(tmp_path / "disk", 24 << 20) as mnt, Stack(tmp_path / "stack", heartbeat=0.5) as stack:
        stack.relay_db = mnt / "relay.db"
        stack.start_relay_on()  # a fixed port and data key: the restart below reads what is stored
        agent = stack.add_agent("full-relay", [Source("pg", "postgres", pg_url)])
        api = stack.api
        assert api is not None
        before, rows = api.run_job(agent.connector_id, "pg", sql="SELECT 1 AS x, 'kept' AS y")
        assert (mnt / "relay.db.reserve").exists()  # the space kept for jobs to end in
        relay_out = stack.relay.proc  # type: ignore[union-attr]
        mark = len(relay_out.lines)

        fill(mnt, leave=1 << 20)  # room for the job row, not for its result
        big = api.submit(agent.connector_id, "pg", sql=BIG, options={"retryLimit": 0, "timeoutSeconds": 120})
        # A job with retries left: its first attempt fails as big's does, then it waits in
        # the queue for space instead of spending its retries (and the customer's database)
        # on a disk that can take no row.
        again = api.submit(agent.connector_id, "pg", sql=BIG,
                           options={"retryLimit": 1, "retryDelaySeconds": 0, "timeoutSeconds": 120})  # fmt: skip
        t0 = time.monotonic()
        job = api.wait_job(big, 30)
        assert job["status"] == "failed", (job, stack.logs_text(30))
        assert time.monotonic() - t0 < 20  # ended when its chunk was refused, not at its timeout
        assert job["error"]["code"] == "SERVICE_UNAVAILABLE" and job["error"]["retryable"] is True
        assert "disk space" in job["error"]["message"]

        # New jobs: the contract's 503, no stack trace.
        resp = api.call("POST", "/jobs", {"connectorId": agent.connector_id, "source": "pg",
                                          "operation": "query", "query": {"sql": "SELECT 2"}})  # fmt: skip
        assert resp.status == 503, resp.text
        err = resp.json["error"]
        assert err["code"] == "SERVICE_UNAVAILABLE" and "disk space" in err["message"]
        assert "Traceback" not in resp.text and "sqlite" not in resp.text.lower()

        # Reads of what is stored keep working; health says the disk is full.
        assert api.results(before["id"]) == rows
        assert api.job(before["id"])["status"] == "succeeded"
        for path in ("/jobs", f"/connectors/{agent.connector_id}", f"/connectors/{agent.connector_id}/logs"):
            assert api.call("GET", path).status == 200, path
        health = api.health()
        assert health["status"] == "healthy" and health["checks"]["database"]["disk"] == "full"

        # Heartbeats still go through (the reserve): the agent stays online, its lastSeen moves.
        seen = api.connector(agent.connector_id)["lastSeen"]
        wait_until(lambda: api.connector(agent.connector_id)["lastSeen"] > seen, 10, what="a heartbeat stored")
        assert api.connector(agent.connector_id)["status"] == "online"
        assert relay_out.alive()
        wait_until(lambda: (j := api.job(again))["status"] == "queued" and j["attempts"] == 1, 20,
                   what="the retried job back in the queue")  # fmt: skip

        # Said once, no tracebacks, no flood of errors sent to the agent.
        out = list(relay_out.lines)[mark:]
        assert len(lines_since(out, "the store's disk is full")) == 1, "\n".join(out)
        assert not lines_since(out, "Traceback"), "\n".join(out)
        assert agent.proc is not None
        assert len(lines_since(list(agent.proc.lines), "relay reported an error")) <= 2

        # Space comes back: new jobs run again, with their results, without a restart.
        free(mnt)
        job = run_when_space_is_back(stack, agent)
        retried = api.wait_job(again, 60)
        assert (retried["status"], retried["attempts"], retried["rowCount"]) == ("succeeded", 2, 200_000), retried
        assert len(lines_since(list(relay_out.lines)[mark:], "space is back on the store's disk")) == 1
        assert api.health()["checks"]["database"]["disk"] == "ok"
        assert (mnt / "relay.db.reserve").exists()

        # A restart on a disk full to the last byte: the reserve lets the relay open its store.
        relay_out.stop()
        fill(mnt)
        stack.start_relay_on()
        api = stack.api
        assert api is not None
        assert api.health()["checks"]["database"]["disk"] == "full"
        assert api.results(before["id"]) == rows and api.job(job["id"])["rowCount"] == 200_000
        resp = api.call("POST", "/jobs", {"connectorId": agent.connector_id, "source": "pg",
                                          "operation": "query", "query": {"sql": "SELECT 2"}})  # fmt: skip
        assert resp.status == 503 and resp.json["error"]["code"] == "SERVICE_UNAVAILABLE"
        restarted = list(stack.relay.proc.lines)  # type: ignore[union-attr]
        assert len(lines_since(restarted, "the store's disk is full")) == 1, "\n".join(restarted)
        free(mnt)
        run_when_space_is_back(stack, agent)
        stack.close()
        con = sqlite3.connect(mnt / "relay.db")
        try:
            assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        finally:
            con.close()


def run_when_space_is_back(stack: Stack, agent: Agent) -> dict:
    """Submit the big job until the relay takes it again (it looks once a second), then
    wait for it: every row stored."""
    api = stack.api
    assert api is not None

    def submitted() -> str | None:
        r = api.call("POST", "/jobs", {"connectorId": agent.connector_id, "source": "pg",
                                       "operation": "query", "query": {"sql": BIG}})  # fmt: skip
        return r.data["id"] if r.status in (200, 202) else None

    job = api.wait_job(wait_until(submitted, 10, interval=0.2, what="a job taken once space is back"), 60)
    assert job["status"] == "succeeded" and job["rowCount"] == 200_000, job
    return job


def _status(agent: Agent) -> dict:
    try:
        return json.loads((agent.config.parent / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def test_agent_state_folder_on_a_full_disk(tmp_path: Path, pg_url: str) -> None:
    with disk(tmp_path / "disk", 4 << 20) as mnt, Stack(tmp_path / "stack", heartbeat=0.5) as stack:
        stack.start_relay()
        agent = stack.add_agent("full-agent", [Source("pg", "postgres", pg_url)], state_dir=mnt)
        api = stack.api
        assert api is not None and agent.proc is not None
        api.run_job(agent.connector_id, "pg", sql="SELECT 1 AS x")
        wait_until(lambda: _status(agent).get("state") == "connected" or None, 10, what="status connected")

        fill(mnt)
        filled = time.time()
        # Jobs run and stream without the spool: every row, each time.
        for _ in range(2):
            job, rows = api.run_job(agent.connector_id, "pg", sql=BIG, timeout=60)
            assert job["rowCount"] == 200_000 and len(rows) == 200_000
        job, rows = api.run_job(agent.connector_id, "pg", sql="SELECT 3 AS x")
        assert rows == [{"x": 3}]

        # status.json is still rewritten (in place: no block for a new file), so `status`
        # does not call a running agent gone; the heartbeat keeps the connector online.
        wait_until(lambda: _status(agent).get("updatedAt", 0) > filled + 1 or None, 10, what="status.json updated")
        status = json.loads(agent.cli("status", "--json"))
        assert status["running"] is True and status["state"] == "connected", status
        seen = api.connector(agent.connector_id)["lastSeen"]
        wait_until(lambda: api.connector(agent.connector_id)["lastSeen"] > seen, 10, what="a heartbeat")
        assert agent.proc.alive()

        out = list(agent.proc.lines)
        assert len(lines_since(out, "cannot write spool.db")) == 1, "\n".join(out[-40:])
        assert not lines_since(out, "Traceback"), "\n".join(out[-40:])
        assert len(lines_since(out, "cannot write status.json")) <= 1
        assert len(lines_since(out, "agent.log;")) <= 1  # the local log: said once on stderr
        # The warning reached the relay's copy of the agent's log too.
        logs = api.logs(agent.connector_id, level="warning")["logs"]
        assert any("cannot write spool.db" in line["message"] for line in logs), logs

        free(mnt)
        api.run_job(agent.connector_id, "pg", sql="SELECT 4 AS x")
        wait_until(lambda: lines_since(list(agent.proc.lines), "spool.db is written again") or None, 10,
                   what="the spool said it writes again")  # fmt: skip
