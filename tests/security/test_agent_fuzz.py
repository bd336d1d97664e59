"""An authenticated agent sends 10,000 malformed, oversized and unknown frames (through
reconnects): the relay stays up, another agent's jobs keep succeeding, and each offending
connection is closed (4008) after a bounded number of violations."""

from __future__ import annotations

import contextlib
import json
import random
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zstandard
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from shared import crypto
from shared import protocol as p
from tests.harness import Agent, Source, Stack, scaled
from tests.system import dataset

pytestmark = pytest.mark.system

TOTAL_FRAMES = 10_000
MAX_VIOLATIONS = 10  # the relay's default (RelayConfig.max_violations)
_PUBLIC = crypto.public_key_b64(crypto.generate_private_key())
_JOB = "job_" + "0" * 32


def _frames(rng: random.Random) -> tuple[list[Callable[[], str | bytes]], bytes]:
    def rnd_bytes() -> bytes:
        return rng.randbytes(rng.randint(0, 300))

    def bomb() -> bytes:  # 200 MB of zeros, ~200 KB compressed: must stop at the limit
        packed = zlib.compress(b"\0" * (200 << 20), 9)
        header = json.dumps({"jobId": _JOB, "attempt": 1, "seq": 0, "rows": 1}).encode()
        return bytes([p.FRAME_CHUNK, p.FLAG_ZLIB]) + len(header).to_bytes(2, "big") + header + packed

    header = json.dumps({"jobId": _JOB, "attempt": 1, "seq": 0, "rows": 1}).encode()
    zstd_bomb = (bytes([p.FRAME_CHUNK, p.FLAG_ZSTD]) + len(header).to_bytes(2, "big") + header
                 + zstandard.ZstdCompressor(level=1).compress(b"\0" * (64 << 20)))  # fmt: skip
    return [
        lambda: "{not json",
        lambda: "",
        lambda: "null",
        lambda: json.dumps([1, 2, 3]),
        lambda: json.dumps({"type": 42}),
        lambda: json.dumps({"type": f"agent.evil{rng.randint(0, 9999)}.v1", "x": "y" * 100}),
        lambda: json.dumps({"type": "job.assign.v1", "jobId": "j", "attempt": 1}),
        lambda: json.dumps({"type": "agent.heartbeat.v1", "cpuUsage": "lots", "memoryUsage": -1}),
        lambda: json.dumps({"type": "agent.hello.v1", "protocolVersion": 1}),
        lambda: json.dumps({"type": "agent.logs.v1", "lines": [{"level": "NOPE"}] * 50}),
        lambda: "[" * 10_000 + "]" * 10_000,
        lambda: json.dumps({"type": "job.started.v1", "jobId": "x" * 5000, "attempt": -1, "columns": 1}),
        lambda: "\x00\x01\x02",
        rnd_bytes,
        lambda: bytes([p.FRAME_CHUNK, 0, 0xFF, 0xFF]) + b"{}",
        lambda: bytes([7, 0, 0, 2]) + b"{}",
        lambda: p.encode_chunk(p.Chunk(_JOB, 1, rng.randint(0, 10), 1, b"[[1]]")),
        lambda: zstd_bomb,  # ~2 KB that would become 64 MiB: refused from its header
        lambda: bytes([p.FRAME_CHUNK, p.FLAG_ZSTD, 0, 2]) + b"{}" + zstd_bomb,  # a header without fields
        lambda: json.dumps({"type": "job.done.v1", "jobId": _JOB, "attempt": 1, "status": "succeeded",
                            "chunks": 0, "rowCount": 0, "byteCount": 0}),
    ], bomb()


def _oversized(n: int) -> str:
    return json.dumps({"type": "agent.logs.v1", "lines": [], "pad": "x" * (p.MAX_TEXT_FRAME + n)})


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Agent, str]]:
    work: Path = tmp_path_factory.mktemp("fuzz")
    db = work / "erp.db"
    dataset.create_sqlite(db)
    # 10,000 frames take ~500 connections in well under a minute, with one key: no pause
    # after each 4008 close, and the agent socket's per-key limit (MC_RELAY_RATE_LIMIT,
    # public routes) raised above that.
    stack = Stack(work / "stack", tenant="fuzz", heartbeat=1.0,
                  extra_env={"MC_RELAY_AGENT_VIOLATION_PENALTY": "0", "MC_RELAY_RATE_LIMIT": "100000"})
    try:
        stack.start_relay()
        agent = stack.add_agent("honest", [Source("erp", "sqlite", f"sqlite:///{db}")])
        assert stack.api is not None
        rogue_key = stack.api.create_connector("rogue")["apiKey"]
        yield stack, agent, rogue_key
    finally:
        stack.close()


