"""`mini-connector run` as a real process: connects, runs a job, reports status, stops on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson

from agent import cli

from ..conftest import scaled
from .fake_relay import FakeRelay


async def _cli(*args: str, env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.cli", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), scaled(30))
    return proc.returncode or 0, out.decode()


@contextlib.asynccontextmanager
async def _running_agent(cfg: Path, api_key: str, sample_db: Path) -> AsyncIterator[tuple[FakeRelay, Any, dict[str, str]]]:
    """A fake relay, the agent configured for it with the source ``lite`` (``sample_db``),
    and ``mini-connector run`` as a real process connected to it: (relay, process, env).
    The test stops the process (SIGTERM); it is killed if still running, and its stderr
    must hold no traceback."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env.pop("MC_AGENT_CONFIG", None)
    async with FakeRelay(api_key, heartbeat=0.2) as relay:
        assert cli.main(["configure", "--config", str(cfg), "--relay-url", relay.url, "--api-key", api_key]) == 0
        assert cli.main(["source", "add", "lite", "--type", "sqlite", "--url", f"sqlite:///{sample_db}", "--config", str(cfg)]) == 0
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent.cli", "run", "--config", str(cfg), env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            await relay.wait_for(lambda: relay.ws, scaled(20), "the agent process to connect")
            yield relay, proc, env
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        stderr = (await proc.stderr.read()).decode()
        assert "Traceback" not in stderr and api_key not in stderr


async def test_run_serves_jobs_reports_status_and_stops_cleanly(tmp_path: Path, api_key: str, sample_db: Path):
    cfg = str(tmp_path / "agent.toml")
    async with _running_agent(tmp_path / "agent.toml", api_key, sample_db) as (relay, proc, env):
        await relay.assign("job_p", "lite", query={"sql": "SELECT count(*) AS n FROM items"})
        done = await relay.wait_for(lambda: relay.done("job_p"), scaled(20))
        assert done["status"] == "succeeded" and relay.rows("job_p") == [[3000]]

        async def connected() -> dict:
            rc, out = await _cli("status", "--json", "--config", cfg, env=env)
            return orjson.loads(out) if rc == 0 else {}

        deadline = asyncio.get_running_loop().time() + scaled(15)
        status: dict = {}
        while asyncio.get_running_loop().time() < deadline:
            status = await connected()
            if status.get("state") == "connected" and status.get("lastHeartbeat"):
                break
        assert status["state"] == "connected" and status["connectorId"] == relay.connector_id
        assert status["sources"] == [{"name": "lite", "type": "sqlite"}]
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(proc.wait(), scaled(20))
        assert rc == 0
    log = (tmp_path / "logs" / "agent.log").read_text()
    lines = [orjson.loads(ln) for ln in log.splitlines()]
    assert any(ln.get("jobId") == "job_p" for ln in lines)
    assert api_key not in log
    rc, out = await _cli("status", "--config", cfg, env=env)
    assert rc == 6 and "not running" in out


async def test_a_hand_edit_with_wrong_types_is_skipped_and_later_changes_still_apply(
    tmp_path: Path, api_key: str, sample_db: Path
):
    """The running agent watches its config: a hand edit it cannot read (a source's
    ``options`` that is not a table) is one warning, and the next good change applies."""
    cfg = tmp_path / "agent.toml"
    log = tmp_path / "logs" / "agent.log"
    async with _running_agent(cfg, api_key, sample_db) as (relay, proc, env):
        good = cfg.read_text()
        cfg.write_text(good + "\n[sources.bad]\ntype = \"sqlite\"\nurl = \"sqlite:////x.db\"\noptions = 5\n")
        await relay.wait_for(lambda: "cannot be read" in log.read_text(), scaled(10), "the warning")
        cfg.write_text(good)
        assert cli.main(["source", "add", "lite2", "--type", "sqlite", "--url", f"sqlite:///{sample_db}", "--config", str(cfg)]) == 0

        async def sources() -> list:
            rc, out = await _cli("status", "--json", "--config", str(cfg), env=env)
            return orjson.loads(out).get("sources", []) if rc == 0 else []

        deadline = asyncio.get_running_loop().time() + scaled(15)
        names: list = []
        while asyncio.get_running_loop().time() < deadline and "lite2" not in names:
            names = [s["name"] for s in await sources()]
        assert names == ["lite", "lite2"]
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), scaled(20)) == 0


async def test_status_shows_a_hostile_job_id_escaped_not_as_a_terminal_sequence(
    tmp_path: Path, api_key: str, sample_db: Path
):
    """A relay names the jobs: an escape sequence or line break in a job id is shown by
    ``status`` as text, never sent raw to the admin's terminal."""
    cfg = str(tmp_path / "agent.toml")
    slow = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    job_id = "job_\x1b[2J\nstate:          connected"
    async with _running_agent(tmp_path / "agent.toml", api_key, sample_db) as (relay, proc, env):
        await relay.assign(job_id, "lite", query={"sql": slow})
        deadline = asyncio.get_running_loop().time() + scaled(15)
        out = ""
        while asyncio.get_running_loop().time() < deadline and "job_" not in out:
            _, out = await _cli("status", "--config", cfg, env=env)
        assert "job_\\x1b[2J\\nstate:" in out
        assert "\x1b" not in out
        assert [ln for ln in out.splitlines() if ln.startswith("state:")] == ["state:          connected"]
        await relay.send("job.cancel.v1", jobId=job_id, attempt=1)
        await relay.wait_for(lambda: relay.done(job_id), scaled(10))
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), scaled(20)) == 0
