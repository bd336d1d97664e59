"""Throughput under connection cuts: a 1,000,000-row PostgreSQL job with and without a
proxy cutting the agent's connection every 2 s.

Both runs go through the same TCP proxy (``tests/system/faultproxy.py``) between agent and
relay, once with cutting off and once cutting every ``--period`` seconds, so the only
difference is the drops. Each run is submit -> last byte of ``GET /jobs/{id}/results``
read live, and checks that every row arrived exactly once (count and distinct ids).
Prints rows/s for both, the number of cuts, and the ratio. Needs MC_TEST_POSTGRES_URL
(default the local test database); the table is dropped at the end.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from _common import figure
from throughput import bench_table, open_results

from tests.harness import HarnessError, Source, Stack
from tests.system.faultproxy import FaultProxy


def run(url: str, sql: str, work: Path, period: float | None) -> tuple[int, float, int, int]:
    """(rows, seconds, cuts during the job, attempts) of one job through the proxy."""
    with Stack(work, tenant="bench", heartbeat=5.0) as stack:
        relay = stack.start_relay()
        api = stack.api
        assert api is not None
        with FaultProxy(relay.port, period=None) as proxy:
            agent = stack.add_agent("bench", [Source("pg", "postgres", url)],
                                    relay_url=f"ws://127.0.0.1:{proxy.port}")  # fmt: skip
            api.run_job(agent.connector_id, "pg", sql="SELECT 1")  # warm up imports and the pool
            proxy.set_period(period)
            cuts0 = proxy.cuts
            t0 = time.monotonic()
            job_id = api.submit(agent.connector_id, "pg", sql=sql, options={"timeoutSeconds": 900})
            ids: set[bytes] = set()
            rows = 0
            tail = b""
            with open_results(api, job_id) as resp:
                while block := resp.read(1 << 20):
                    lines = (tail + block).split(b"\n")
                    tail = lines.pop()
                    for line in lines:
                        rows += 1
                        ids.add(line[: line.index(b",")])  # {"id":N, ... : the id field
            secs = time.monotonic() - t0
            cuts = proxy.cuts - cuts0
            proxy.set_period(None)
            job = api.job(job_id)
        if job["status"] != "succeeded":
            raise HarnessError(f"job ended {job['status']}: {job.get('error')}")
        if len(ids) != rows:
            raise HarnessError(f"{rows - len(ids)} duplicated rows")
    return rows, secs, cuts, job["attempts"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--period", type=float, default=2.0, help="seconds between cuts")
    args = ap.parse_args(argv)
    print(f"cuts: {args.rows:,} rows x 6 columns from PostgreSQL, cut every {args.period:g} s vs never")
    with bench_table(args.rows) as table:
        if table is None:
            return 0
        url, sql = table
        with tempfile.TemporaryDirectory(prefix="mc-bench-cuts-") as tmp:
            clean = run(url, sql, Path(tmp) / "clean", None)
            cut = run(url, sql, Path(tmp) / "cut", args.period)
    for name, (rows, secs, cuts, attempts) in (("no cuts", clean), (f"cut every {args.period:g} s", cut)):
        if rows != args.rows:
            print(f"  WARNING: {name}: {rows:,} rows, wanted {args.rows:,}")
        figure(f"{name} (rows/s)", rows / secs, "rows/s")
        figure(f"  {name}: seconds / cuts / attempts", secs, f"s, {cuts} cuts, {attempts} attempt(s)")
    figure("ratio cut / clean", 100 * (cut[0] / cut[1]) / (clean[0] / clean[1]), "%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
