"""Hostile agent: /health and an honest agent's job latency while another agent attacks.

Starts a relay on its SQLite store with one honest agent on a SQLite source (real
processes), then measures for ``--seconds`` each, first quiet and then while a hostile
agent (a separate process speaking the real protocol on its own connector) sends, in a
loop: decompression bombs (~2 KB zstd and ~65 KB zlib frames that would become 64 MiB)
for a job it does not hold and for its own job, and floods of 1,000-line log batches;
it reconnects whenever the relay closes it (after 10 violations, 4008).

Figures: ``/health`` p50/p99/max (one probe every 10 ms), the honest agent's ``SELECT 1``
latency p50/p99 (submit -> ``job_completed`` event, 4 at a time), the relay's RSS, what
the attacker sent and what the relay refused or dropped (its /metrics), and the ratios
attack / quiet within the run. Goal (issue 13): /health p99 < 100 ms under attack.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import _common  # noqa: F401 - puts the repository on sys.path
import aiohttp
import psutil
from _common import figure, percentile
from _load import EventClock, client_session, job_body, scrape

from tests.harness import Source, Stack

METRICS = (
    'mini_relay_agent_frames_refused_total{reason="foreign"}',
    'mini_relay_agent_frames_refused_total{reason="header"}',
    'mini_relay_agent_frames_refused_total{reason="payload"}',
    "mini_relay_chunk_payloads_decoded_total",
    "mini_relay_agent_log_lines_dropped_total",
    "mini_relay_agent_log_lines_total",
    'mini_relay_failed_handshakes_total{reason="rate_limited"}',
)


# ---------------------------------------------------------------- the attacker process


def _bomb(job_id: str, attempt: int, seq: int, payload: bytes, flags: int) -> bytes:
    header = json.dumps({"jobId": job_id, "attempt": attempt, "seq": seq, "rows": 1}).encode()
    return bytes([1, flags]) + len(header).to_bytes(2, "big") + header + payload


async def attack(ws_url: str, base_url: str, key: str, token: str, tenant: str, foreign: str) -> None:
    """Bombs (foreign and own), log floods, reconnects: until killed. Prints its counts."""
    import zstandard

    from shared import crypto, protocol

    zstd = zstandard.ZstdCompressor(level=1).compress(b"\0" * (64 << 20))
    zlib_bomb = zlib.compress(b"\0" * (64 << 20), 9)
    public = crypto.public_key_b64(crypto.generate_private_key())
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    flood = protocol.encode(protocol.make("agent.logs.v1", lines=[
        {"timestamp": stamp, "level": "INFO", "message": "flood " * 30} for _ in range(1000)]))  # fmt: skip
    hello = protocol.encode(protocol.make(
        "agent.hello.v1", protocolVersion=protocol.PROTOCOL_VERSION, agentVersion="0.0.0-hostile",
        hostname="hostile", os="linux", publicKey=public, capacity=1, sources=[{"name": "src", "type": "sqlite"}]))  # fmt: skip
    api = {"Authorization": f"Bearer {token}", "X-Tenant-ID": tenant}
    sent = {"bombs": 0, "logs": 0, "connections": 0}
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.ws_connect(f"{ws_url}/api/v1/agent/connect", max_msg_size=0,
                                           headers={"Authorization": f"Bearer {key}"}) as ws:  # fmt: skip
                    sent["connections"] += 1
                    await ws.send_str(hello)
                    while json.loads((await ws.receive()).data)["type"] != "relay.welcome.v1":
                        pass
                    own = await _own_job(http, base_url, api, ws)
                    frames = [_bomb(foreign, 1, 0, zstd, 2), _bomb(foreign, 1, 1, zlib_bomb, 1)]
                    if own is not None:
                        frames += [_bomb(own[0], own[1], 0, zstd, 2), _bomb(own[0], own[1], 1, zlib_bomb, 1)]
                    reader = asyncio.create_task(_drain(ws))  # so the relay's close is seen
                    i = 0
                    while not reader.done():
                        await ws.send_str(flood)
                        await ws.send_bytes(frames[i % len(frames)])
                        sent["logs"] += 1000
                        sent["bombs"] += 1
                        i += 1
                    sent["closes"] = sent.get("closes", 0) + 1
            except aiohttp.WSServerHandshakeError as exc:
                sent["refused"] = sent.get("refused", 0) + 1  # 429 after a 4008: at once again
                if exc.status != 429:
                    raise
            except (aiohttp.ClientError, ConnectionError, RuntimeError):
                pass
            print(json.dumps(sent), flush=True)


async def _drain(ws: Any) -> None:
    async for _ in ws:  # errors and acks, read and ignored; ends when the relay closes
        pass


async def _own_job(http: aiohttp.ClientSession, base_url: str, api: dict[str, str], ws: Any) -> tuple[str, int] | None:
    """Submit a job to the hostile connector and take its assignment (or none in 2 s)."""
    cid = None
    async with http.get(f"{base_url}/api/v1/connectors", headers=api) as resp:
        for c in (await resp.json())["data"]:
            if c["name"] == "hostile":
                cid = c["id"]
    if cid is None:
        return None
    async with http.post(f"{base_url}/api/v1/jobs", data=job_body(cid, "src", "SELECT 1"),
                         headers={**api, "Content-Type": "application/json"}) as resp:  # fmt: skip
        await resp.read()
    deadline = time.monotonic() + 2
    while (left := deadline - time.monotonic()) > 0:
        try:
            msg = await ws.receive(timeout=left)
        except TimeoutError:
            return None
        if msg.type != aiohttp.WSMsgType.TEXT:
            return None
        data = json.loads(msg.data)
        if data["type"] == "job.assign.v1":
            return data["jobId"], data["attempt"]
    return None


# ---------------------------------------------------------------- the measuring side


async def _health(http: aiohttp.ClientSession, url: str, stop: asyncio.Event) -> list[float]:
    took = []
    while not stop.is_set():
        t = time.monotonic()
        async with http.get(f"{url}/health") as resp:
            await resp.read()
            assert resp.status == 200
        took.append(time.monotonic() - t)
        await asyncio.sleep(0.01)  # the probe's pace, not synchronisation
    return took


async def _jobs(http: aiohttp.ClientSession, stack: Any, cid: str, clock: EventClock, stop: asyncio.Event) -> list[float]:
    api = stack.api
    headers = {"Authorization": f"Bearer {api.jobs_token}", "X-Tenant-ID": api.tenant, "Content-Type": "application/json"}
    took = []
    while not stop.is_set():
        t = time.monotonic()
        async with http.post(f"{api.base_url}/api/v1/jobs", data=job_body(cid, "src", "SELECT 1 AS one"),
                             headers=headers) as resp:  # fmt: skip
            job_id = (await resp.json())["data"]["id"]
        if not await clock.wait_all({job_id}, 60):
            raise RuntimeError(f"job {job_id} did not complete in 60 s")
        took.append(clock.done[job_id][0] - t)
    return took


async def phase(stack: Any, cid: str, seconds: float) -> dict[str, Any]:
    relay = stack.relay
    proc = psutil.Process(relay.proc.pid)
    async with client_session(8) as http:
        clock = EventClock()
        listener = asyncio.create_task(clock.run(http, relay.ws_url, stack.api.jobs_token, stack.api.tenant))
        await asyncio.wait_for(clock.ready.wait(), 15)
        before = await scrape(http, stack.api.base_url, METRICS)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(_health(http, stack.api.base_url, stop))]
        tasks += [asyncio.create_task(_jobs(http, stack, cid, clock, stop)) for _ in range(4)]
        rss = [proc.memory_info().rss]
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await asyncio.sleep(0.25)  # sampling the relay's RSS, not synchronisation
            rss.append(proc.memory_info().rss)
        stop.set()
        health, *jobs = await asyncio.gather(*tasks)
        after = await scrape(http, stack.api.base_url, METRICS)
        listener.cancel()
    return {"health": health, "jobs": [t for j in jobs for t in j], "rss": rss,
            "metrics": {k: after.get(k, 0.0) - before.get(k, 0.0) for k in METRICS}}  # fmt: skip


def report(name: str, out: dict[str, Any]) -> None:
    print(f" {name}")
    h, j = out["health"], out["jobs"]
    figure("/health p50", 1000 * percentile(h, 50), "ms")
    figure("/health p99", 1000 * percentile(h, 99), "ms")
    figure("/health max", 1000 * max(h), "ms")
    figure("/health probes", len(h), "")
    figure("honest job latency p50", 1000 * percentile(j, 50), "ms")
    figure("honest job latency p99", 1000 * percentile(j, 99), "ms")
    figure("honest jobs completed", len(j), "")
    figure("relay RSS max", max(out["rss"]) / 2**20, "MiB")
    for key, value in out["metrics"].items():
        if value:
            print(f"    {key} +{value:,.0f}")


async def measure(stack: Any, cid: str, seconds: float, work: Path) -> None:
    quiet = await phase(stack, cid, seconds)
    report("quiet", quiet)
    key = stack.api.create_connector("hostile")["apiKey"]
    foreign = stack.api.call("GET", "/jobs", params={"limit": 1}).data[0]["id"]  # the honest agent's
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # The attacker submits its own jobs with the platform's (service) token, as the bench does.
    argv = [sys.executable, __file__, "--attack", stack.relay.ws_url, stack.api.base_url, key,
            stack.api.jobs_token, stack.api.tenant, foreign]  # fmt: skip
    with open(work / "attacker.log", "w") as log:
        attacker = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            await asyncio.sleep(1.0)  # let the attack start (building bombs); a warm-up, not a sync
            hostile = await phase(stack, cid, seconds)
        finally:
            attacker.kill()
            attacker.wait()
    report("under attack", hostile)
    lines = (work / "attacker.log").read_text().splitlines()
    print(f"  attacker: {lines[-1] if lines else 'no output'}")
    print(" ratios (attack / quiet)")
    for label, fn in (("/health p50", lambda o: percentile(o["health"], 50)),
                      ("/health p99", lambda o: percentile(o["health"], 99)),
                      ("honest job p50", lambda o: percentile(o["jobs"], 50)),
                      ("honest job p99", lambda o: percentile(o["jobs"], 99))):  # fmt: skip
        figure(label, fn(hostile) / fn(quiet), "x")
    p99 = 1000 * percentile(hostile["health"], 99)
    print(f" goal /health p99 < 100 ms under attack: {'met' if p99 < 100 else 'NOT met'} ({p99:.1f} ms)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=15.0, help="length of each phase")
    ap.add_argument("--attack", nargs=6, metavar=("WS", "BASE", "KEY", "TOKEN", "TENANT", "FOREIGN"),
                    help=argparse.SUPPRESS)  # fmt: skip
    ap.add_argument("--penalty", type=float, default=None,
                    help="MC_RELAY_AGENT_VIOLATION_PENALTY for the relay (default: its own, 5 s; "
                         "0 lets the attacker reconnect at once after each 4008)")  # fmt: skip
    args = ap.parse_args(argv)
    if args.attack:
        asyncio.run(attack(*args.attack))
        return 0
    penalty = "relay default" if args.penalty is None else f"{args.penalty:g} s"
    print(f"hostile agent: {args.seconds:.0f} s quiet, then {args.seconds:.0f} s under attack "
          f"(SQLite store, violation penalty {penalty})")  # fmt: skip
    env = {} if args.penalty is None else {"MC_RELAY_AGENT_VIOLATION_PENALTY": str(args.penalty)}
    with tempfile.TemporaryDirectory(prefix="mc-bench-") as tmp:
        work = Path(tmp)
        db = work / "src.db"
        sqlite3.connect(db).close()
        with Stack(work / "stack", tenant="bench", heartbeat=5.0, extra_env=env) as stack:
            stack.start_relay()
            assert stack.api is not None
            agent = stack.add_agent("bench", [Source("src", "sqlite", f"sqlite:///{db}")])
            stack.api.run_job(agent.connector_id, "src", sql="SELECT 1")  # warm
            asyncio.run(measure(stack, agent.connector_id, args.seconds, work))
    return 0


if __name__ == "__main__":
    sys.exit(main())
