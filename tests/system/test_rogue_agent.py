"""A rogue agent sending malformed frames is refused without harming the relay or other agents."""

from __future__ import annotations

import contextlib
import functools
import json
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest
import zstandard
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from shared import crypto
from shared import protocol as p
from tests.harness import scaled
from tests.system.conftest import SystemEnv

pytestmark = pytest.mark.system


# One key pair for every rogue session: same key means "the same agent reconnecting", so a
# new session replaces a lingering one instead of being refused as a duplicate.
_ROGUE_PUBLIC_KEY = crypto.public_key_b64(crypto.generate_private_key())


@contextlib.contextmanager
def _open(system: SystemEnv, key: str) -> Iterator[tuple[ClientConnection, dict[str, Any]]]:
    """Connect with ``key`` and say hello properly; yields the socket and the welcome."""
    relay = system.stack.relay
    assert relay is not None
    with _connect(relay.ws_url + "/api/v1/agent/connect", key) as ws:
        hello = p.make(
            "agent.hello.v1", protocolVersion=p.PROTOCOL_VERSION, agentVersion="0.0.0-rogue",
            hostname="rogue", os="linux", publicKey=_ROGUE_PUBLIC_KEY, capacity=1,
            sources=[{"name": "erp", "type": "sqlite"}],
        )  # fmt: skip
        ws.send(p.encode(hello))
        while True:
            msg = json.loads(ws.recv(timeout=scaled(10)))
            if msg["type"] == "relay.welcome.v1":
                break
        yield ws, msg


def _connect(url: str, key: str) -> ClientConnection:
    """Connect, waiting out the 429 a key gets for a few seconds after a 4008 close (the
    relay's penalty: an honest agent waits that long anyway)."""
    deadline = time.monotonic() + scaled(30)
    while True:
        try:
            return connect(url, additional_headers={"Authorization": f"Bearer {key}"},
                           open_timeout=scaled(10), max_size=None, compression=None)  # fmt: skip
        except InvalidStatus as exc:
            if exc.response.status_code != 429 or time.monotonic() > deadline:
                raise
            time.sleep(0.2)  # polling for the penalty's end, with a deadline


def _reaction(ws: ClientConnection, timeout: float = 5) -> str:
    """'error:<code>' for a relay.error.v1, 'closed:<code>' if the relay closed the socket."""
    try:
        while True:
            frame = ws.recv(timeout=scaled(timeout))
            if isinstance(frame, str):
                msg = json.loads(frame)
                if msg.get("type") == "relay.error.v1":
                    return f"error:{msg['code']}"
    except ConnectionClosed as exc:
        rcvd = exc.rcvd
        return f"closed:{rcvd.code if rcvd else None}"
    except TimeoutError:
        return "silence"


@functools.cache
def _packed(zstd: bool) -> bytes:
    zeros = b"\0" * (64 << 20)  # ~2 KB (zstd) or ~65 KB (zlib) that would become 64 MiB
    return zstandard.ZstdCompressor(level=1).compress(zeros) if zstd else zlib.compress(zeros, 9)


def _bomb(job_id: str, attempt: int, *, zstd: bool) -> bytes:
    header = json.dumps({"jobId": job_id, "attempt": attempt, "seq": 0, "rows": 1}).encode()
    flags = p.FLAG_ZSTD if zstd else p.FLAG_ZLIB
    return bytes([p.FRAME_CHUNK, flags]) + len(header).to_bytes(2, "big") + header + _packed(zstd)


def _big_text() -> str:
    return json.dumps({"type": "agent.logs.v1", "lines": [], "pad": "x" * (p.MAX_TEXT_FRAME + 10)})


BAD_FRAMES: dict[str, Callable[[], str | bytes]] = {
    "not json": lambda: "{this is not json",
    "not an object": lambda: "[1, 2, 3]",
    "unknown type": lambda: json.dumps({"type": "agent.evil.v1", "x": 1}),
    "relay-only type": lambda: json.dumps({"type": "job.assign.v1", "jobId": "j", "attempt": 1,
                                            "source": "erp", "operation": "query", "sealed": None}),
    "wrong field types": lambda: json.dumps({"type": "agent.heartbeat.v1", "cpuUsage": "lots"}),
    "oversized text": _big_text,
    "binary garbage": lambda: b"\xff\x00\x13garbage",
    "chunk for a job it does not hold": lambda: p.encode_chunk(
        p.Chunk("job_" + "0" * 32, 1, 0, 1, b"[[1]]")),
    "zstd bomb for a job it does not hold": lambda: _bomb("job_" + "0" * 32, 1, zstd=True),
    "zlib bomb for a job it does not hold": lambda: _bomb("job_" + "0" * 32, 1, zstd=False),
    "done for a job it does not hold": lambda: json.dumps({
        "type": "job.done.v1", "jobId": "job_" + "0" * 32, "attempt": 1, "status": "succeeded",
        "chunks": 0, "rowCount": 0, "byteCount": 0}),
}  # fmt: skip


