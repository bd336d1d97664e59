"""The platform side of the job benchmarks: submit jobs cheaply, time their completion,
and count what each process spent.

The load generator shares the machine with the relay and the agent (2 cores here), so it
must cost little: one asyncio loop, aiohttp with keep-alive connections (urllib opened a
new TCP connection and a thread per request and took about a third of the CPU), and the
events WebSocket for completion times. ``CpuMeter`` reports CPU seconds per process, so a
figure can be read as "CPU milliseconds per job" as well as jobs per second: the first is
steady on a noisy machine, the second is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _common  # noqa: F401 - puts the repository on sys.path
import aiohttp
import orjson
import psutil

from tests.harness import Source, Stack


class EventClock:
    """Records when each job's ``job_completed`` event arrives (monotonic seconds)."""

    def __init__(self) -> None:
        self.done: dict[str, tuple[float, str]] = {}
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    async def run(self, session: aiohttp.ClientSession, ws_url: str, token: str, tenant: str) -> None:
        url = f"{ws_url}/api/v1/events?token={token}"
        async with session.ws_connect(url, headers={"X-Tenant-ID": tenant}, autoping=True) as ws:
            self.ready.set()
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                at = time.monotonic()
                event = orjson.loads(msg.data)
                if event.get("type") == "job_completed":
                    data = event["data"]
                    self.done[data["jobId"]] = (at, data.get("status", "?"))
                    self._changed.set()

    async def wait_all(self, ids: set[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not ids <= self.done.keys():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                return False
        return True


async def submit_all(
    session: aiohttp.ClientSession, base_url: str, token: str, tenant: str, body: bytes, n: int,
    *, concurrency: int, rate: float | None = None,
) -> dict[str, float]:  # fmt: skip
    """POST ``body`` to /jobs ``n`` times, ``concurrency`` at once, paced to ``rate`` a
    second if given; returns job id -> monotonic time just before its POST."""
    headers = {"Authorization": f"Bearer {token}", "X-Tenant-ID": tenant,
               "Content-Type": "application/json"}  # fmt: skip
    url = f"{base_url}/api/v1/jobs"
    submitted: dict[str, float] = {}
    queue: asyncio.Queue[int | None] = asyncio.Queue()
    t0 = time.monotonic()

    async def worker() -> None:
        while (i := await queue.get()) is not None:
            if rate:
                delay = t0 + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)  # pacing the load, not synchronisation
            start = time.monotonic()
            async with session.post(url, data=body, headers=headers) as resp:
                payload = await resp.read()
                if resp.status not in (200, 202):
                    raise RuntimeError(f"POST /jobs answered {resp.status}: {payload[:300]!r}")
            submitted[orjson.loads(payload)["data"]["id"]] = start

    for i in range(n):
        queue.put_nowait(i)
    for _ in range(concurrency):
        queue.put_nowait(None)
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return submitted


def job_body(connector_id: str, source: str, sql: str) -> bytes:
    return orjson.dumps({"connectorId": connector_id, "source": source, "operation": "query",
                         "query": {"sql": sql, "params": {}}})  # fmt: skip


def client_session(concurrency: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency + 4))


class CpuMeter:
    """CPU seconds (user + system) spent by named processes between ``start`` and ``stop``."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.start_at: dict[str, float] = {}
        self.spent: dict[str, float] = {}
        self.wall = 0.0
        self._t0 = 0.0

    @staticmethod
    def _cpu(proc: psutil.Process) -> float:
        times = proc.cpu_times()
        return times.user + times.system

    def start(self) -> None:
        self._t0 = time.monotonic()
        self.start_at = {name: self._cpu(p) for name, p in self.procs.items()}

    def stop(self) -> None:
        self.wall = time.monotonic() - self._t0
        self.spent = {name: self._cpu(p) - self.start_at[name] for name, p in self.procs.items()}

    def report(self, jobs: int, figure: Callable[[str, float, str], Any]) -> None:
        for name, secs in self.spent.items():
            figure(f"CPU per job, {name}", 1000 * secs / max(1, jobs), "ms")
            figure(f"  {name} busy (share of one core)", 100 * secs / max(1e-9, self.wall), "%")


async def scrape(session: aiohttp.ClientSession, base_url: str, names: tuple[str, ...]) -> dict[str, float]:
    """The relay's /metrics values for ``names`` (unlabelled samples)."""
    async with session.get(f"{base_url}/metrics") as resp:
        text = await resp.text()
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key in names:
            out[key] = float(value)
    return out


@dataclass
class Run:
    """What ``drive`` measured: job id -> submit time, the completion clock, the CPU
    meter, when submitting started and how long it took, and /metrics deltas."""

    submitted: dict[str, float]
    clock: EventClock
    meter: CpuMeter
    t0: float
    submit_secs: float
    complete: bool
    metrics: dict[str, float]

    def statuses(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for job_id in self.submitted:
            status = self.clock.done.get(job_id, (0.0, "missing"))[1]
            out[status] = out.get(status, 0) + 1
        return out


@contextlib.contextmanager
def select1_stack(work: Path, capacity: int | None = None) -> Iterator[tuple[Stack, str]]:
    """A relay on its SQLite store and one agent on a SQLite source ``src`` (with
    ``capacity`` jobs at once if given), warmed up with a first job; yields the stack and
    the connector id."""
    db = work / "src.db"
    sqlite3.connect(db).close()
    with Stack(work / "stack", tenant="bench", heartbeat=5.0) as stack:
        stack.start_relay()
        api = stack.api
        assert api is not None
        agent = stack.add_agent("bench", [Source("src", "sqlite", f"sqlite:///{db}")], start=False)
        if capacity is not None:
            text = agent.config.read_text()
            agent.config.write_text(re.sub(r"(?m)^capacity = \d+", f"capacity = {capacity}", text))
        stack.start_agent(agent)
        api.run_job(agent.connector_id, "src", sql="SELECT 1")  # imports and the pool, warm
        yield stack, agent.connector_id


async def drive(
    stack: Stack, connector_id: str, n: int, *, concurrency: int, rate: float | None = None,
    metrics: tuple[str, ...] = (), wait: float = 300,
) -> Run:  # fmt: skip
    """Submit ``n`` ``SELECT 1`` jobs (``submit_all``), wait for their ``job_completed``
    events, and meter the CPU of the relay, the agent and this process meanwhile."""
    relay, api = stack.relay, stack.api
    assert relay is not None and api is not None
    agent_proc = stack.agents[-1].proc
    assert agent_proc is not None
    async with client_session(concurrency) as http:
        clock = EventClock()
        listener = asyncio.create_task(clock.run(http, relay.ws_url, api.jobs_token or "", api.tenant or ""))
        await asyncio.wait_for(clock.ready.wait(), 15)
        before = await scrape(http, api.base_url, metrics) if metrics else {}
        meter = CpuMeter({"relay": relay.proc.pid, "agent": agent_proc.pid, "load generator": os.getpid()})
        meter.start()
        t0 = time.monotonic()
        body = job_body(connector_id, "src", "SELECT 1 AS one")
        submitted = await submit_all(http, api.base_url, api.jobs_token or "", api.tenant or "", body, n,
                                     concurrency=concurrency, rate=rate)  # fmt: skip
        submit_secs = time.monotonic() - t0
        complete = await clock.wait_all(set(submitted), wait)
        meter.stop()
        after = await scrape(http, api.base_url, metrics) if metrics else {}
        listener.cancel()
    deltas = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in metrics}
    return Run(submitted, clock, meter, t0, submit_secs, complete, deltas)
