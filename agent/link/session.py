"""The agent's link to the relay: one connection's life, inside a reconnect loop.

One connection: dial ``/api/v1/agent/connect`` with the API key, send ``agent.hello.v1``,
wait for ``relay.welcome.v1``, then run three things until the socket closes: the message
loop (frames go to the runner), the heartbeat task and the log shipper. Around it, the
loop reconnects forever with exponential backoff and full jitter (1 s to 60 s; at least
60 s after a refused key, or what ``CLOSE_REASONS`` says for the close code; at most one
heartbeat interval while jobs are held, so their leases hold), logging one
line per change of state or of failure reason, not one per attempt. 4010
(SESSION_REPLACED) is terminal. The link's states are ``linkstate``'s table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.frames import CloseCode

from shared import __version__
from shared.errors import ProtocolError
from shared.protocol import (
    CLOSE_CODES,
    MAX_TEXT_FRAME,
    PROTOCOL_VERSION,
    RELAY,
    Message,
    close_reason,
    decode_frame,
    encode,
    make,
)

from ..jobs.runner import Runner
from ..logs import ShipBuffer
from ..logship import ship_forever
from . import state as ls
from .relays import Endpoint, RelayChoice
from .telemetry import Telemetry

log = logging.getLogger("agent.session")

REFUSED_KEY_DELAY = 60.0
# A session that lasts less than this after its welcome does not reset the backoff: a relay
# that welcomes and then drops the agent at once must not be redialled every second.
STABLE_AFTER = 10.0
SHIP_EVERY = 1.0


@dataclass
class SessionConfig:
    url: str  # the full WebSocket URL to dial
    api_key: str
    public_key: str  # base64 X25519
    hostname: str
    os_name: str
    capacity: int = 4
    sources: list[dict[str, str]] = field(default_factory=list)
    agent_version: str = __version__
    open_timeout: float = 15.0
    backoff_min: float = 1.0
    backoff_max: float = 60.0
    stable_after: float = STABLE_AFTER
    drain_grace: float = 30.0
    hello_extra: dict[str, Any] = field(default_factory=dict)  # optional hello fields (kems)
    connect_options: dict[str, Any] = field(default_factory=dict)  # agent/link/transport.py
    relays: RelayChoice | None = None  # several relay URLs (agent/link/relays.py); else ``url``


class _WsLink:
    """The runner's view of one live connection."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send_message(self, msg: Message) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(encode(msg))

    async def send_binary(self, data: bytes) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(data)


