"""Two relay nodes on one PostgreSQL store, real processes: the agent survives losing one.

Two ``mini-relay serve`` processes share a fresh PostgreSQL database (same JWT secret,
same data key). The agent is configured with both URLs and connects to node A. Through
node B: a job is submitted and read (B wakes A through NOTIFY), a cancel reaches the agent
on A, and B's event stream carries A's ``job_started``. Then node A is killed (-9) in the
middle of a 100,000-row job: the agent moves to B and the job completes with every row
exactly once (count, distinct ids and digest against the source).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from websockets.sync.client import connect as ws_connect

from tests import conftest as root
from tests.harness import Agent, Relay, Source, Stack, scaled, wait_until
from tests.system.test_durability import Table, assert_exactly_once

pytestmark = [pytest.mark.system, pytest.mark.postgres]

LIMIT = 100_000


@pytest.fixture
def table() -> Iterator[Table]:
    url = root._service_url("PostgreSQL", "MC_TEST_POSTGRES_URL", root.DEFAULT_PG_URL)
    t = Table(url, f"mc_multi_{secrets.token_hex(4)}")
    t.create()
    try:
        yield t
    finally:
        t.drop()


def _status(agent: Agent) -> dict[str, Any]:
    try:
        return json.loads((agent.config.parent / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def _on(agent: Agent, relay: Relay) -> bool:
    st = _status(agent)
    return st.get("relayUrl") == relay.ws_url and st.get("state") == "connected"


def _chunks_stored(db_url: str, job_id: str) -> int:
    con = psycopg2.connect(db_url.replace("postgresql+psycopg2://", "postgresql://"))
    try:
        with con.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM result_chunks c JOIN jobs j ON j.id = c.job_id AND j.attempt = c.attempt"
                " WHERE j.id = %s AND j.status = 'running'", (job_id,),
            )  # fmt: skip
            return int(cur.fetchone()[0])
    finally:
        con.close()


def test_two_nodes_serve_one_agent_and_survive_losing_the_node_that_holds_it(
    tmp_path: Path, pg_database: str, table: Table
) -> None:
    """Jobs submitted and read on node B run on the agent held by node A (cancel and
    events too); node A killed mid-job, the agent moves to B and the job's rows arrive
    exactly once."""
    stack = Stack(tmp_path / "stack", tenant=f"multi-{secrets.token_hex(3)}", heartbeat=1.0)
    try:
        node_a = stack.start_relay_node(pg_database)
        node_b = stack.start_relay_node(pg_database)
        api_b = node_b.platform_api(stack.tenant)
        agent = stack.add_agent("multi", [Source("pg", "postgres", table.url)],
                                relay_url=f"{node_a.ws_url},{node_b.ws_url}")  # fmt: skip
        wait_until(lambda: _on(agent, node_a), 15, what="the agent connected to node A")
        assert agent.cli("status").count("relay:") == 1

        # Submitted and read on B while the agent is on A: NOTIFY wakes A, and B's event
        # stream carries the job_completed published on A.
        token = node_b.token(stack.tenant, "admin")
        events_url = f"{node_b.ws_url}/api/v1/events?token={token}"
        with ws_connect(events_url, additional_headers={"X-Tenant-ID": stack.tenant}) as events:
            job, rows = api_b.run_job(agent.connector_id, "pg", sql="SELECT 41 + 1 AS answer", timeout=30)
            assert rows == [{"answer": 42}]

            def completed() -> bool:
                msg = json.loads(events.recv(timeout=scaled(10)))
                return msg["type"] == "job_completed" and msg["data"]["jobId"] == job["id"]

            wait_until(completed, 10, what="job_completed on node B's event stream")
        assert api_b.connector(agent.connector_id)["status"] == "online"

        # A cancel on B stops the job on the agent held by A.
        slow = api_b.submit(agent.connector_id, "pg", sql="SELECT pg_sleep(60) AS slow")

        def running_on_agent() -> list[str]:
            return [j.get("jobId") for j in _status(agent).get("activeJobs") or []]

        wait_until(lambda: slow in running_on_agent(), 15, interval=0.1, what="the slow job on the agent")
        assert api_b.cancel(slow).status == 200
        wait_until(lambda: slow not in running_on_agent(), 5, interval=0.1,
                   what="the cancel to reach the agent on node A")  # fmt: skip

        # Node A dies mid-stream: the agent moves to B, the job completes exactly once.
        job_id = api_b.submit(agent.connector_id, "pg", sql=table.sql(LIMIT, pause_every=20_000, pause=0.5),
                              options={"timeoutSeconds": 300})  # fmt: skip
        wait_until(lambda: _chunks_stored(pg_database, job_id) >= 2, 60, interval=0.05,
                   what="the job to be mid-stream on node A")  # fmt: skip
        node_a.proc.kill()
        wait_until(lambda: _on(agent, node_b), 15, interval=0.1, what="the agent to move to node B")
        stack.relay, stack.api = node_b, api_b
        job = api_b.wait_job(job_id, 90, interval=0.2)
        assert job["status"] == "succeeded", (job, stack.logs_text(40))
        print(f"attempts after losing node A: {job['attempts']}")
        assert_exactly_once(stack, job_id, table, LIMIT)
        assert api_b.connector(agent.connector_id)["status"] == "online"
    finally:
        stack.close()
        print(stack.logs_text(60))  # captured: pytest shows it only when the test failed
