"""A job is `running` (with its startedAt) as soon as the agent has begun it, not only once
its query has produced columns; readers still get the columns before any row."""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any

import pytest

from tests.harness import scaled, wait_until
from tests.system.conftest import SystemEnv

pytestmark = [pytest.mark.system, pytest.mark.postgres]


def test_long_query_shows_running_with_started_at_while_it_executes(system: SystemEnv, pg_url: str) -> None:
    """A pg_sleep(30) job is running with a startedAt within seconds of submission, long
    before the query returns; then it is cancelled."""
    marker = f"mc_status_{secrets.token_hex(4)}"
    t0 = time.monotonic()
    job_id = system.api.submit(system.connector_id, "pg", sql=f"SELECT pg_sleep(30) AS {marker}")
    try:
        job = system.api.wait_status(job_id, {"running"}, timeout=5)
        elapsed = time.monotonic() - t0
        assert job["startedAt"] is not None, job
        assert elapsed < scaled(5), f"running only after {elapsed:.1f}s"
        # pg_sleep has not returned; its columns come from the COPY fast path's describe
        # (void is read as text), which may or may not have answered by now
        assert job["columns"] in ([], [{"name": marker, "type": "string"}]), job
        again = system.api.job(job_id)
        assert again["status"] == "running" and again["startedAt"] == job["startedAt"]
    finally:
        resp = system.api.cancel(job_id)
    assert resp.status == 200, resp.body
    assert system.api.wait_job(job_id, 15)["status"] == "cancelled"


def test_reader_waits_for_columns_of_a_running_job(system: SystemEnv, pg_url: str) -> None:
    """Results read while the job is running but has no columns yet still come out keyed
    by the columns (NDJSON) and with the header (CSV)."""
    job_id = system.api.submit(
        system.connector_id, "pg", sql="SELECT 7 AS seven, 'x' AS ex FROM (SELECT pg_sleep(2)) s"
    )
    system.api.wait_status(job_id, {"running"}, timeout=5)
    got: dict[str, Any] = {}

    def read_csv() -> None:
        got["csv"] = system.api.results_csv(job_id)

    reader = threading.Thread(target=read_csv, daemon=True)
    reader.start()
    rows = system.api.results(job_id)  # started before the columns are known
    assert rows == [{"seven": 7, "ex": "x"}]
    reader.join(scaled(30))
    assert got["csv"].splitlines() == ["seven,ex", "7,x"]
    job = wait_until(lambda: (j := system.api.job(job_id))["status"] == "succeeded" and j, 10,
                     what="the job to succeed")  # fmt: skip
    assert [c["name"] for c in job["columns"]] == ["seven", "ex"]
