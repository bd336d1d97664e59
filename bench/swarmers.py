"""The swarm's worker process: N simulated agents speaking the real protocol to a relay.

Run by ``bench/swarm.py`` (``python swarmers.py URL KEYFILE --heartbeat S --seconds T``):
reads one API key a line from KEYFILE, opens one WebSocket per key (at most ``--parallel``
handshakes at a time), sends ``agent.hello.v1`` with real fields, waits for
``relay.welcome.v1``, then sends ``agent.heartbeat.v1`` every ``--heartbeat`` seconds
(each agent starting at a random phase) until ``--seconds`` have passed, and closes. It
prints ``connected N`` as agents come up, ``failed N: reason`` for refusals, and a final
``done`` line with the heartbeats sent. Jobs assigned to a swarm agent are not expected
(the benchmark submits jobs to a real agent only); any other frame is read and ignored.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

import aiohttp
from _common import ROOT  # noqa: F401 - puts the repository on sys.path

from shared import protocol
from shared.crypto import generate_private_key, public_key_b64
from shared.fdlimit import raise_nofile


class Swarm:
    def __init__(self, url: str, keys: list[str], heartbeat: float, seconds: float, parallel: int) -> None:
        self.url, self.keys = url, keys
        self.heartbeat, self.seconds = heartbeat, seconds
        self.gate = asyncio.Semaphore(parallel)
        self.public_key = public_key_b64(generate_private_key())
        self.connected = self.failed = self.beats = 0
        self.reasons: dict[str, int] = {}
        self.deadline = 0.0

    async def run(self) -> None:
        self.deadline = time.monotonic() + self.seconds
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn) as http:
            reporter = asyncio.create_task(self._report())
            await asyncio.gather(*(self._agent(http, i, key) for i, key in enumerate(self.keys)))
            reporter.cancel()
        print(f"done connected={self.connected} failed={self.failed} heartbeats={self.beats} "
              f"reasons={self.reasons}", flush=True)  # fmt: skip

    async def _report(self) -> None:
        last = -1
        while True:
            if self.connected != last:
                print(f"connected {self.connected} failed {self.failed}", flush=True)
                last = self.connected
            await asyncio.sleep(1.0)

    def _fail(self, reason: str) -> None:
        self.failed += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1

    async def _agent(self, http: aiohttp.ClientSession, i: int, key: str) -> None:
        try:
            async with self.gate:
                ws = await http.ws_connect(self.url, headers={"Authorization": f"Bearer {key}"},
                                           compress=0, heartbeat=None, timeout=aiohttp.ClientWSTimeout(ws_close=2))  # fmt: skip
                hello = protocol.make(
                    "agent.hello.v1", protocolVersion=protocol.PROTOCOL_VERSION, agentVersion="swarm",
                    hostname=f"swarm-{i}", os="linux", publicKey=self.public_key, capacity=1,
                    sources=[{"name": "src", "type": "sqlite"}], heldJobs=[],
                )  # fmt: skip
                await ws.send_str(protocol.encode(hello))
                msg = await ws.receive(timeout=60)
                if msg.type != aiohttp.WSMsgType.TEXT or "relay.welcome.v1" not in msg.data:
                    self._fail(f"no welcome: {msg.type}")
                    await ws.close()
                    return
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self._fail(type(exc).__name__)
            return
        self.connected += 1
        try:
            await self._beat(ws)
        finally:
            await ws.close()

    async def _beat(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        beat = protocol.encode(protocol.make(
            "agent.heartbeat.v1", cpuUsage=1.0, memoryUsage=10.0, rss=40 << 20, activeJobs=0,
            capacity=1, version="swarm",
        ))  # fmt: skip
        next_at = time.monotonic() + random.uniform(0, self.heartbeat)
        while True:
            now = time.monotonic()
            wait = min(next_at, self.deadline) - now
            if wait > 0:
                try:
                    msg = await ws.receive(timeout=wait)
                except TimeoutError:
                    msg = None
                if msg is not None and msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                                    aiohttp.WSMsgType.ERROR):  # fmt: skip
                    self._fail(f"closed by relay {ws.close_code}")
                    self.connected -= 1
                    return
                continue
            if now >= self.deadline:
                return
            await ws.send_str(beat)
            self.beats += 1
            next_at += self.heartbeat


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("keyfile")
    ap.add_argument("--heartbeat", type=float, default=15.0)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--parallel", type=int, default=100)
    args = ap.parse_args(argv)
    raise_nofile()
    keys = [k for k in Path(args.keyfile).read_text().split() if k]
    asyncio.run(Swarm(args.url, keys, args.heartbeat, args.seconds, args.parallel).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