@pytest.fixture(scope="module")
def rogue_key(system: SystemEnv) -> str:
    return system.api.create_connector("rogue")["apiKey"]


@pytest.mark.parametrize("kind", list(BAD_FRAMES))
def test_bad_frame_gets_an_error_or_a_close(system: SystemEnv, rogue_key: str, kind: str) -> None:
    """Each malformed frame is answered with relay.error.v1 or a close, never ignored by a crash."""
    with _open(system, rogue_key) as (ws, _):
        ws.send(BAD_FRAMES[kind]())
        reaction = _reaction(ws)
    print(f"{kind}: {reaction}")
    if kind.startswith(("chunk for", "done for")):
        # Harmless but wrong: an error, a close, or (acceptably) a quiet drop.
        assert reaction.startswith(("error:", "closed:", "silence")), reaction
    else:
        assert reaction.startswith(("error:", "closed:")), f"{kind}: {reaction}"
    assert system.stack.relay is not None and system.stack.relay.proc.alive()


def test_bombs_for_its_own_job_are_refused_and_memory_stays_flat(system: SystemEnv, rogue_key: str) -> None:
    """Decompression bombs for a job the rogue does hold are refused by the relay's bounds
    (16 MiB, 256 times the compressed size), not inflated: the relay process's RSS stays
    within 100 MB of where it was, and the relay answers /health afterwards. Each bomb is
    for a job of its own: a refused chunk ends its job, and a later chunk for an ended job
    is a late resend, dropped without a word (tests/relay/agents: the guard's verdicts)."""
    relay = system.stack.relay
    assert relay is not None
    rss = psutil.Process(relay.proc.pid).memory_info().rss
    rogue = system.api.call("GET", "/connectors").data
    rogue_id = next(c["id"] for c in rogue if c["name"] == "rogue")
    reactions, jobs = [], []
    with _open(system, rogue_key) as (ws, _):
        for zstd in (True, False, True, False):
            jobs.append(job_id := system.api.submit(rogue_id, "erp", sql="SELECT 1"))
            msg = _next_of(ws, "job.assign.v1")  # capacity 1: after the last bomb's job ended
            assert msg["jobId"] == job_id
            ws.send(_bomb(job_id, msg["attempt"], zstd=zstd))
            reactions.append(_error_message(ws))
    assert all("limit" in r for r in reactions), reactions
    assert [system.api.wait_job(j)["error"]["code"] for j in jobs] == ["RESULT_REJECTED"] * 4
    assert psutil.Process(relay.proc.pid).memory_info().rss - rss < 100 << 20
    assert system.api.health()["status"] == "healthy"


_HEARTBEAT = p.encode(p.make("agent.heartbeat.v1", cpuUsage=1.0, memoryUsage=1.0, rss=1 << 20, activeJobs=1,
                             capacity=1, version="0.0.0-rogue"))  # fmt: skip


def _error_message(ws: ClientConnection) -> str:
    return str(_next_of(ws, "relay.error.v1")["message"])


def _next_of(ws: ClientConnection, kind: str, seconds: float = 10) -> dict[str, Any]:
    """The next message of ``kind``, the session kept alive meanwhile: a heartbeat every
    half second (the lease is 3 heartbeat intervals of 1 s; a loaded relay can take longer
    than that to refuse a bomb, and a silent session is closed 4011)."""
    deadline = time.monotonic() + scaled(seconds)
    while True:
        try:
            frame = ws.recv(timeout=0.5)
        except TimeoutError:
            if time.monotonic() > deadline:
                raise
            ws.send(_HEARTBEAT)
            continue
        if isinstance(frame, str) and (msg := json.loads(frame)).get("type") == kind:
            return dict(msg)


def test_flood_of_garbage_is_cut_off(system: SystemEnv, rogue_key: str) -> None:
    """An agent that keeps sending garbage is disconnected rather than served forever."""
    closed = False
    with _open(system, rogue_key) as (ws, _):
        try:
            for _ in range(200):
                ws.send("garbage")
        except ConnectionClosed:
            closed = True
        if not closed:
            closed = _reaction(ws, 5).startswith("closed:") or _drain_until_closed(ws)
    assert closed, "the relay kept a socket that sent 200 malformed frames"


def _drain_until_closed(ws: ClientConnection) -> bool:
    try:
        for _ in range(1000):
            ws.recv(timeout=scaled(5))
    except ConnectionClosed:
        return True
    except TimeoutError:
        return False
    return False


def test_relay_and_real_agent_survive_the_rogue(system: SystemEnv, rogue_key: str) -> None:
    """After all of the above the relay is healthy and the real agent's next job succeeds."""
    for kind in ("not json", "oversized text", "binary garbage"):
        with _open(system, rogue_key) as (ws, _):
            ws.send(BAD_FRAMES[kind]())
            _reaction(ws, 2)
    assert system.api.health()["status"] == "healthy"
    assert system.api.connector(system.connector_id)["status"] == "online"
    _, rows = system.api.run_job(system.connector_id, "erp", sql="SELECT count(*) AS n FROM items")
    assert rows == [{"n": 3000}]
