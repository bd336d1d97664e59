"""Support filters the shipped logs by level: a failed job's line is a WARNING (found with
``level=warning``), a cancelled one stays INFO, a job the agent could not open (an agent-side
fault, DECRYPTION_FAILED) is an ERROR."""

from __future__ import annotations

import base64

import pytest

from tests.harness import wait_until
from tests.system.conftest import SystemEnv

pytestmark = pytest.mark.system


def _lines(system: SystemEnv, job_id: str, level: str) -> list[dict]:
    return system.api.logs(system.connector_id, level=level, jobId=job_id)["logs"]


def test_a_failed_job_logs_a_warning_that_support_can_filter(system: SystemEnv) -> None:
    job_id = system.api.submit(system.connector_id, "erp", sql="SELECT no_such_column FROM no_such_table")
    assert system.api.wait_job(job_id, 30)["status"] == "failed"
    lines = wait_until(lambda: _lines(system, job_id, "warning"), 20,
                       what="the failed job's line among the WARNING logs")  # fmt: skip
    assert any("failed" in line["message"] and line["level"].lower() == "warning" for line in lines), lines
    assert not _lines(system, job_id, "error"), "a query's own failure is not an agent fault"


def test_a_job_the_agent_cannot_open_logs_an_error(system: SystemEnv) -> None:
    body = {"connectorId": system.connector_id, "source": "erp", "operation": "query",
            "sealedQuery": base64.b64encode(b"\0" * 64).decode()}  # fmt: skip
    job_id = system.api.call("POST", "/jobs", body, expect=(200, 202)).data["id"]
    job = system.api.wait_job(job_id, 30)
    assert job["status"] == "failed" and job["error"]["code"] == "DECRYPTION_FAILED", job
    lines = wait_until(lambda: _lines(system, job_id, "error"), 20, what="an ERROR line for the job")
    assert any("DECRYPTION_FAILED" in line["message"] for line in lines), lines
