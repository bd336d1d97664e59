"""Run every benchmark in turn and print its figures (``make bench``). No pass/fail."""

from __future__ import annotations

import sys
import time

import dispatch_latency
import throughput


def main() -> int:
    t0 = time.monotonic()
    for name, bench in (("dispatch_latency", dispatch_latency), ("throughput", throughput)):
        print(f"\n### {name}", flush=True)
        try:
            bench.main([])
        except Exception as exc:
            print(f"  {name} failed: {type(exc).__name__}: {exc}")
    print(f"\nall benchmarks done in {time.monotonic() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
