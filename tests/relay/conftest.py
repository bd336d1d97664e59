"""Fixtures for the relay's component tests: the app in process, a platform client, and a
fake agent that speaks the real protocol (shared.protocol) over a real WebSocket."""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from relay.app import create_app
from relay.config import RelayConfig
from relay.context import RELAY, Relay
from relay.web.auth import make_token
from relay.web.httpserver import EnvelopeAppRunner
from shared import protocol
from shared.crypto import DataCipher, generate_private_key, open_job, public_key_b64
from shared.rows import encode_rows

SECRET = "component-test-secret-0123456789abcdef"
TIMEOUT = 5.0 * float(os.environ.get("MC_TEST_TIMEOUT_FACTOR", "1"))


async def wait_until(
    cond: Callable[[], Awaitable[Any]], timeout: float = TIMEOUT, what: str = "", *, interval: float = 0.01
) -> Any:
    """Poll ``cond`` every ``interval`` s until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = await cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await asyncio.sleep(interval)


class Api:
    """A platform client: one tenant, one role, the contract's headers."""

    def __init__(self, client: Any, tenant: str = "t1", role: str = "admin") -> None:
        self.client = client
        self.tenant = tenant
        self.role = role
        self.token = make_token(SECRET, tenant, role, 600)
        self._platform: Api | None = None

    def headers(self, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "X-Tenant-ID": self.tenant, **extra}

    def as_(self, role: str, tenant: str | None = None) -> Api:
        return Api(self.client, tenant or self.tenant, role)

    async def call(self, method: str, path: str, *, json: Any = None, expect: int | None = None,
                   **kw: Any) -> tuple[int, Any, aiohttp.ClientResponse]:
        resp = await self.client.request(method, "/api/v1" + path, json=json, headers=self.headers(), **kw)
        body = await resp.json() if resp.content_type == "application/json" else await resp.text()
        if expect is not None:
            assert resp.status == expect, (resp.status, body)
        return resp.status, body, resp

    async def new_connector(self, name: str = "office", os_: str = "linux") -> dict[str, Any]:
        _, body, _ = await self.call("POST", "/connectors", json={"name": name, "os": os_}, expect=201)
        return body["data"]

    def _reader(self) -> Api:
        """Who reads a connector or a job for these helpers. An admin's polls go through
        a service token of the same tenant, as a platform's workers would: tests wait
        in loops (``wait_until``) that a person's 100 requests a minute do not carry."""
        if self.role != "admin":
            return self
        if self._platform is None:
            self._platform = Api(self.client, self.tenant, "service")
        return self._platform

    async def connector(self, cid: str) -> dict[str, Any]:
        _, body, _ = await self._reader().call("GET", f"/connectors/{cid}", expect=200)
        return body["data"]

    async def job(self, job_id: str) -> dict[str, Any]:
        _, body, _ = await self._reader().call("GET", f"/jobs/{job_id}", expect=200)
        return body["data"]

    async def submit(self, cid: str, sql: str = "SELECT 1", **options: Any) -> str:
        body = {"connectorId": cid, "source": "erp", "operation": "query",
                "query": {"sql": sql, "params": {}}, "options": options}
        _, out, _ = await self.call("POST", "/jobs", json=body, expect=202)
        return out["data"]["id"]


