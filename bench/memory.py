"""Memory: stream 5,000,000 PostgreSQL rows through a real agent and watch its RSS.

Starts a real ``mini-relay`` and ``mini-connector`` (tests/harness.py), measures the
agent's idle RSS once it is online, then runs one query over a fresh ``mc_bench_*``
table while a client reads the NDJSON results live, and samples the agent process's RSS
(psutil) every 0.5 s. Prints the samples, the peak, and the peak over idle against the
goal (idle + 64 MB). Figures, not pass/fail. Needs MC_TEST_POSTGRES_URL (default the
local test database).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from _common import figure
from throughput import bench_table, open_results

from tests.harness import HarnessError, Source, Stack

GOAL_MB = 64


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--interval", type=float, default=0.5)
    args = ap.parse_args(argv)
    print(f"memory: {args.rows:,} rows x 6 columns from PostgreSQL through a real agent")
    with bench_table(args.rows) as table:
        if table is None:
            return 0
        url, sql = table
        with tempfile.TemporaryDirectory(prefix="mc-bench-") as tmp:
            run(url, sql, Path(tmp), args)
    return 0


def run(url: str, sql: str, work: Path, args: argparse.Namespace) -> None:
    with Stack(work / "stack", tenant="bench", heartbeat=5.0) as stack:
        stack.start_relay()
        api = stack.api
        assert api is not None
        agent = stack.add_agent("bench", [Source("pg", "postgres", url)])
        assert agent.proc is not None
        proc = psutil.Process(agent.proc.pid)
        api.run_job(agent.connector_id, "pg", sql="SELECT 1")  # the SQL stack is now loaded
        idle = proc.memory_info().rss
        figure("agent idle RSS (after a first job)", idle / 2**20, "MiB")
        samples: list[tuple[float, int]] = []
        done = threading.Event()

        def sample() -> None:
            start = time.monotonic()
            while not done.is_set():
                samples.append((time.monotonic() - start, proc.memory_info().rss))
                done.wait(args.interval)

        sampler = threading.Thread(target=sample, daemon=True)
        t0 = time.monotonic()
        job_id = api.submit(agent.connector_id, "pg", sql=sql, options={"timeoutSeconds": 1800})
        sampler.start()
        rows = 0
        with open_results(api, job_id, timeout=1800) as resp:
            while block := resp.read(1 << 20):
                rows += block.count(b"\n")
        secs = time.monotonic() - t0
        done.set()
        sampler.join()
        job = api.job(job_id)
        if job["status"] != "succeeded":
            raise HarnessError(f"job ended {job['status']}: {job.get('error')}")
    step = max(1, len(samples) // 20)
    print("  t (s)    agent RSS (MiB)   over idle (MiB)")
    for t, rss in samples[::step]:
        print(f"  {t:6.1f}   {rss / 2**20:14.1f}   {(rss - idle) / 2**20:14.1f}")
    peak = max(r for _, r in samples)
    figure("rows read by the client", rows, "rows")
    figure("seconds, submit to last byte", secs, "s")
    figure("agent peak RSS", peak / 2**20, "MiB")
    figure("agent peak over idle", (peak - idle) / 2**20, "MiB")
    verdict = "within" if peak - idle <= GOAL_MB * 2**20 else "OVER"
    print(f"  {verdict} the goal of idle + {GOAL_MB} MB")


if __name__ == "__main__":
    sys.exit(main())
