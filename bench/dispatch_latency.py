"""Dispatch latency: SELECT 1 jobs at a steady rate through a real relay and agent.

Submits ``--rate`` jobs a second for ``--seconds`` (default 50/s for 20 s) to a relay on
its SQLite store with one agent on a SQLite source, and prints p50/p95/p99 of the time
from submit (before the POST) to the job's ``job_completed`` event on the events
WebSocket, and the CPU each process spent per job. Prints figures; no pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from _common import figure, percentile
from _load import drive, select1_stack


def run(rate: float, seconds: float, work: Path) -> dict[str, object]:
    n = int(rate * seconds)
    with select1_stack(work) as (stack, connector_id):
        # 32 clients at most, each paced to its share of ``rate``: a slow answer does not
        # hold the others back, so the offered load stays at ``rate``.
        out = asyncio.run(drive(stack, connector_id, n, concurrency=32, rate=rate, wait=120))
    latencies = [(out.clock.done[j][0] - start) * 1000 for j, start in out.submitted.items()
                 if j in out.clock.done]  # fmt: skip
    print(f"  jobs: {n} at {n / out.submit_secs:.1f}/s over {out.submit_secs:.1f}s; measured submit -> "
          f"job_completed event{'' if out.complete else ' (some never completed)'}")  # fmt: skip
    print(f"  statuses: {out.statuses()}")
    figures: dict[str, object] = {p: percentile(latencies, p) for p in (50, 95, 99)}
    figures["max"] = max(latencies) if latencies else float("nan")
    figures["meter"], figures["jobs"] = out.meter, n
    return figures


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
