"""Jobs are never lost and never duplicated: real relay and agent processes under faults.

Each fault test reads a 300,000-row PostgreSQL table (with short ``pg_sleep`` pauses spread
through the scan, so there is a "mid-stream" to hit) through a real ``mini-relay`` and
``mini-connector``, breaks something while the rows flow, and then checks the result
against a direct read of the source: the same row count, no id twice, and the same
content digest. Faults: ``kill -9`` of the relay (restarted on the same port and store),
``kill -9`` of the agent (started again), a proxy cutting the connection every 1.5 s,
the agent frozen (SIGSTOP) until its lease lapses, and the relay down while the agent
finishes a job and restarts. Smaller checks share one stack: cancel reaching
``pg_stat_activity``, jobKey idempotency, TTL expiry for an offline connector.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import psutil
import pytest

from shared.rows import json_safe
from tests import conftest as root
from tests.harness import Agent, Source, Stack, scaled, wait_until
from tests.system import dataset
from tests.system.faultproxy import FaultProxy

pytestmark = [pytest.mark.system, pytest.mark.postgres]

ROWS = 300_000
COLUMNS = ["id", "name", "amount", "created"]


# ---------------------------------------------------------------- the source


class Table:
    """The 300,000-row source table, its query and the digest of its rows."""

    def __init__(self, url: str, schema: str) -> None:
        self.url, self.schema = url, schema
        self._digests: dict[int, str] = {}

    def create(self) -> None:
        con = dataset._pg_connect(self.url)
        try:
            with con, con.cursor() as cur:
                cur.execute(f"CREATE SCHEMA {self.schema}")
                cur.execute(
                    f"CREATE TABLE {self.schema}.t (id integer PRIMARY KEY, name text,"
                    " amount numeric(12,2), created timestamp)"
                )
                cur.execute(
                    f"INSERT INTO {self.schema}.t SELECT g, 'row ' || g || ' ' || md5(g::text),"
                    " (g %% 100000) / 100.0 - 333.33, timestamp '2025-01-01' + g * interval '1 second'"
                    " FROM generate_series(1, %s) g",
                    (ROWS,),
                )
        finally:
            con.close()

    def drop(self) -> None:
        dataset.drop_postgres(self.url, self.schema)

    def sql(self, limit: int = ROWS, *, pause_every: int = 30_000, pause: float = 0.25) -> str:
        """A scan in id order (no sort, so rows stream) pausing every ``pause_every`` rows."""
        return (
            f"SELECT {', '.join(COLUMNS)} FROM {self.schema}.t WHERE id <= {limit}"
            f" AND (id % {pause_every} <> 0 OR pg_sleep({pause}) IS NOT NULL)"
        )

    def digest(self, limit: int = ROWS) -> str:
        if limit not in self._digests:
            _, rows = dataset.pg_read(
                self.url, f"SELECT {', '.join(COLUMNS)} FROM {self.schema}.t WHERE id <= {limit} ORDER BY id"
            )
            self._digests[limit] = _digest([[json_safe(v) for v in r] for r in rows])
        return self._digests[limit]


def _digest(rows: list[list[Any]]) -> str:
    h = hashlib.sha256()
    for row in rows:
        h.update(orjson.dumps(row))
        h.update(b"\n")
    return h.hexdigest()


def assert_exactly_once(stack: Stack, job_id: str, table: Table, limit: int = ROWS) -> None:
    """The job's result holds every source row once: count, distinct ids and digest."""
    assert stack.api is not None
    resp = stack.api.call("GET", f"/jobs/{job_id}/results", expect=200, timeout=120)
    rows = [orjson.loads(line) for line in resp.body.splitlines() if line.strip()]
    ids = [r["id"] for r in rows]
    assert len(rows) == limit, f"{len(rows)} rows, wanted {limit}"
    assert len(set(ids)) == limit, f"{limit - len(set(ids))} duplicated ids"
    got = _digest([[r[c] for c in COLUMNS] for r in sorted(rows, key=lambda r: r["id"])])
    assert got == table.digest(limit), "the rows differ from the source"
    job = stack.api.job(job_id)
    assert job["rowCount"] == limit, job


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Table]:
    url = root._service_url("PostgreSQL", "MC_TEST_POSTGRES_URL", root.DEFAULT_PG_URL)
    t = Table(url, f"mc_dur_{secrets.token_hex(4)}")
    t.create()
    try:
        yield t
    finally:
        t.drop()


# ---------------------------------------------------------------- stacks and probes


@pytest.fixture
def durable(tmp_path: Path, table: Table) -> Iterator[Stack]:
    """A relay on a fixed port with a fixed data key (restartable on the same store)."""
    s = Stack(tmp_path / "stack", tenant=f"dur-{secrets.token_hex(3)}", heartbeat=1.0)
    try:
        s.start_relay_on()
        yield s
    finally:
        s.close()
        print(s.logs_text(60))  # captured: pytest shows it only when the test failed


def _pg(table: Table) -> Source:
    return Source("pg", "postgres", table.url)


