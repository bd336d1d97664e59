"""Agent footprint: the binary's size and an idle agent's RSS and CPU, connected to a relay.

Starts a real relay (heartbeat every 15 s, the production default) and a real agent with
one SQLite source, waits until the connector is online, then samples the agent's process
tree with psutil once a second for ``--seconds`` (default 60): RSS (mean and max) and CPU
(process CPU time over the window, as % of one core). Measures the Python agent from the
venv, and the one-file binary ``dist/mini-connector`` when it exists (``make package``);
the binary's process tree is PyInstaller's bootloader plus the Python process it unpacks.

    .venv/bin/python bench/footprint.py [--seconds 60] [--binary dist/mini-connector]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import psutil
from _common import ROOT, figure

from tests.harness import Proc, Stack, command, run_cli, wait_until


def _tree(pid: int) -> list[psutil.Process]:
    p = psutil.Process(pid)
    return [p, *p.children(recursive=True)]


def measure(stack: Stack, argv0: list[str], name: str, seconds: float, work: Path) -> dict[str, float]:
    assert stack.api is not None and stack.relay is not None
    db = work / f"{name}.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY)")
    created = stack.api.create_connector(name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MC_AGENT_")}
    env["HOME"] = str(work)
    config = work / name / "agent.toml"
    base = [*argv0, "--config", str(config)]
    run_cli([*base, "configure", "--relay-url", stack.relay.ws_url, "--api-key", created["apiKey"]], env=env)
    run_cli([*base, "source", "add", "erp", "--type", "sqlite", "--url", f"sqlite:///{db}"], env=env)
    proc = Proc(name, [*base, "run"], env, work / f"{name}.log")
    stack.procs.append(proc)
    wait_until(lambda: stack.api.connector(created["id"])["status"] == "online", 60,  # type: ignore[union-attr]
               what=f"{name} online")  # fmt: skip
    tree = _tree(proc.pid)
    cpu0 = sum(sum(p.cpu_times()[:2]) for p in tree)
    t0 = time.monotonic()
    rss: list[float] = []
    while time.monotonic() - t0 < seconds:
        rss.append(sum(p.memory_info().rss for p in tree) / 2**20)
        time.sleep(1.0)  # a sampling interval, not a synchronisation
    cpu = sum(sum(p.cpu_times()[:2]) for p in tree) - cpu0
    wall = time.monotonic() - t0
    return {"rss_mean": sum(rss) / len(rss), "rss_max": max(rss), "cpu_pct": 100 * cpu / wall,
            "processes": len(tree), "seconds": wall}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--binary", default=str(ROOT / "dist" / "mini-connector"))
    args = ap.parse_args(argv)
    binary = Path(args.binary)
    if binary.exists():
        figure("binary size (dist/mini-connector)", binary.stat().st_size / 1e6, "MB")
    else:
        print(f"  no binary at {binary}: run 'make package' to measure it too")
    with tempfile.TemporaryDirectory(prefix="mc-footprint-") as tmp:
        work = Path(tmp)
        stack = Stack(work / "stack", tenant="footprint", heartbeat=15.0)
        try:
            stack.start_relay()
            runs = [("python-agent", command("mini-connector"))]
            if binary.exists():
                runs.append(("binary-agent", [str(binary)]))
            for name, argv0 in runs:
                r = measure(stack, argv0, name, args.seconds, work)
                print(f"  {name}: {r['processes']} process(es), {r['seconds']:.0f} s idle, connected", flush=True)
                figure(f"{name} idle RSS mean", r["rss_mean"], "MiB")
                figure(f"{name} idle RSS max", r["rss_max"], "MiB")
                figure(f"{name} idle CPU (% of one core)", r["cpu_pct"], "%")
        finally:
            stack.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
