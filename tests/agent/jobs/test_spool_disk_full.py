"""The spool on a full disk (agent/jobs/spool.py, agent/diskfull.py): a write that finds
no space is said once as a WARNING (no traceback, no error per job), the agent carries on,
and one INFO says when writes work again. The disk is "full" by SQLite's own page limit
(``PRAGMA max_page_count``), which fails writes with SQLITE_FULL as a full disk does;
tests/system/test_disk_full.py fills a real (tmpfs) disk under a running agent."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from agent.jobs.spool import AsyncSpool, Spool
from shared.protocol import Chunk, encode_chunk, make


def _done(job_id: str) -> dict[str, Any]:
    return make("job.done.v1", jobId=job_id, attempt=1, status="succeeded", chunks=4,
                rowCount=4, byteCount=20, error=None).data  # fmt: skip


def _chunks(job_id: str) -> dict[int, bytes]:
    return {seq: encode_chunk(Chunk(job_id, 1, seq, 1, b"[" + b"1," * 20_000 + b"1]")) for seq in range(4)}


async def test_a_full_spool_is_said_once_and_the_agent_carries_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inner = Spool(tmp_path / "spool.db")
    pages = inner.db.execute("PRAGMA page_count").fetchone()[0]
    inner.db.execute(f"PRAGMA max_page_count = {pages + 2}")  # the disk is full
    spool = AsyncSpool(inner)
    with caplog.at_level(logging.INFO, logger="agent.spool"):
        for n in range(6):  # alone and batched (submitted together: one transaction)
            spool.submit(Spool.record_done, f"job_{n}", 1, "pg", "query", None, _done(f"job_{n}"),
                         _chunks(f"job_{n}"))  # fmt: skip
        await spool.call(Spool.finished_jobs)
        for n in range(6, 8):
            await spool.call(Spool.finished_jobs)  # one at a time too
            spool.submit(Spool.record_done, f"job_{n}", 1, "pg", "query", None, _done(f"job_{n}"),
                         _chunks(f"job_{n}"))  # fmt: skip
        await spool.call(Spool.finished_jobs)
        records = [r for r in caplog.records if r.name == "agent.spool"]
        assert [r.levelno for r in records] == [logging.WARNING], [r.getMessage() for r in records]
        assert "disk of the agent's state folder is full: cannot write spool.db" in records[0].getMessage()
        assert not any(r.exc_info for r in records)

        inner.db.execute("PRAGMA max_page_count = 1000000")  # space is back
        spool.submit(Spool.record_done, "job_ok", 1, "pg", "query", None, _done("job_ok"), _chunks("job_ok"))
        # A write that failed halfway left nothing: no done without its chunks (which the
        # relay would wait for after a restart).
        assert [j.job_id for j in await spool.call(Spool.load)] == ["job_ok"]
        assert sum("spool.db is written again" in r.getMessage() for r in caplog.records) == 1
    await spool.close()
