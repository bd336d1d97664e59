"""Dispatch latency: SELECT 1 jobs at a steady rate through a real relay and agent.

Submits ``--rate`` jobs a second for ``--seconds`` (default 50/s for 20 s) to a relay on
its SQLite store with one agent on a SQLite source, and prints p50/p95/p99 of the time
from submit (before the POST) to the job's ``job_completed`` event on the events
WebSocket. If the events socket is unavailable it falls back to polling GET /jobs/{id}
and uses the relay's own queuedAt -> completedAt. Prints figures; no pass/fail.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sqlite3
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import figure, percentile

from tests.harness import FINAL_STATUSES, Api, Source, Stack, wait_until


class EventClock:
    """Records when each job's job_completed event arrives (monotonic seconds)."""

    def __init__(self, url: str, token: str, tenant: str) -> None:
        from websockets.sync.client import connect

        self.done: dict[str, tuple[float, str]] = {}
        self._cond = threading.Condition()
        self._cm = connect(
            f"{url}/api/v1/events?token={token}", additional_headers={"X-Tenant-ID": tenant},
            open_timeout=10, compression=None,
        )  # fmt: skip
        self.ws = self._cm.__enter__()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for frame in self.ws:
                now = time.monotonic()
                msg = json.loads(frame)
                if msg.get("type") == "job_completed":
                    with self._cond:
                        self.done[msg["data"]["jobId"]] = (now, msg["data"].get("status", "?"))
                        self._cond.notify_all()
        except Exception:  # the socket closing ends the clock
            return

    def wait_all(self, ids: set[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not ids <= self.done.keys():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self) -> None:
        self._cm.__exit__(None, None, None)


def _ts(value: str) -> float:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def run(rate: float, seconds: float, work: Path) -> dict[str, float]:
    db = work / "src.db"
    sqlite3.connect(db).close()
    with Stack(work / "stack", tenant="bench", heartbeat=5.0) as stack:
        relay = stack.start_relay()
        api = stack.api
        assert api is not None
        agent = stack.add_agent("bench", [Source("src", "sqlite", f"sqlite:///{db}")])
        # Warm up: the first job imports the SQL stack on the agent.
        api.run_job(agent.connector_id, "src", sql="SELECT 1")
        clock: EventClock | None
        try:
            clock = EventClock(relay.ws_url, relay.token("bench", "admin"), "bench")
        except Exception as exc:
            print(f"  (events WebSocket unavailable: {exc}; polling instead)")
            clock = None
        submitted: dict[str, float] = {}
        n = int(rate * seconds)
        t0 = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            def submit(i: int) -> None:
                client = Api(api.base_url, api.token, api.tenant)
                start = time.monotonic()
                job_id = client.submit(agent.connector_id, "src", sql="SELECT 1 AS one")
                submitted[job_id] = start

            for i in range(n):
                delay = t0 + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # pacing the load, not synchronisation
                pool.submit(submit, i)
        submit_secs = time.monotonic() - t0
        ids = set(submitted)
        latencies: list[float] = []
        statuses: dict[str, int] = {}
        if clock is not None and clock.wait_all(ids, 120):
            for job_id, started in submitted.items():
                end, status = clock.done[job_id]
                latencies.append((end - started) * 1000)
                statuses[status] = statuses.get(status, 0) + 1
            method = "submit -> job_completed event"
        else:
            for job_id in ids:
                job = wait_until(lambda j=job_id: (x := api.job(j))["status"] in FINAL_STATUSES and x,
                                 120, interval=0.2)  # fmt: skip
                statuses[job["status"]] = statuses.get(job["status"], 0) + 1
                latencies.append((_ts(job["completedAt"]) - _ts(job["queuedAt"])) * 1000)
            method = "queuedAt -> completedAt (polled)"
        if clock is not None:
            clock.close()
    print(f"  jobs: {n} at {n / submit_secs:.1f}/s over {submit_secs:.1f}s; measured {method}")
    print(f"  statuses: {statuses}")
    out = {p: percentile(latencies, p) for p in (50, 95, 99)}
    out["max"] = max(latencies)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=50)
    ap.add_argument("--seconds", type=float, default=20)
    args = ap.parse_args(argv)
    print(f"dispatch latency: SELECT 1 at {args.rate:g} jobs/s for {args.seconds:g}s")
    with tempfile.TemporaryDirectory(prefix="mc-bench-") as tmp:
        figures = run(args.rate, args.seconds, Path(tmp))
    for key in (50, 95, 99, "max"):
        figure(f"p{key}" if key != "max" else "max", figures[key], "ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