def _relay_db(stack: Stack) -> Path:
    return stack.workdir / "relay.db"


def stored_chunks(stack: Stack, job_id: str) -> tuple[str | None, int]:
    """(status, chunks stored) of a job, read straight from the relay's SQLite store."""
    con = sqlite3.connect(f"file:{_relay_db(stack)}?mode=ro", uri=True, timeout=5)
    try:
        row = con.execute("SELECT status, attempt FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return None, 0
        n = con.execute(
            "SELECT count(*) FROM result_chunks WHERE job_id = ? AND attempt = ?", (job_id, row[1])
        ).fetchone()[0]
        return row[0], int(n)
    except sqlite3.OperationalError:
        return None, 0
    finally:
        con.close()


def wait_mid_stream(stack: Stack, job_id: str, chunks: int = 2) -> None:
    wait_until(
        lambda: (s := stored_chunks(stack, job_id))[0] == "running" and s[1] >= chunks,
        60, interval=0.02, what=f"job {job_id} to have {chunks} chunks stored",
    )  # fmt: skip


def wait_succeeded(stack: Stack, job_id: str, timeout: float = 120) -> dict[str, Any]:
    assert stack.api is not None
    job = stack.api.wait_job(job_id, timeout, interval=0.2)
    # the error and attempt first: pytest cuts a long assertion message
    assert job["status"] == "succeeded", (job.get("error"), job.get("attempt"), job, stack.logs_text(40))
    return job


def agent_status(agent: Agent) -> dict[str, Any]:
    try:
        return json.loads((agent.config.parent / "status.json").read_text())
    except (OSError, ValueError):
        return {}


# ---------------------------------------------------------------- faults


def test_relay_killed_mid_stream_and_restarted_loses_and_duplicates_no_row(
    durable: Stack, table: Table
) -> None:
    """kill -9 of the relay mid-stream, restarted on the same store: the same attempt
    resumes and every row arrives exactly once."""
    agent = durable.add_agent("dur-relay-kill", [_pg(table)])
    assert durable.api is not None
    job_id = durable.api.submit(agent.connector_id, "pg", sql=table.sql(), options={"timeoutSeconds": 600})
    wait_mid_stream(durable, job_id)
    durable.kill_relay()
    status, chunks = stored_chunks(durable, job_id)
    assert status == "running", "the job must be mid-stream when the relay dies"
    print(f"relay killed with {chunks} chunks stored")
    durable.start_relay_on()
    job = wait_succeeded(durable, job_id)
    assert job["attempts"] == 1, "the same attempt resumes across a relay restart"
    assert_exactly_once(durable, job_id, table)


def test_agent_killed_mid_job_is_redelivered_and_rows_arrive_once(durable: Stack, table: Table) -> None:
    """kill -9 of the agent mid-job, started again: the job runs again as a new attempt
    and the result holds each row once (the abandoned attempt's rows are discarded)."""
    agent = durable.add_agent("dur-agent-kill", [_pg(table)])
    assert durable.api is not None and agent.proc is not None
    job_id = durable.api.submit(agent.connector_id, "pg", sql=table.sql(), options={"timeoutSeconds": 600})
    wait_mid_stream(durable, job_id)
    agent.proc.kill()
    durable.start_agent(agent)
    job = wait_succeeded(durable, job_id)
    assert job["attempts"] >= 2, job
    assert_exactly_once(durable, job_id, table)


def test_connection_cut_every_1_5_s_loses_and_duplicates_no_row(durable: Stack, table: Table) -> None:
    """A proxy that cuts the agent's connection every 1.5 s: the job still succeeds, every
    row exactly once, as one attempt resumed across the drops."""
    assert durable.relay is not None and durable.api is not None
    with FaultProxy(durable.relay.port, period=1.5) as proxy:
        agent = durable.add_agent("dur-cuts", [_pg(table)], relay_url=f"ws://127.0.0.1:{proxy.port}")
        cuts_before = proxy.cuts
        job_id = durable.api.submit(agent.connector_id, "pg", sql=table.sql(), options={"timeoutSeconds": 600})
        job = wait_succeeded(durable, job_id, 150)
        cuts = proxy.cuts - cuts_before
    print(f"{cuts} connections cut during the job; attempts {job['attempts']}")
    assert cuts >= 1, "the job finished before any cut; nothing was proved"
    assert job["attempts"] == 1, "a dropped connection resumes the same attempt"
    assert_exactly_once(durable, job_id, table)


def test_frozen_agent_lease_lapses_and_job_is_redelivered(durable: Stack, table: Table) -> None:
    """An agent that goes silent (SIGSTOP) mid-job loses its lease after three heartbeat
    intervals; the job goes back to the queue, and when the agent wakes it drops the old
    attempt and runs the new one: rows exactly once."""
    agent = durable.add_agent("dur-frozen", [_pg(table)])
    assert durable.api is not None and agent.proc is not None
    limit = 60_000
    job_id = durable.api.submit(agent.connector_id, "pg", sql=table.sql(limit, pause_every=20_000, pause=0.5),
                                options={"timeoutSeconds": 600})  # fmt: skip
    wait_mid_stream(durable, job_id, 1)
    os.kill(agent.proc.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: durable.api.job(job_id)["status"] == "queued", 20, interval=0.1,  # type: ignore[union-attr]
                   what="the lapsed lease to requeue the job")  # fmt: skip
    finally:
        os.kill(agent.proc.pid, signal.SIGCONT)
    job = wait_succeeded(durable, job_id)
    assert job["attempts"] >= 2, job
    assert_exactly_once(durable, job_id, table, limit)


def test_result_finished_while_relay_down_arrives_after_agent_restart(durable: Stack, table: Table) -> None:
    """The relay dies; the agent finishes the job, is restarted (the result waits in its
    spool); the relay comes back on the same store: the result arrives, once."""
    agent = durable.add_agent("dur-spool", [_pg(table)])
    assert durable.api is not None and agent.proc is not None
    limit = 20_000
    job_id = durable.api.submit(agent.connector_id, "pg", sql=table.sql(limit, pause_every=10_000, pause=1.0),
                                options={"timeoutSeconds": 600})  # fmt: skip
    durable.api.wait_status(job_id, {"running"}, 30)
    durable.kill_relay()

    def finished_on_agent() -> bool:
        jobs = agent_status(agent).get("activeJobs") or []
        return any(j["jobId"] == job_id and j["state"] == "awaiting-ack" for j in jobs)

    wait_until(finished_on_agent, 30, interval=0.1, what="the agent to finish the job")
    assert agent.proc.stop() == 0  # SIGTERM: a clean stop; the spool keeps the result
    durable.start_agent(agent, wait_online=False)
    durable.start_relay_on()
    job = wait_succeeded(durable, job_id, 90)
    assert job["attempts"] == 1, "the result was delivered, not produced again"
    assert_exactly_once(durable, job_id, table, limit)


# ---------------------------------------------------------------- cancel, jobKey, TTL


def _busy_backends(table: Table, agent: Agent) -> list[tuple[Any, ...]]:
    """The agent's PostgreSQL backends busy in pg_sleep (found by its client ports)."""
    assert agent.proc is not None
    port = urlsplit(table.url).port or 5432
    conns = psutil.Process(agent.proc.pid).net_connections(kind="tcp")
    ports = [c.laddr.port for c in conns if c.raddr and c.raddr.port == port]
    if not ports:
        return []
    return dataset.pg_read(
        table.url,
        "SELECT pid FROM pg_stat_activity WHERE state = 'active' AND wait_event = 'PgSleep'"
        f" AND client_port IN ({','.join(map(str, ports))})",
    )[1]


def test_cancel_reaches_the_database_within_5s_jobkey_dedupes_and_ttl_expires(
    durable: Stack, table: Table
) -> None:
    """Cancel stops the query at PostgreSQL within 5 s and a second cancel is 409; the same
    jobKey returns the existing job (200); a job for an offline connector with ttlSeconds 2
    expires with EXPIRED."""
    api = durable.api
    assert api is not None
    agent = durable.add_agent("dur-small", [_pg(table)])
    # cancel
    job_id = api.submit(agent.connector_id, "pg", sql="SELECT pg_sleep(60) AS slow")
    wait_until(lambda: _busy_backends(table, agent), 30, interval=0.1, what="pg_sleep to start")
    resp = api.cancel(job_id)
    assert resp.status == 200 and resp.data["status"] == "cancelled", resp.body
    t0 = time.monotonic()
    wait_until(lambda: not _busy_backends(table, agent), 5, interval=0.1, what="the query to stop")
    print(f"query left pg_stat_activity {time.monotonic() - t0:.2f}s after the cancel")
    again = api.cancel(job_id)
    assert again.status == 409 and again.json["error"]["code"] == "JOB_ALREADY_FINISHED"
    # jobKey
    key = f"nightly-{secrets.token_hex(4)}"
    body = {"connectorId": agent.connector_id, "source": "pg", "operation": "query",
            "query": {"sql": "SELECT 1 AS one", "params": {}}, "options": {"jobKey": key}}  # fmt: skip
    first = api.call("POST", "/jobs", body, expect=202)
    second = api.call("POST", "/jobs", body, expect=200)
    assert second.data["id"] == first.data["id"] and second.data["jobKey"] == key
    listed = api.call("GET", "/jobs", params={"connectorId": agent.connector_id, "limit": 100}, expect=200)
    assert sum(1 for j in listed.data if j["jobKey"] == key) == 1
    # TTL: the connector goes offline, its job waits past ttlSeconds and expires
    assert agent.proc is not None
    agent.proc.stop()
    wait_until(lambda: api.connector(agent.connector_id)["status"] == "offline", 15, what="offline")
    ttl_job = api.submit(agent.connector_id, "pg", sql="SELECT 1", options={"ttlSeconds": 2})
    job = api.wait_job(ttl_job, 30, interval=0.2)
    assert job["status"] == "expired" and job["error"]["code"] == "EXPIRED", job
    assert job["completedAt"] is not None
    assert time.monotonic() - t0 < scaled(60)
