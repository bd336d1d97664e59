"""Small jobs per second through one relay and one agent (goal: 500 a second).

Submits ``--jobs`` ``SELECT 1`` jobs as fast as ``--threads`` clients can post them to a
relay on its SQLite store with one agent on a SQLite source (``--capacity`` jobs at
once), and counts ``job_completed`` events: jobs per second from the first submit to
the last completion, and the submit rate the clients reached. Prints figures; no pass/fail.
"""

from __future__ import annotations

import argparse
import re
import sqlite3
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import figure
from dispatch_latency import EventClock

from tests.harness import Api, Source, Stack


def run(jobs: int, threads: int, capacity: int, work: Path) -> tuple[float, float, dict[str, int]]:
    db = work / "src.db"
    sqlite3.connect(db).close()
    with Stack(work / "stack", tenant="bench", heartbeat=5.0) as stack:
        relay = stack.start_relay()
        api = stack.api
        assert api is not None
        agent = stack.add_agent("bench", [Source("src", "sqlite", f"sqlite:///{db}")], start=False)
        text = agent.config.read_text()
        agent.config.write_text(re.sub(r"(?m)^capacity = \d+", f"capacity = {capacity}", text))
        stack.start_agent(agent)
        api.run_job(agent.connector_id, "src", sql="SELECT 1")
        clock = EventClock(relay.ws_url, relay.token("bench", "admin"), "bench")
        ids: set[str] = set()
        lock = threading.Lock()
        local = threading.local()

        def submit(_: int) -> None:
            if not hasattr(local, "api"):
                local.api = Api(api.base_url, api.token, api.tenant)
            job_id = local.api.submit(agent.connector_id, "src", sql="SELECT 1 AS one")
            with lock:
                ids.add(job_id)

        t0 = time.monotonic()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(submit, range(jobs)))
        submitted = time.monotonic() - t0
        clock.wait_all(ids, 300)
        ends = [clock.done[j][0] for j in ids if j in clock.done]
        statuses: dict[str, int] = {}
        for j in ids:
            s = clock.done.get(j, (0.0, "missing"))[1]
            statuses[s] = statuses.get(s, 0) + 1
        for j in sorted(ids):
            if clock.done.get(j, (0.0, "missing"))[1] != "succeeded":
                job = api.job(j)
                print(f"  not completed: {j} {job.get('status')} {job.get('error')}", flush=True)
        clock.close()
    return len(ends) / (max(ends) - t0), jobs / submitted, statuses


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--capacity", type=int, default=16)
    args = ap.parse_args(argv)
    print(f"small jobs: {args.jobs:,} SELECT 1 jobs, {args.threads} clients, agent capacity {args.capacity}")
    with tempfile.TemporaryDirectory(prefix="mc-bench-") as tmp:
        rate, submit_rate, statuses = run(args.jobs, args.threads, args.capacity, Path(tmp))
    print(f"  statuses: {statuses}")
    figure("submit rate the clients reached", submit_rate, "jobs/s")
    figure("completed jobs per second", rate, "jobs/s")
    figure("ratio to the 500/s goal", rate / 500, "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