class FakeAgent:
    """An agent speaking the real protocol, frame by frame, driven by the test."""

    def __init__(self, client: Any, api_key: str, *, capacity: int = 4) -> None:
        self.client = client
        self.api_key = api_key
        self.capacity = capacity
        self.private_key = generate_private_key()
        self.public_key = public_key_b64(self.private_key)
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.connector_id: str | None = None
        self.welcome: protocol.Message | None = None
        self.inbox: list[protocol.Message] = []
        self.frames: list[dict[str, Any]] = []  # every text frame received, as sent (not validated)
        # The code in the relay's close frame. aiohttp's client overwrites ws.close_code with
        # 1006 when the server drops the TCP connection right after its close frame.
        self.received_close: int | None = None

    async def connect(self, *, hello: bool = True, held: list[dict[str, Any]] | None = None) -> FakeAgent:
        self.ws = await self.client.ws_connect(
            "/api/v1/agent/connect", headers={"Authorization": f"Bearer {self.api_key}"}
        )
        if hello:
            await self.send("agent.hello.v1", protocolVersion=protocol.PROTOCOL_VERSION,
                            agentVersion="0.1.0", hostname="fake-host", os="linux",
                            publicKey=self.public_key, capacity=self.capacity,
                            sources=[{"name": "erp", "type": "postgres"}], heldJobs=held or [])
            self.welcome = await self.expect("relay.welcome.v1")
            self.connector_id = self.welcome["connectorId"]
        return self

    async def send(self, type_: str, **fields: Any) -> None:
        assert self.ws is not None
        await self.ws.send_str(protocol.encode(protocol.make(type_, **fields)))

    async def send_raw(self, data: str | bytes) -> None:
        assert self.ws is not None
        if isinstance(data, bytes):
            await self.ws.send_bytes(data)
        else:
            await self.ws.send_str(data)

    async def recv(self, timeout: float = TIMEOUT) -> protocol.Message | None:
        """The next message, or None when the socket closed."""
        assert self.ws is not None
        raw = await self.ws.receive(timeout=timeout)
        if raw.type == aiohttp.WSMsgType.CLOSE and self.received_close is None:
            self.received_close = raw.data
        if raw.type != aiohttp.WSMsgType.TEXT:
            return None
        self.frames.append(protocol.parse_text(raw.data))
        return protocol.decode_text(raw.data, sender=protocol.RELAY)

    async def expect(self, type_: str, timeout: float = TIMEOUT, **match: Any) -> protocol.Message:
        """Read until a message of ``type_`` (matching ``match``) arrives; keep the others."""
        for i, msg in enumerate(self.inbox):
            if msg.type == type_ and all(msg.get(k) == v for k, v in match.items()):
                return self.inbox.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {type_} {match} within {timeout}s; got {self.inbox}")
            msg = await self.recv(left)
            if msg is None:
                raise AssertionError(f"socket closed ({self.close_code}) while waiting for {type_}")
            if msg.type == type_ and all(msg.get(k) == v for k, v in match.items()):
                return msg
            self.inbox.append(msg)

    async def wait_closed(self, timeout: float = TIMEOUT) -> int | None:
        assert self.ws is not None
        deadline = time.monotonic() + timeout
        while not self.ws.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("the relay did not close the socket")
            msg = await self.recv(left)
            if msg is not None:
                self.inbox.append(msg)
        return self.close_code

    @property
    def close_code(self) -> int | None:
        if self.received_close is not None:
            return self.received_close
        return self.ws.close_code if self.ws is not None else None

    def open(self, assign: protocol.Message) -> Any:
        sealed = base64.b64decode(assign["sealed"])
        return open_job(sealed, self.private_key, self.connector_id or "", assign["jobId"])

    async def heartbeat(self, cpu: float = 12.5, mem: float = 40.0, active: int = 0) -> None:
        await self.send("agent.heartbeat.v1", cpuUsage=cpu, memoryUsage=mem, rss=30_000_000,
                        activeJobs=active, capacity=self.capacity, version="0.1.0")

    async def start(self, assign: protocol.Message, columns: list[str]) -> None:
        await self.send("job.started.v1", jobId=assign["jobId"], attempt=assign["attempt"],
                        columns=[{"name": c, "type": "string"} for c in columns])

    async def chunk(self, assign: protocol.Message, seq: int, rows: list[list[Any]], *, ack: bool = True) -> None:
        payload = encode_rows(rows)
        frame = protocol.encode_chunk(protocol.Chunk(assign["jobId"], assign["attempt"], seq, len(rows), payload))
        await self.send_raw(frame)
        if ack:
            await self.expect("job.chunk.ack.v1", jobId=assign["jobId"], seq=seq)

    async def done(self, assign: protocol.Message, chunks: int, rows: int, status: str = "succeeded",
                   error: dict[str, Any] | None = None, *, ack: bool = True) -> None:
        fields: dict[str, Any] = {"jobId": assign["jobId"], "attempt": assign["attempt"], "status": status,
                                  "chunks": chunks, "rowCount": rows, "byteCount": rows * 10}
        if error is not None:
            fields["error"] = error
        await self.send("job.done.v1", **fields)
        if ack:
            await self.expect("job.done.ack.v1", jobId=assign["jobId"])

    async def close(self) -> None:
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()


# The data key every in-process relay on a shared (PostgreSQL) store uses: several nodes
# and restarts must read each other's chunks (a relay there refuses to start without one).
SHARED_STORE_CIPHER = DataCipher({"k1": bytes(range(32))}, "k1")


@pytest.fixture
def make_config(tmp_path: Any) -> Callable[..., RelayConfig]:
    def make(**overrides: Any) -> RelayConfig:
        # The shipped request limits (per token and tenant, by role): a test that drives
        # many requests uses a service token, the platform's role (Api(..., role="service")).
        base: dict[str, Any] = {"database_url": f"sqlite:///{tmp_path}/relay.db", "jwt_secret": SECRET,
                                "hello_timeout": 2.0, "result_poll_interval": 0.2}
        base.update(overrides)
        if not str(base["database_url"]).startswith("sqlite") and "data_cipher" not in base:
            base["data_cipher"] = SHARED_STORE_CIPHER  # one key for every node, as production needs
        return RelayConfig(**base)

    return make


@pytest.fixture
def start_relay(aiohttp_client: Any, make_config: Callable[..., RelayConfig]) -> Callable[..., Awaitable[Any]]:
    async def start(**overrides: Any) -> Any:
        app = create_app(make_config(**overrides))
        app[RELAY].events.strict = True  # an event off its schema fails the test (production logs it)
        return await aiohttp_client(app)

    return start


@pytest.fixture
async def client(start_relay: Callable[..., Awaitable[Any]]) -> Any:
    return await start_relay()


@pytest.fixture
def api(client: Any) -> Api:
    return Api(client)


def relay_of(client: Any) -> Relay:
    return client.server.app[RELAY]


@pytest.fixture
async def agent(client: Any, api: Api) -> FakeAgent:
    con = await api.new_connector()
    a = await FakeAgent(client, con["apiKey"]).connect()
    yield a
    await a.close()


@pytest.fixture
async def relay_port(make_config: Callable[..., RelayConfig]) -> AsyncIterator[int]:
    """The app on the runner ``mini-relay serve`` uses, on a free port (raw-socket tests)."""
    runner = EnvelopeAppRunner(create_app(make_config()), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        await runner.cleanup()