@contextlib.contextmanager
def _open(url: str, key: str) -> Iterator[ClientConnection]:
    with connect(url, additional_headers={"Authorization": f"Bearer {key}"}, open_timeout=scaled(10),
                 max_size=None, compression=None) as ws:  # fmt: skip
        _hello(ws)
        yield ws


def _hello(ws: ClientConnection) -> None:
    ws.send(p.encode(p.make("agent.hello.v1", protocolVersion=p.PROTOCOL_VERSION, agentVersion="0.0.0",
                            hostname="rogue", os="linux", publicKey=_PUBLIC, capacity=1, sources=[])))
    while json.loads(ws.recv(timeout=scaled(10)))["type"] != "relay.welcome.v1":
        pass


def _errors_until_closed(ws: ClientConnection) -> tuple[int, int | None]:
    errors = 0
    try:
        while True:
            frame = ws.recv(timeout=scaled(10))
            if isinstance(frame, str) and json.loads(frame).get("type") == "relay.error.v1":
                errors += 1
    except ConnectionClosed as exc:
        return errors, exc.rcvd.code if exc.rcvd else None


def test_ten_thousand_bad_frames_leave_the_relay_and_other_agents_unharmed(
    fuzz_stack: tuple[Stack, Agent, str]
) -> None:
    stack, honest, rogue_key = fuzz_stack
    assert stack.relay is not None and stack.api is not None
    url = stack.relay.ws_url + "/api/v1/agent/connect"
    rng = random.Random(5)
    makers, bomb = _frames(rng)
    stop = threading.Event()
    outcomes: list[str] = []

    def honest_jobs() -> None:
        while not stop.is_set():
            job, rows = stack.api.run_job(honest.connector_id, "erp", sql="SELECT count(*) AS n FROM items")
            outcomes.append(job["status"] if rows == [{"n": dataset.ROWS}] else "wrong rows")

    worker = threading.Thread(target=honest_jobs, daemon=True)
    worker.start()
    sent = connections = 0
    closes: list[int | None] = []
    max_errors = 0
    try:
        while sent < TOTAL_FRAMES:
            with _open(url, rogue_key) as ws:
                connections += 1
                burst = MAX_VIOLATIONS + rng.randint(0, 20)  # sometimes more than the limit
                try:
                    for i in range(burst):
                        frame = (_oversized(i) if sent % 997 == 0 else bomb if sent % 499 == 1
                                 else rng.choice(makers)())  # fmt: skip
                        ws.send(frame)
                        sent += 1
                except ConnectionClosed:
                    pass
                errors, code = _errors_until_closed(ws)
            max_errors = max(max_errors, errors)
            closes.append(code)
    finally:
        stop.set()
        worker.join(timeout=scaled(60))
    print(f"sent {sent} bad frames over {connections} connections; honest jobs {len(outcomes)}")
    assert sent >= TOTAL_FRAMES
    assert max_errors <= MAX_VIOLATIONS, max_errors
    assert all(code in (p.CLOSE_CODES["PROTOCOL_VIOLATION"], 1009) for code in closes), set(closes)
    assert stack.relay.proc.alive() and stack.api.health()["status"] == "healthy"
    assert len(outcomes) >= 3 and set(outcomes) == {"succeeded"}, outcomes[-5:]
    assert stack.api.connector(honest.connector_id)["status"] == "online"
    metrics = stack.api.call("GET", "/metrics", expect=200).text
    foreign = [ln for ln in metrics.splitlines() if ln.startswith('mini_relay_agent_frames_refused_total{reason="foreign"}')]
    assert foreign and float(foreign[0].split()[-1]) > 0, "chunks for a job it does not hold: refused from the header"
    _, rows = stack.api.run_job(honest.connector_id, "erp", sql="SELECT count(*) AS n FROM items")
    assert rows == [{"n": dataset.ROWS}]
