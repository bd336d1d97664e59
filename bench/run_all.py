"""Run every benchmark in turn and print its figures (``make bench``). No pass/fail.

The issue-7 set: dispatch latency at 100 jobs/s, end-to-end throughput against a direct
read, small jobs per second, the 10,000-agent swarm, the agent's idle footprint and its
memory while streaming 5,000,000 rows. ``--quick`` runs smaller versions of each.
"""

from __future__ import annotations

import argparse
import sys
import time

import chunk_codecs
import dispatch_latency
import footprint
import memory
import small_jobs
import swarm
import throughput


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small versions of each (minutes, not a quarter hour)")
    args = ap.parse_args(argv)
    q = args.quick
    plan = (
        ("dispatch_latency", dispatch_latency, ["--rate", "100", "--seconds", "5" if q else "20"]),
        ("throughput", throughput, ["--rows", "200000"] if q else []),
        ("small_jobs", small_jobs, ["--jobs", "500" if q else "3000"]),
        ("swarm", swarm, ["--agents", "500", "--heartbeat", "2", "--seconds", "5"] if q else []),
        ("footprint", footprint, ["--seconds", "10" if q else "60"]),
        ("memory", memory, ["--rows", "500000" if q else "5000000"]),
        ("codecs", chunk_codecs, ["--rows", "100000"] if q else []),
    )
    t0 = time.monotonic()
    for name, bench, bench_args in plan:
        print(f"\n### {name}", flush=True)
        try:
            bench.main(bench_args)
        except Exception as exc:
            print(f"  {name} failed: {type(exc).__name__}: {exc}")
    print(f"\nall benchmarks done in {time.monotonic() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
