"""Cancels and timeouts stop the query at the database, not just in the relay's books."""

from __future__ import annotations

import secrets
import time
from urllib.parse import urlsplit

import psutil
import pytest

from tests.harness import scaled, wait_until
from tests.system import dataset
from tests.system.conftest import SystemEnv

pytestmark = [pytest.mark.system, pytest.mark.postgres]


def _active(pg_url: str, system: SystemEnv) -> list[tuple]:
    """The agent's PostgreSQL backends that are busy in pg_sleep right now.

    The agent reads through a server-side cursor, so pg_stat_activity shows
    ``FETCH FORWARD ...`` rather than our SQL; its backends are found instead by the client
    ports of the agent process's own connections, which no other test can share.
    """
    assert system.agent.proc is not None
    proc = psutil.Process(system.agent.proc.pid)
    port = urlsplit(pg_url).port or 5432
    ports = [c.laddr.port for c in proc.net_connections(kind="tcp") if c.raddr and c.raddr.port == port]
    if not ports:
        return []
    return dataset.pg_read(
        pg_url,
        "SELECT pid, state, wait_event, left(query, 100) FROM pg_stat_activity "
        f"WHERE state = 'active' AND wait_event = 'PgSleep' AND client_port IN ({','.join(map(str, ports))})",
    )[1]


def test_cancelled_pg_sleep_leaves_pg_stat_activity_within_5s(system: SystemEnv, pg_url: str) -> None:
    """POST /jobs/{id}/cancel stops a running pg_sleep(60) at the server within 5 seconds."""
    marker = f"mc_cancel_{secrets.token_hex(4)}"
    job_id = system.api.submit(system.connector_id, "pg", sql=f"SELECT pg_sleep(60) AS {marker}")
    wait_until(lambda: _active(pg_url, system) != [], 20, interval=0.1, what="pg_sleep to start")
    resp = system.api.cancel(job_id)
    assert resp.status == 200, resp.body
    assert resp.data["status"] == "cancelled" and resp.data["cancelledAt"]
    t0 = time.monotonic()
    wait_until(lambda: _active(pg_url, system) == [], 5, interval=0.1, what="the query to stop")
    print(f"query gone from pg_stat_activity {time.monotonic() - t0:.2f}s after cancel")
    job = system.api.wait_job(job_id, 10)
    assert job["status"] == "cancelled"
    again = system.api.cancel(job_id)
    assert again.status == 409 and again.json["error"]["code"] == "JOB_ALREADY_FINISHED"


def test_timeout_ends_timed_out_and_stops_the_query(system: SystemEnv, pg_url: str) -> None:
    """timeoutSeconds 2 on pg_sleep(60): the job ends timed_out and the query is gone."""
    marker = f"mc_timeout_{secrets.token_hex(4)}"
    t0 = time.monotonic()
    job_id = system.api.submit(
        system.connector_id, "pg", sql=f"SELECT pg_sleep(60) AS {marker}",
        options={"timeoutSeconds": 2, "retryLimit": 0},
    )  # fmt: skip
    job = system.api.wait_job(job_id, 20)
    elapsed = time.monotonic() - t0
    assert job["status"] == "timed_out", job
    assert elapsed < scaled(12), f"took {elapsed:.1f}s to time out a 2 s job"
    if job.get("error"):
        assert job["error"]["code"] == "TIMEOUT"
    wait_until(lambda: _active(pg_url, system) == [], 5, interval=0.1, what="the query to stop")


def test_agent_still_works_after_cancel(system: SystemEnv) -> None:
    _, rows = system.api.run_job(system.connector_id, "erp", sql="SELECT 1 AS one")
    assert rows == [{"one": 1}]
