"""A small real WebSocket server that speaks the relay's side of the agent protocol.

Not a mock of our code: it listens on a real socket with the ``websockets`` library and
validates every frame with ``shared.protocol``, so the agent's session and runner are
exercised over the wire. Tests drive it: assign jobs, cancel them, hold back acks, drop
the socket, refuse the key, and wait on what the agent sent.
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from shared.crypto import relay_info, seal_query
from shared.protocol import AGENT, Chunk, Message, decode_frame, encode, make
from shared.rows import decode_payload


@dataclass
class Received:
    messages: list[Message] = field(default_factory=list)
    chunks: list[Chunk] = field(default_factory=list)


class FakeRelay:
    def __init__(
        self,
        api_key: str,
        *,
        connector_id: str = "con_0123456789abcdef0123",
        window: int = 4,
        max_chunk_bytes: int = 1 << 20,
        heartbeat: float = 15.0,
        auto_ack: bool = True,
    ) -> None:
        self.api_key = api_key
        self.connector_id = connector_id
        self.window = window
        self.max_chunk_bytes = max_chunk_bytes
        self.heartbeat = heartbeat
        self.auto_ack = auto_ack
        self.refuse_key = False
        # Hostile-relay knobs: a raw welcome frame to send instead of a valid one (None:
        # send none and wait), and whether to answer the hello at all.
        self.welcome_text: str | None = None
        self.answer_hello = True
        self.close_after_welcome: int | None = None  # a close code: welcome, then close at once
        self.ack_done = True  # with auto_ack: acknowledge job.done.v1 too
        self.close_codes: list[int | None] = []  # the close code of each ended connection
        self.got = Received()
        self.hellos: list[Message] = []
        self.connections = 0
        self.ws: ServerConnection | None = None
        self._server: Any = None
        self.port = 0
        self.public_key = ""

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def __aenter__(self) -> FakeRelay:
        self._server = await serve(
            self._handler, "127.0.0.1", 0, process_request=self._check, compression=None,
            max_size=None,
        )  # fmt: skip
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    def _check(self, conn: ServerConnection, request: Request) -> Response | None:
        if request.path != "/api/v1/agent/connect":
            return conn.respond(404, "not found\n")
        if self.refuse_key or request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return conn.respond(401, "bad key\n")
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        try:
            await self._converse(ws)
        finally:
            await ws.wait_closed()
            self.close_codes.append(ws.close_code)

    async def _converse(self, ws: ServerConnection) -> None:
        self.connections += 1
        hello = decode_frame(await ws.recv(), sender=AGENT)
        assert isinstance(hello, Message) and hello.type == "agent.hello.v1"
        self.hellos.append(hello)
        self.public_key = hello["publicKey"]
        if not self.answer_hello:
            await ws.wait_closed()
            return
        if self.welcome_text is not None:
            self.ws = ws
            await ws.send(self.welcome_text)
            await ws.wait_closed()
            return
        await ws.send(encode(make(
            "relay.welcome.v1", protocolVersion=1, connectorId=self.connector_id,
            heartbeatInterval=self.heartbeat, window=self.window,
            maxChunkBytes=self.max_chunk_bytes, logLevel="INFO",
        )))  # fmt: skip
        if self.close_after_welcome is not None:
            await ws.close(self.close_after_welcome)
            return
        self.ws = ws
        async for frame in ws:
            msg = decode_frame(frame, sender=AGENT)
            if isinstance(msg, Chunk):
                self.got.chunks.append(msg)
                if self.auto_ack:
                    await self.ack(msg.job_id, msg.attempt, msg.seq)
            else:
                self.got.messages.append(msg)
                if msg.type == "job.done.v1" and self.auto_ack and self.ack_done:
                    await self.send("job.done.ack.v1", jobId=msg["jobId"], attempt=msg["attempt"])

    # ------------------------------------------------------------ driving

    async def send(self, type_: str, **fields: Any) -> None:
        assert self.ws is not None
        await self.ws.send(encode(make(type_, **fields)))

    async def ack(self, job_id: str, attempt: int, seq: int) -> None:
        await self.send("job.chunk.ack.v1", jobId=job_id, attempt=attempt, seq=seq)

    def seal(self, query: Any, job_id: str) -> str:
        blob = seal_query(query, self.public_key, relay_info(self.connector_id, job_id))
        return base64.b64encode(blob).decode("ascii")

    async def assign(
        self, job_id: str, source: str, operation: str = "query", query: Any = None,
        *, attempt: int = 1, options: dict[str, Any] | None = None, sealed: str | None = None,
    ) -> None:  # fmt: skip
        if sealed is None and query is not None:
            sealed = self.seal(query, job_id)
        await self.send(
            "job.assign.v1", jobId=job_id, attempt=attempt, source=source, operation=operation,
            sealed=sealed, options=options or {},
        )  # fmt: skip

    def drop(self) -> None:
        """Cut the TCP connection without a closing handshake."""
        assert self.ws is not None
        self.ws.transport.abort()
        self.ws = None

    async def close(self, code: int, reason: str = "") -> None:
        assert self.ws is not None
        await self.ws.close(code, reason)

    # ------------------------------------------------------------ observing

    def of_type(self, type_: str, job_id: str | None = None) -> list[Message]:
        return [
            m for m in self.got.messages
            if m.type == type_ and (job_id is None or m.get("jobId") == job_id)
        ]  # fmt: skip

    def done(self, job_id: str) -> Message | None:
        found = self.of_type("job.done.v1", job_id)
        return found[-1] if found else None

    def rows(self, job_id: str) -> list[list[Any]]:
        """Rows of a job's chunks in sequence order, each sequence number once."""
        by_seq = {c.seq: c for c in self.got.chunks if c.job_id == job_id}
        out: list[list[Any]] = []
        for seq in sorted(by_seq):
            out.extend(decode_payload(by_seq[seq].payload))
        return out

    async def wait_for(self, predicate: Any, timeout: float, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
            await asyncio.sleep(0.02)
