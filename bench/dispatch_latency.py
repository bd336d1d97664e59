"""Dispatch latency: SELECT 1 jobs at a steady rate through a real relay and agent.

Submits ``--rate`` jobs a second for ``--seconds`` (default 50/s for 20 s) to a relay on
its SQLite store with one agent on a SQLite source, and prints p50/p95/p99 of the time
from submit (before the POST) to the job's ``job_completed`` event on the events
WebSocket, and the CPU each process spent per job. Prints figures; no pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from _common import figure, percentile
from _load import CpuMeter, EventClock, client_session, job_body, submit_all

from tests.harness import Source, Stack


async def _drive(stack: Stack, connector_id: str, rate: float, seconds: float) -> dict[str, object]:
    relay, api = stack.relay, stack.api
    assert relay is not None and api is not None
    agent_proc = stack.agents[-1].proc
    assert agent_proc is not None
    n = int(rate * seconds)
    async with client_session(32) as http:
        clock = EventClock()
        listener = asyncio.create_task(clock.run(http, relay.ws_url, api.token, "bench"))
        await asyncio.wait_for(clock.ready.wait(), 15)
        meter = CpuMeter({"relay": relay.proc.pid, "agent": agent_proc.pid, "load generator": os.getpid()})
        meter.start()
        t0 = time.monotonic()
        body = job_body(connector_id, "src", "SELECT 1 AS one")
        # 32 clients at most, each paced to its share of ``rate``: a slow answer does not
        # hold the others back, so the offered load stays at ``rate``.
        submitted = await submit_all(http, api.base_url, api.token, "bench", body, n, concurrency=32, rate=rate)
        submit_secs = time.monotonic() - t0
        complete = await clock.wait_all(set(submitted), 120)
        meter.stop()
        listener.cancel()
    latencies, statuses = [], {}
    for job_id, started in submitted.items():
        end, status = clock.done.get(job_id, (float("nan"), "missing"))
        if status != "missing":
            latencies.append((end - started) * 1000)
        statuses[status] = statuses.get(status, 0) + 1
    print(f"  jobs: {n} at {n / submit_secs:.1f}/s over {submit_secs:.1f}s; measured submit -> "
          f"job_completed event{'' if complete else ' (some never completed)'}")  # fmt: skip
    print(f"  statuses: {statuses}")
    out: dict[str, object] = {p: percentile(latencies, p) for p in (50, 95, 99)}
    out["max"] = max(latencies) if latencies else float("nan")
    out["meter"], out["jobs"] = meter, n
    return out


def run(rate: float, seconds: float, work: Path) -> dict[str, object]:
    db = work / "src.db"
    sqlite3.connect(db).close()
    with Stack(work / "stack", tenant="bench", heartbeat=5.0) as stack:
        stack.start_relay()
        api = stack.api
        assert api is not None
        agent = stack.add_agent("bench", [Source("src", "sqlite", f"sqlite:///{db}")])
        # Warm up: the first job imports the SQL stack on the agent.
        api.run_job(agent.connector_id, "src", sql="SELECT 1")
        return asyncio.run(_drive(stack, agent.connector_id, rate, seconds))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=50)
    ap.add_argument("--seconds", type=float, default=20)
    args = ap.parse_args(argv)
    print(f"dispatch latency: SELECT 1 at {args.rate:g} jobs/s for {args.seconds:g}s")
    with tempfile.TemporaryDirectory(prefix="mc-bench-") as tmp:
        figures = run(args.rate, args.seconds, Path(tmp))
    for key in (50, 95, 99, "max"):
        figure(f"p{key}" if key != "max" else "max", figures[key], "ms")  # type: ignore[arg-type]
    figures["meter"].report(figures["jobs"], figure)  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    sys.exit(main())