class Session:
    def __init__(
        self,
        cfg: SessionConfig,
        *,
        runner: Runner,
        ship: ShipBuffer | None = None,
        telemetry: Telemetry | None = None,
        rand: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.cfg = cfg
        self.runner = runner
        self.ship = ship
        self.telemetry = telemetry or Telemetry()
        self.rand = rand
        self.state = ls.LinkState(self._on_change)
        self.relays = cfg.relays or RelayChoice([Endpoint(cfg.url, cfg.url, cfg.connect_options)])
        self.connector_id: str | None = None
        self.last_heartbeat: float | None = None
        self.connected_since: float | None = None
        self.last_delay = 0.0
        self.end_reason = ""
        self._ws: ClientConnection | None = None
        self._wake = asyncio.Event()
        self._stop_requests = 0
        self._welcomed = False
        self._failure = ""  # the last failure reason, for status (cleared once welcomed)
        self._logged = ""  # the last failure reason logged, to avoid repeating it
        self._welcomed_at: float | None = None  # monotonic time of this session's welcome
        self._progress_at = 0  # the runner's progress count at this session's welcome
        self._heartbeat_interval = 0.0  # the last welcome's; 0 before the first
        self._flapping = False  # the last session ended soon after its welcome
        self._source_updates = False  # the relay takes agent.sources.v1 (its welcome said so)
        self._sources_in_hello: list[dict[str, str]] = []
        self._asked_delay: float | None = None  # from relay.reconnect.v1

    # ------------------------------------------------------------ public

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state.public,
            "relayUrl": self.relays.current.shown,
            "linkState": self.state.state,
            "connectorId": self.connector_id,
            "lastHeartbeat": self.last_heartbeat,
            "connectedSince": self.connected_since,
            "activeJobs": self.runner.snapshot(),
            "capacity": self.cfg.capacity,
            "sources": self.cfg.sources,
            # why it is not connected: the last failure logged (cleared once welcomed)
            "lastError": self._failure or None,
        }

    def request_stop(self) -> None:
        """First call: drain (finish running jobs, take none). Second call: stop now."""
        self._stop_requests += 1
        if self.state.state == ls.CLOSED:
            return
        if self._stop_requests == 1:
            asyncio.get_running_loop().create_task(self._drain())
        else:
            asyncio.get_running_loop().create_task(self._force_stop())

    async def run(self) -> str:
        """Connect, and reconnect, until stopped. Returns why it ended."""
        attempt = 0
        while self.state.state != ls.CLOSED:
            min_delay, welcomed = await self._one_connection()
            if self._asked_delay is not None:  # relay.reconnect.v1 said when to come back
                min_delay, self._asked_delay = max(min_delay, self._asked_delay), None
            if self.state.state == ls.CLOSED:
                break
            if self.state.state == ls.DRAINING:
                self.state.fire("lost")
                break
            self.state.fire("lost")
            # Next relay URL; the backoff grows only when a whole round of them failed.
            new_round = self.relays.advance()
            # Only a session that lasted, or in which the relay took a chunk or a result,
            # resets the backoff; one the relay ended soon after its welcome with nothing
            # taken counts as a failed attempt. (A link that drops every second or two while
            # rows flow must be redialled at once: a backoff longer than the lease loses
            # the job's attempt.)
            stable = welcomed and (self._stable() or self.runner.progress > self._progress_at)
            self._flapping = welcomed and not self._stable()
            attempt = 0 if stable else attempt + (1 if new_round or welcomed else 0)
            cap = min(self.cfg.backoff_max, self.cfg.backoff_min * (2 ** min(attempt, 16)))
            if self.runner.jobs and self._heartbeat_interval:
                # Jobs held here are leased for three heartbeat intervals: redial within one,
                # or their attempts lapse and run again (a close code's minimum still wins).
                cap = min(cap, self._heartbeat_interval)
            delay = max(min_delay, self.rand(self.cfg.backoff_min, max(self.cfg.backoff_min, cap)))
            self.last_delay = delay
            log.debug("reconnecting in %.1f s", delay)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
        return self.end_reason or "stopped"

    # ------------------------------------------------------------ one connection

    async def _one_connection(self) -> tuple[float, bool]:
        """One connection's life; returns (minimum delay before the next, welcomed?)."""
        headers = {"Authorization": f"Bearer {self.cfg.api_key}"}
        welcomed = self._welcomed = False
        self._welcomed_at = None
        try:
            relay = self.relays.current
            async with connect(
                relay.url,
                additional_headers=headers,
                compression=None,  # permessage-deflate is too costly for bulk links
                max_size=2 * MAX_TEXT_FRAME,
                open_timeout=self.cfg.open_timeout,
                user_agent_header=f"mini-connector/{self.cfg.agent_version}",
                **relay.options,
            ) as ws:
                self._ws = ws
                try:
                    await self._converse(ws)
                except ConnectionClosed:
                    pass  # the close code below says what happened
                finally:
                    self._ws = None
                    self.runner.detach()
                    welcomed = self._welcomed
            if self.state.state in (ls.CLOSED, ls.DRAINING):
                return 0.0, welcomed
            sent = ws.protocol.close_sent
            if sent is not None and sent.code == CloseCode.MESSAGE_TOO_BIG:
                # the agent ended it: the relay sent a frame past the socket's limit
                self._failed(f"the relay sent a message larger than {2 * MAX_TEXT_FRAME} bytes; "
                             "the agent closed the connection", welcomed)  # fmt: skip
                return 5.0, welcomed
            code = ws.close_code
            name, terminal, min_delay = close_reason(code)
            if terminal:
                self.end_reason = name
                log.error("the relay closed this session: %s (%s); stopping", name, code)
                self.state.fire("terminal")
                return 0.0, welcomed
            self._failed(f"the relay closed the connection ({name}, code {code})", welcomed)
            return min_delay, welcomed
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                self._failed(f"the relay refused the API key (HTTP {status})", welcomed)
                return REFUSED_KEY_DELAY, welcomed
            self._failed(f"the relay answered HTTP {status} instead of a WebSocket", welcomed)
            return 0.0, welcomed
        except ProtocolError as exc:
            self._failed(f"the relay broke the protocol: {exc.message}", welcomed)
            return 5.0, welcomed
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI, ConnectionClosed) as exc:
            if isinstance(exc, TimeoutError) and self.state.state == ls.HELLO_SENT:
                # connected, but no welcome: not a network problem, a relay that is stuck
                self._failed(f"the relay did not answer the hello within {self.cfg.open_timeout:g} s", welcomed)
                return 0.0, welcomed
            self._failed(f"cannot reach the relay: {_describe(exc)}", welcomed)
            return 0.0, welcomed

    async def _converse(self, ws: ClientConnection) -> None:
        self._sources_in_hello = list(self.cfg.sources)
        hello = make(
            "agent.hello.v1",
            protocolVersion=PROTOCOL_VERSION,
            agentVersion=self.cfg.agent_version,
            hostname=self.cfg.hostname[:255],
            os=self.cfg.os_name,
            publicKey=self.cfg.public_key,
            capacity=self.cfg.capacity,
            sources=self._sources_in_hello,
            heldJobs=self.runner.held_jobs(),
            **self.cfg.hello_extra,
        )
        await ws.send(encode(hello))
        self.state.fire("hello")
        try:
            welcome = await self._await_welcome(ws)
        except ProtocolError:
            # Tell the relay why (4008, shared/protocol.py's table), not a normal close.
            with contextlib.suppress(ConnectionClosed):
                await ws.close(CLOSE_CODES["PROTOCOL_VIOLATION"], "protocol violation")
            raise
        if welcome is None:
            return
        self.connector_id = welcome["connectorId"]
        self._welcomed = True
        self._welcomed_at = time.monotonic()
        self._progress_at = self.runner.progress
        self._heartbeat_interval = float(welcome["heartbeatInterval"])
        self.connected_since = time.time()
        if self.ship is not None and welcome.get("logLevel"):
            self.ship.setLevel(welcome["logLevel"])
        self._source_updates = bool(welcome.get("sourceUpdates"))
        self.state.fire("welcome")
        if self._source_updates and self._sources_in_hello != self.cfg.sources:
            # changed between the hello and the welcome: the relay has the old list
            await ws.send(encode(make("agent.sources.v1", sources=self.cfg.sources)))
        await self.runner.attach(
            _WsLink(ws),
            connector_id=welcome["connectorId"],
            window=welcome["window"],
            max_chunk_bytes=welcome["maxChunkBytes"],
            started_without_columns=bool(welcome.get("startedWithoutColumns")),
            zstd_chunks=bool(welcome.get("zstdChunks")),
        )
        tasks = [
            asyncio.create_task(self._heartbeats(ws, float(welcome["heartbeatInterval"]))),
            asyncio.create_task(self._ship_logs(ws, welcome.get("logsThrough"))),
        ]
        try:
            async for frame in ws:
                await self._dispatch(ws, frame)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _await_welcome(self, ws: ClientConnection) -> Message | None:
        async with asyncio.timeout(self.cfg.open_timeout):
            async for frame in ws:
                msg = decode_frame(frame, sender=RELAY)
                if isinstance(msg, Message) and msg.type == "relay.welcome.v1":
                    return msg
                if isinstance(msg, Message) and msg.type == "relay.error.v1":
                    log.warning("the relay refused the hello: %s: %s", msg["code"], msg["message"])
                    return None
                raise ProtocolError(f"expected relay.welcome.v1, got {msg.type if isinstance(msg, Message) else 'a binary frame'}")
        return None

    async def _dispatch(self, ws: ClientConnection, frame: str | bytes) -> None:
        try:
            msg = decode_frame(frame, sender=RELAY)
        except ProtocolError as exc:
            # One bad frame must not take the agent down: say so and carry on.
            log.warning("ignored a malformed message from the relay: %s", exc.message)
            return
        if not isinstance(msg, Message):
            return
        if msg.type in ("job.assign.v1", "job.cancel.v1", "job.chunk.ack.v1", "job.done.ack.v1"):
            await self.runner.on_message(msg)
        elif msg.type == "relay.error.v1":
            log.warning("the relay reported an error: %s: %s", msg["code"], msg["message"])
        elif msg.type == "agent.config.v1":
            if self.ship is not None:
                self.ship.setLevel(msg["logLevel"])
        elif msg.type == "relay.reconnect.v1":
            # The relay spreads its agents' delays; a little jitter of our own on top.
            asked = float(msg.get("delaySeconds") or 0.0)
            self._asked_delay = asked + self.rand(0.0, max(1.0, 0.1 * asked))
            log.info("the relay asked the agent to reconnect after %.1f s; reconnecting in %.1f s",
                     asked, self._asked_delay)  # fmt: skip
            await ws.close(1000, "reconnect requested")
        else:  # valid, but not now (a second welcome): said once each, like a malformed one
            log.warning("ignored an unexpected %s from the relay", msg.type)

    async def sources_changed(self, sources: list[dict[str, str]]) -> None:
        """The admin changed the sources while the agent runs: the next hello carries the
        new list, and a relay that takes ``agent.sources.v1`` hears it now."""
        self.cfg.sources = sources
        ws = self._ws
        if ws is None or not self._source_updates or self.state.state != ls.READY:
            return
        with contextlib.suppress(ConnectionClosed):
            await ws.send(encode(make("agent.sources.v1", sources=sources)))

    async def _heartbeats(self, ws: ClientConnection, interval: float) -> None:
        while True:
            sample = await asyncio.to_thread(self.telemetry.sample)
            msg = make(
                "agent.heartbeat.v1",
                cpuUsage=sample.cpu,
                memoryUsage=sample.memory,
                rss=sample.rss,
                activeJobs=self.runner.active_jobs,
                capacity=self.cfg.capacity,
                version=self.cfg.agent_version,
            )
            await ws.send(encode(msg))
            self.last_heartbeat = time.time()
            await asyncio.sleep(interval)

    async def _ship_logs(self, ws: ClientConnection, through: int | None) -> None:
        """Catch up from the local log after ``through``, then ship live (agent/logship)."""
        if self.ship is None:
            return

        async def send(lines: list[dict[str, Any]]) -> None:
            try:
                text = encode(make("agent.logs.v1", lines=lines))
            except ProtocolError:
                return  # a line the protocol refuses is dropped, never retried forever
            await ws.send(text)

        with contextlib.suppress(ConnectionClosed):
            await ship_forever(send, self.ship, through)

    # ------------------------------------------------------------ stopping

    async def _drain(self) -> None:
        self.state.fire("drain")
        self.runner.draining = True
        await self.runner.drain(self.cfg.drain_grace)
        if self.runner.active_jobs:
            await self.runner.stop_all()
        await self.runner.wait_acknowledged(5.0)
        await self._close_now()

    async def _force_stop(self) -> None:
        await self.runner.stop_all()
        await self.runner.wait_acknowledged(2.0)
        await self._close_now()

    async def _close_now(self) -> None:
        self.state.fire("stop")
        self.end_reason = self.end_reason or "stopped"
        ws = self._ws
        if ws is not None:
            await ws.close(1001, "agent stopping")
        self._wake.set()

    # ------------------------------------------------------------ logging

    def _stable(self) -> bool:
        """This session lasted ``stable_after`` seconds after its welcome."""
        at = self._welcomed_at
        return at is not None and time.monotonic() - at >= self.cfg.stable_after

    def _failed(self, reason: str, welcomed: bool) -> None:
        # One line per distinct reason: a relay down for an hour is one warning, not 600,
        # and a relay that drops every session soon after its welcome is one too.
        if reason != self._logged or (welcomed and self._stable()):
            log.warning("%s; reconnecting with backoff", reason)
            self._logged = reason
        else:
            log.debug("%s", reason)
        self._failure = reason

    def _on_change(self, old: str, event: str, new: str) -> None:
        if new == ls.READY:
            self._failure = ""
            log.log(logging.DEBUG if self._flapping else logging.INFO, "connected to the relay %s as connector %s",
                    self.relays.current.shown, self.connector_id)  # fmt: skip
        elif new == ls.DRAINING:
            log.info("stopping: finishing %d running jobs, taking no new ones", self.runner.active_jobs)
        elif new == ls.CLOSED:
            log.info("disconnected from the relay")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
