"""Swarm: one relay holding N simulated agents at real heartbeats, and dispatching meanwhile.

Starts a relay on its SQLite store (``tests/harness.py``) and one real agent on a SQLite
source; creates N connectors through the REST API; starts ``swarmers.py`` worker processes
(``--per-process`` agents each) that connect N agents speaking the real protocol with
``agent.hello.v1`` and ``agent.heartbeat.v1`` every ``--heartbeat`` seconds (15 s default);
once they are connected, measures the relay's RSS (psutil) against its RSS before the
swarm, and the dispatch latency of ``SELECT 1`` jobs to the real agent (submit ->
``job_completed`` event) at ``--rate`` jobs/s for ``--seconds``. Prints RSS per agent and
p50/p99; if not all N connect, prints how many did and why.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
from _common import ROOT, figure, percentile
from _load import drive

from shared.fdlimit import raise_nofile
from tests.harness import Api, Source, Stack


def create_connectors(api: Api, n: int) -> list[str]:
    def one(i: int) -> str:
        client = Api(api.base_url, api.token, api.tenant)
        return client.create_connector(f"swarm-{i}")["apiKey"]

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(n)))


def dispatch(stack: Stack, connector_id: str, rate: float, seconds: float) -> list[float]:
    """Submit ``SELECT 1`` jobs at ``rate`` a second to the real agent (``bench/_load.py``)
    and return submit -> ``job_completed`` latencies in ms."""
    out = asyncio.run(drive(stack, connector_id, int(rate * seconds), concurrency=32, rate=rate, wait=120))
    return [(out.clock.done[j][0] - s) * 1000 for j, s in out.submitted.items() if j in out.clock.done]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=10_000)
    ap.add_argument("--heartbeat", type=float, default=15.0)
    ap.add_argument("--per-process", type=int, default=5_000)
    ap.add_argument("--rate", type=float, default=20)
    ap.add_argument("--seconds", type=float, default=20)
    args = ap.parse_args(argv)
    soft, _ = raise_nofile()
    print(f"swarm: {args.agents:,} agents at {args.heartbeat:g}s heartbeats, SQLite store "
          f"(fd limit {soft:,})")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="mc-swarm-") as tmp:
        work = Path(tmp)
        db = work / "src.db"
        sqlite3.connect(db).close()
        with Stack(work / "stack", tenant="bench", heartbeat=args.heartbeat) as stack:
            # Registering --agents connectors up front is bulk provisioning by an admin: an
            # operator raises the admin limit (100 a minute) for it, as here. Jobs and
            # reads go with the platform's service token, on the shipped limits.
            bulk = str(args.agents + 1000)
            stack.extra_env.update(MC_RELAY_RATE_LIMIT_ADMIN=bulk, MC_RELAY_TENANT_RATE_LIMIT_ADMIN=bulk)
            relay = stack.start_relay()
            api = stack.api
            assert api is not None
            agent = stack.add_agent("real", [Source("src", "sqlite", f"sqlite:///{db}")])
            api.run_job(agent.connector_id, "src", sql="SELECT 1")
            proc = psutil.Process(relay.proc.pid)
            t0 = time.monotonic()
            keys = create_connectors(api, args.agents)
            print(f"  {len(keys):,} connectors created in {time.monotonic() - t0:.0f}s")
            time.sleep(1.0)
            rss0 = proc.memory_info().rss
            procs, groups = [], math.ceil(len(keys) / args.per_process)
            hold = 90 + args.agents / 100 + 2 * args.seconds + 3 * args.heartbeat
            for g in range(groups):
                keyfile = work / f"keys-{g}.txt"
                keyfile.write_text("\n".join(keys[g * args.per_process:(g + 1) * args.per_process]))
                procs.append(subprocess.Popen(
                    [sys.executable, str(ROOT / "bench" / "swarmers.py"), f"{relay.ws_url}/api/v1/agent/connect",
                     str(keyfile), "--heartbeat", str(args.heartbeat), "--seconds", str(hold)],
                    stdout=subprocess.PIPE, text=True, cwd=ROOT / "bench",
                ))  # fmt: skip
            counts = [0] * groups
            lines: list[str] = []

            def follow(g: int, p: subprocess.Popen[str]) -> None:
                assert p.stdout is not None
                for line in p.stdout:
                    lines.append(line.strip())
                    if line.startswith("connected "):
                        counts[g] = int(line.split()[1])

            for g, p in enumerate(procs):
                threading.Thread(target=follow, args=(g, p), daemon=True).start()
            t0 = time.monotonic()
            last, stalled = 0, time.monotonic()
            while sum(counts) < len(keys) and time.monotonic() - stalled < 30:
                time.sleep(1.0)
                if sum(counts) != last:
                    last, stalled = sum(counts), time.monotonic()
            reached = sum(counts)
            print(f"  {reached:,} agents connected in {time.monotonic() - t0:.0f}s")
            time.sleep(min(args.heartbeat, 15) + 2)  # a full round of heartbeats
            rss1 = proc.memory_info().rss
            lat = dispatch(stack, agent.connector_id, args.rate, args.seconds)
            rss2 = proc.memory_info().rss
            cpu = proc.cpu_percent(interval=2.0)
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(30)
    if reached < args.agents:
        print(f"  reached {reached:,} of {args.agents:,} agents; worker output: {lines[-4:]}")
    figure("agents connected", reached, "")
    figure("relay RSS before the swarm", rss0 / 2**20, "MiB")
    figure("relay RSS with the swarm", max(rss1, rss2) / 2**20, "MiB")
    figure("relay RSS per agent", (max(rss1, rss2) - rss0) / max(1, reached) / 1024, "KiB")
    figure("relay CPU with the swarm idle", cpu, "% of a core")
    figure(f"dispatch p50 ({len(lat)} jobs at {args.rate:g}/s)", percentile(lat, 50), "ms")
    figure("dispatch p99", percentile(lat, 99), "ms")
    figure("ratio p99 / 100 ms goal", percentile(lat, 99) / 100, "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
