"""Fixtures for the agent's tests: a sample SQLite source, an API key, an agent in process."""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from agent.config import SecretBox, SourceConfig
from agent.jobs.runner import Runner
from agent.link.session import Session, SessionConfig
from agent.sources.configured import SourceSet
from shared.crypto import generate_private_key, public_key_b64
from shared.keys import generate_key

ROWS = 3000


def make_sample_db(path: Path, rows: int = ROWS) -> Path:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price TEXT, blob BLOB)")
    conn.executemany(
        "INSERT INTO items VALUES (?, ?, ?, ?)",
        [(i, f"item {i} " + "x" * 40, f"{i}.25", bytes([i % 256])) for i in range(rows)],
    )
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, item_id INTEGER REFERENCES items(id))")
    conn.commit()
    conn.close()
    return path


@pytest.fixture
def sample_db(tmp_path: Path) -> Path:
    return make_sample_db(tmp_path / "sample.db")


@pytest.fixture
def api_key() -> str:
    return generate_key()


class AgentHandle:
    def __init__(self, session: Session, runner: Runner, task: asyncio.Task[str]) -> None:
        self.session, self.runner, self.task = session, runner, task

    async def stop(self) -> str:
        self.session.request_stop()
        self.session.request_stop()  # the second request: stop now
        return await asyncio.wait_for(self.task, 15)


@pytest.fixture
async def start_agent(
    tmp_path: Path, api_key: str, sample_db: Path
) -> AsyncIterator[Callable[..., Any]]:
    handles: list[AgentHandle] = []

    async def start(relay_url: str, *, capacity: int = 4, **session_kw: Any) -> AgentHandle:
        ship = session_kw.pop("ship", None)
        rand = session_kw.pop("rand", random.uniform)
        key = generate_private_key()
        sources = SourceSet(
            {"lite": SourceConfig("lite", "sqlite", f"sqlite:///{sample_db}")},
            SecretBox(tmp_path / "secret.key"),
        )
        runner = Runner(get_source=sources.get, private_key=key, capacity=capacity)
        cfg = SessionConfig(
            url=relay_url + "/api/v1/agent/connect",
            api_key=api_key,
            public_key=public_key_b64(key),
            hostname="test-host",
            os_name="linux",
            capacity=capacity,
            sources=sources.public(),
            **{"backoff_min": 0.05, "backoff_max": 0.2, "open_timeout": 5, **session_kw},
        )
        session = Session(cfg, runner=runner, ship=ship, rand=rand)
        handle = AgentHandle(session, runner, asyncio.create_task(session.run()))
        handles.append(handle)
        return handle

    yield start
    for h in handles:
        if not h.task.done():
            with contextlib.suppress(Exception):
                await h.stop()



class SentLink:
    """A runner's link that keeps everything sent, in order: ("msg", Message) or ("bin", bytes)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    async def send_message(self, msg: Any) -> None:
        self.sent.append(("msg", msg))

    async def send_binary(self, data: bytes) -> None:
        self.sent.append(("bin", data))

    def frames(self) -> list[bytes]:
        return [value for kind, value in self.sent if kind == "bin"]

    def kinds(self) -> list[str]:
        """What went out: "chunk", "started" (without columns), "started+columns" or a type."""
        out = []
        for kind, value in self.sent:
            if kind == "bin":
                out.append("chunk")
            elif value.type == "job.started.v1":
                out.append("started+columns" if "columns" in value.data else "started")
            else:
                out.append(value.type)
        return out


class DoneRecorder:
    """A runner's link that keeps each job's ``job.done.v1`` (by job id) and drops the rest."""

    def __init__(self) -> None:
        self.done: dict[str, Any] = {}

    async def send_message(self, msg: Any) -> None:
        if msg.type == "job.done.v1":
            self.done[msg["jobId"]] = msg

    async def send_binary(self, data: bytes) -> None:
        return None


async def until(cond: Callable[[], Any], what: str, timeout: float = 10.0) -> None:
    """Wait (on the event loop) until ``cond()`` is true; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)
