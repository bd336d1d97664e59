"""A retryable failure is retried: a source that is down when a job first runs and back
before its retry serves the retry; one that stays down fails the job with its own error
(SOURCE_UNAVAILABLE) after ``retryLimit`` retries, never with JOB_ALREADY_FINISHED.

The source is MariaDB behind a TCP forwarder on a port of its own: before the forwarder
starts, nothing listens there, as for a database that is restarting.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.harness import Agent, Source, wait_until
from tests.system.conftest import SystemEnv
from tests.system.faultproxy import FaultProxy

pytestmark = [pytest.mark.system, pytest.mark.mysql]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def flaky(system: SystemEnv) -> Iterator[tuple[Agent, int, int]]:
    """An agent whose source ``flaky`` is MariaDB reached through a port nothing serves yet."""
    if not system.mysql_url:
        pytest.skip("MariaDB is not reachable")
    real = urlsplit(system.mysql_url)
    port = _free_port()
    url = urlunsplit(real._replace(netloc=f"{real.username or 'root'}@127.0.0.1:{port}"))
    agent = system.stack.add_agent("retry-agent", [Source("flaky", "mysql", url)])
    yield agent, port, real.port or 3306


def _attempt_failed(system: SystemEnv, job_id: str, attempts: int) -> bool:
    job = system.api.job(job_id)
    return job["attempts"] >= attempts and job["status"] in ("queued", "failed")


def test_a_source_back_before_the_retry_serves_it(system: SystemEnv, flaky: tuple[Agent, int, int]) -> None:
    agent, port, target = flaky
    job_id = system.api.submit(agent.connector_id, "flaky", sql="SELECT 41 + 1 AS answer",
                               options={"retryLimit": 2, "retryDelaySeconds": 2})  # fmt: skip
    # Attempt 1 meets a closed port; the job goes back to the queue for its retry.
    wait_until(lambda: system.api.job(job_id)["status"] == "queued" and system.api.job(job_id)["attempts"] >= 1,
               20, what="attempt 1 to fail and the job to wait for its retry")  # fmt: skip
    with FaultProxy(target, period=None, port=port):
        job = system.api.wait_job(job_id, 30)
        assert job["status"] == "succeeded", job
        assert job["attempts"] == 2, job
        assert system.api.results(job_id) == [{"answer": 42}]


def test_a_source_that_stays_down_fails_with_its_own_error(
    system: SystemEnv, flaky: tuple[Agent, int, int]
) -> None:
    agent, _port, _target = flaky
    job_id = system.api.submit(agent.connector_id, "flaky", sql="SELECT 1 AS one",
                               options={"retryLimit": 2, "retryDelaySeconds": 1})  # fmt: skip
    job = system.api.wait_job(job_id, 40)
    assert job["status"] == "failed", job
    assert job["attempts"] == 3, job  # the first run and two retries
    assert job["error"]["code"] == "SOURCE_UNAVAILABLE", job["error"]


def test_a_job_that_finds_the_pool_exhausted_is_retried(system: SystemEnv) -> None:
    """Pool exhausted is a retryable SOURCE_UNAVAILABLE: with one connection held by a long
    job, a second job's attempt times out waiting for the pool, and its retry, after the
    long job ends, succeeds."""
    if not system.mysql_url:
        pytest.skip("MariaDB is not reachable")
    opts = {"pool_size": "1", "max_overflow": "0", "pool_timeout": "1"}
    agent = system.stack.add_agent("pool-agent", [Source("one", "mysql", system.mysql_url, opts)])
    long_id = system.api.submit(agent.connector_id, "one", sql="SELECT SLEEP(5) AS slept")
    system.api.wait_status(long_id, {"running"}, timeout=20)
    job_id = system.api.submit(agent.connector_id, "one", sql="SELECT 7 AS seven",
                               options={"retryLimit": 5, "retryDelaySeconds": 2})  # fmt: skip
    job = system.api.wait_job(job_id, 40)
    assert job["status"] == "succeeded", job
    assert job["attempts"] >= 2, job  # the first attempt met the exhausted pool
    assert system.api.results(job_id) == [{"seven": 7}]
    assert system.api.wait_job(long_id, 30)["status"] == "succeeded"
