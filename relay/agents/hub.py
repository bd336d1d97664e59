"""The live agent sessions on this node: handshake, the message loop, liveness.

``Hub.handle`` is the ``GET /api/v1/agent/connect`` handler. It checks the API key
*before* upgrading (a bad, unknown or revoked key gets HTTP 401 in the envelope), then
runs the conversation of docs/ARCHITECTURE.md: hello within ``hello_timeout``, the
duplicate-session rule, welcome, reconciliation of the jobs the agent still holds, and
the message loop, which hands each frame to ``intake``. A bad frame costs the agent a
``relay.error.v1`` and a violation; too many close it with 4008. Nothing an agent sends
can take the relay down or touch another agent's session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from shared import keys, protocol
from shared.crypto import load_public_key
from shared.errors import MCError, ProtocolError, Unauthorized

from ..context import RELAY, Relay
from ..ids_and_times import now
from ..jobs import lifecycle
from ..store import connector_steps, owners, queue
from ..store import connectors as con_store
from ..store import job_steps as steps
from ..store.diskfull import StoreFull
from ..store.outage import StoreUnavailable
from . import connector_status as cs
from . import guard, loglevel, messages
from .session import AgentSession

log = logging.getLogger("relay.hub")
CLOSE = protocol.CLOSE_CODES
DUPLICATE_MESSAGE = ("another agent (another machine or key pair) is already connected with this "
                     "API key; stop it, or register a connector of its own")  # fmt: skip


FRAMES_IN_FLIGHT = 64  # per agent: frames being handled at once before the socket is not read
FRAME_DRAIN_SECONDS = 5.0  # at a session's end, how long frames already read may take
READ_SLICE_SECONDS = 0.005  # reading one agent's frames, let other tasks run at least this often


@dataclass(frozen=True)
class ChunkFrame:
    """A binary frame admitted by its header: the payload is still untouched. ``refused``:
    a chunk of a job the session holds whose zstd frame header is already past the limits;
    it ends its attempt in the job's turn, as a payload refused later does."""

    head: protocol.ChunkHead
    data: bytes
    refused: ProtocolError | None = None


Frame = protocol.Message | ChunkFrame


def _job_of(frame: Frame) -> str | None:
    if isinstance(frame, ChunkFrame):
        return frame.head.job_id
    job_id = frame.get("jobId")
    return job_id if isinstance(job_id, str) else None


def _resolve(turn: asyncio.Future[None]) -> None:
    if not turn.done():
        turn.set_result(None)


class Hub:
    def __init__(self) -> None:
        self.sessions: dict[str, AgentSession] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.workers = guard.ChunkWorkers()  # sized from the config by the first session
        self.log_throttles: dict[str, guard.LogThrottle] = {}  # per connector
        self.penalties = guard.Penalties()  # keys closed for violations: 429 for a while

    # ------------------------------------------------------------ handshake

    async def handle(self, request: web.Request) -> web.StreamResponse:
        relay = request.app[RELAY]
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthorized("an Authorization: Bearer <API key> header is required")
        key = keys.validate_key(key.strip())  # KeyFormatError is a 401 too
        wait = self.penalties.wait(keys.hash_key(key))
        if wait:  # closed for protocol violations moments ago: no store work, no upgrade
            return guard.penalty_response(request, wait)
        connector = await relay.store.run(connector_steps.find_connector, key, now())
        if connector is None:
            raise Unauthorized("the API key is not valid or has been revoked")
        ws = web.WebSocketResponse(
            max_msg_size=protocol.MAX_BINARY_FRAME, compress=False, timeout=2.0
        )
        if not ws.can_prepare(request).ok:
            raise MCError("this route needs a WebSocket upgrade", code="BAD_REQUEST")
        await ws.prepare(request)
        try:
            await self._converse(relay, request, ws, connector, key)
        except StoreUnavailable:  # said once by the store; the agent reconnects later
            with contextlib.suppress(Exception):
                await ws.close(code=CLOSE["INTERNAL_ERROR"], message=b"STORE_UNAVAILABLE")
        except Exception:  # never let one agent's trouble escape into the server
            log.exception("agent session for %s failed", connector["id"])
            with contextlib.suppress(Exception):
                await ws.close(code=1011)
        return ws

    async def _hello(self, relay: Relay, ws: web.WebSocketResponse) -> protocol.Message | None:
        try:
            raw = await ws.receive(timeout=relay.config.hello_timeout)
        except TimeoutError:
            raise ProtocolError("no agent.hello.v1 within the hello timeout") from None
        if raw.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            return None
        msg = protocol.decode_frame(raw.data, sender=protocol.AGENT)
        if not isinstance(msg, protocol.Message) or msg.type != "agent.hello.v1":
            raise ProtocolError("the first message must be agent.hello.v1")
        if msg["protocolVersion"] != protocol.PROTOCOL_VERSION:
            raise ProtocolError(f"protocol version {msg['protocolVersion']} is not supported")
        try:
            load_public_key(msg["publicKey"])
        except MCError as exc:
            raise ProtocolError(f"agent.hello.v1.publicKey: {exc.message}") from None
        return msg

    async def _converse(
        self, relay: Relay, request: web.Request, ws: web.WebSocketResponse, connector: dict[str, Any], key: str
    ) -> None:
        cid = connector["id"]
        try:
            hello = await self._hello(relay, ws)
        except ProtocolError as exc:
            await _refuse(ws, exc.message, CLOSE["PROTOCOL_VIOLATION"])
            return
        if hello is None:
            return
        held_elsewhere = await relay.store.run(
            owners.held_elsewhere, cid, relay.cluster.node_id, hello["publicKey"], now()
        )  # another relay node holds another agent with this key (relay/agents/cluster.py)
        live = self.sessions.get(cid)
        if held_elsewhere:
            await _refuse(ws, DUPLICATE_MESSAGE, CLOSE["DUPLICATE_CONNECTION"], code="DUPLICATE_CONNECTION")
            return
        if live is not None and not live.dead:
            if live.public_key != hello["publicKey"]:
                await _refuse(ws, DUPLICATE_MESSAGE,
                              CLOSE["DUPLICATE_CONNECTION"], code="DUPLICATE_CONNECTION")  # fmt: skip
                return
            del self.sessions[cid]
            await live.close(CLOSE["SESSION_REPLACED"], "SESSION_REPLACED")
        relay.kems.note_hello(cid, hello)  # which KEM its jobs are sealed with (relay/agents/kems.py)
        at = now()
        cfg = relay.config
        session = AgentSession(
            connector_id=cid, tenant_id=connector["tenant_id"], ws=ws,
            public_key=hello["publicKey"], capacity=hello["capacity"],
            hostname=hello["hostname"], version=hello["agentVersion"],
            connected_since=at, last_heartbeat=at, last_traffic=at,
            budget=guard.Budget(cfg.agent_memory_budget),
            log_throttle=self._log_throttle(cfg, cid),
            key_hash=keys.hash_key(key), penalty=cfg.agent_violation_penalty,
        )  # fmt: skip
        self.sessions[cid] = session
        try:
            if not await self._welcome(relay, request, session, connector, hello):
                return
            await self._loop(relay, session)
            await session.wait_closed(3.0)
        finally:
            # aiohttp cancels the handler when the peer goes away; the bookkeeping of a
            # disconnection must finish anyway, so it runs as its own task.
            await asyncio.shield(self._spawn(self._gone(relay, session)))

    def _log_throttle(self, cfg: Any, connector_id: str) -> guard.LogThrottle:
        """The connector's log budget, kept across its sessions: reconnecting does not
        refill it (it refills with time)."""
        throttle = self.log_throttles.get(connector_id)
        if throttle is None:
            throttle = self.log_throttles[connector_id] = guard.LogThrottle(
                cfg.agent_log_lines_per_second, cfg.agent_log_bytes_per_second, cfg.agent_log_burst_seconds
            )  # fmt: skip
        return throttle

    async def _welcome(
        self, relay: Relay, request: web.Request, session: AgentSession,
        connector: dict[str, Any], hello: protocol.Message,
    ) -> bool:  # fmt: skip
        """Welcome the agent (True), or refuse it (False, closed 4001) when its key was
        revoked or rotated out since the handshake let it upgrade."""
        fields = {
            "status": cs.TO[cs.CONNECT], "hostname": hello["hostname"], "ip_address": request.remote,
            "version": hello["agentVersion"], "os": hello["os"][:20] or connector["os"],
            "capacity": hello["capacity"], "public_key": hello["publicKey"],
            "sources": orjson.dumps(hello["sources"]).decode(), "connected_since": session.connected_since,
            "last_seen": session.connected_since, "active_jobs": 0, "cpu_usage": None, "memory_usage": None,
            **owners.owner_fields(relay.cluster.node_id, session.connected_since + relay.config.offline_after),
        }  # fmt: skip
        held = {(h["jobId"], h["attempt"]) for h in hello.get("heldJobs") or []}
        welcomed = await relay.store.run(
            connector_steps.welcome, session.connector_id, fields, held, relay.config.offline_after,
            session.key_hash,
        )  # fmt: skip
        if welcomed is None:
            if self.sessions.get(session.connector_id) is session:
                del self.sessions[session.connector_id]  # never welcomed: nothing to mark offline
            session.to("end")
            await _refuse(session.ws, "the API key is not valid or has been revoked",
                          CLOSE["UNAUTHORIZED"], code="UNAUTHORIZED")  # fmt: skip
            return False
        kept, given_back, cancelled, stale, ended = welcomed
        session.in_flight.update(kept)
        for job_id, attempt in (*cancelled, *ended):  # their frames may come again: dropped
            session.note_closed(job_id, attempt)
        self._given_back(relay, given_back)
        relay.events.publish(
            session.tenant_id, "connector_status_changed",
            cs.changed(session.connector_id, cs.ONLINE, session.connected_since),
        )  # fmt: skip
        await session.send(
            "relay.welcome.v1", protocolVersion=protocol.PROTOCOL_VERSION,
            connectorId=session.connector_id, heartbeatInterval=relay.config.heartbeat_interval,
            window=relay.config.window, maxChunkBytes=relay.config.max_chunk_bytes,
            startedWithoutColumns=True, zstdChunks=True, sourceUpdates=True,
            **await loglevel.welcome_fields(relay.log_levels, relay.store, connector, session.connected_since),
        )  # fmt: skip
        for job_id, attempt in cancelled:
            await session.send("job.cancel.v1", jobId=job_id, attempt=attempt, reason="CANCELLED")
        for job_id, attempt in stale:
            session.superseded.add((job_id, attempt))
            await session.send("job.cancel.v1", jobId=job_id, attempt=attempt, reason="SUPERSEDED")
        session.to("welcomed")
        log.info("agent connected", extra={"connector_id": session.connector_id})
        await messages.dispatch(relay, session)
        return True

    # ------------------------------------------------------------ message loop

    async def _loop(self, relay: Relay, session: AgentSession) -> None:
        """Read frames and hand each to its own task, without waiting for the previous
        frame's store write: the frames of many jobs (and a job's started, chunk and done)
        then share one group commit instead of one commit each, one after the other.

        A chunk frame is checked from its header alone first (``agentguard.admit``): one
        for a job this session does not hold is refused before any work on its payload.
        An admitted frame takes its bytes from the connection's memory budget; past the
        budget, or ``FRAMES_IN_FLIGHT`` frames, the socket is not read and TCP pushes back
        on the agent. A chunk's payload work runs in a worker thread (``agentguard``).

        Order is kept where it matters: a job's frames make their store calls in arrival
        order (each waits for the previous frame of the same job to have made its store
        call; on PostgreSQL, whose calls run in parallel on a pool, to have finished). On
        SQLite the store runs calls in the order they were made (one writer thread,
        ``relay/store/batching.py``), so frames are recorded in arrival order.
        """
        slots = asyncio.Semaphore(FRAMES_IN_FLIGHT)
        ordered = relay.store.batcher is not None
        self.workers.size(relay.config.chunk_threads)
        tails: dict[str, asyncio.Future[None]] = {}
        tasks: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()
        busy_since = loop.time()
        try:
            async for raw in session.ws:
                if raw.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    break
                if loop.time() - busy_since > READ_SLICE_SECONDS:
                    await asyncio.sleep(0)  # frames already buffered are read without a yield
                    busy_since = loop.time()
                session.last_traffic = now()
                if session.close_request is not None:
                    break  # a frame's task asked to close: done here, below
                try:
                    frame = await self._admit(relay, session, raw.data)
                except ProtocolError as exc:
                    await self._violation(session, exc.message, relay.config.max_violations)
                    if session.dead:
                        break
                    continue
                if frame is None:
                    continue
                cost = len(raw.data) + (frame.head.bound if isinstance(frame, ChunkFrame) and not frame.refused else 0)
                if session.budget.used and session.budget.used + cost > session.budget.limit:
                    relay.metrics.agent_reads_paused.inc()
                await session.budget.take(cost)
                await slots.acquire()
                job_id = _job_of(frame)
                after = tails.get(job_id) if job_id else None
                turn: asyncio.Future[None] = loop.create_future()
                ready: Callable[[], None] = (lambda t=turn: _resolve(t)) if ordered else (lambda: None)
                task = asyncio.create_task(self._frame(relay, session, frame, slots, after, ready, cost))
                task.add_done_callback(lambda _t, t=turn: _resolve(t))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                if job_id:
                    tails[job_id] = turn
                    turn.add_done_callback(lambda t, j=job_id: tails.get(j) is t and tails.pop(j))
                if session.dead:
                    break
            if session.close_request is not None:
                # Closed by the task that reads the socket: it reads on until the peer's
                # close reply, so no unread frame is left for the kernel to answer with a
                # reset that would cut off our close frame.
                await session.close(*session.close_request)
        finally:
            if tasks:  # let frames already read finish their bookkeeping
                await asyncio.wait(set(tasks), timeout=FRAME_DRAIN_SECONDS)

    async def _admit(self, relay: Relay, session: AgentSession, data: str | bytes) -> Frame | None:
        """A frame as read, decoded (text) or checked from its header (binary); None when
        it is dropped here (a late or superseded chunk: counted, not a violation)."""
        if isinstance(data, str):
            obj = protocol.parse_text(data)
            lines = obj.get("lines")
            if obj.get("type") == "agent.logs.v1" and isinstance(lines, list):
                obj["lines"] = kept = session.log_throttle.trim(lines)  # a flood costs no validation
                if lines and len(kept) < len(lines):  # but a malformed batch is still refused
                    protocol.validate_text({**obj, "lines": lines[:1]}, sender=protocol.AGENT)
            return protocol.validate_text(obj, sender=protocol.AGENT)
        refused = relay.metrics.agent_frames_refused
        try:
            head = protocol.read_chunk_head(data)
        except ProtocolError:
            refused.labels(reason="header").inc()
            raise
        verdict = guard.admit(session, head)
        if verdict == guard.ADMIT:
            try:
                return ChunkFrame(protocol.bound_chunk(head, data), data)
            except ProtocolError as exc:
                refused.labels(reason="header").inc()
                return ChunkFrame(head, b"", exc)
        refused.labels(reason=verdict).inc()
        if verdict == guard.FOREIGN:
            raise ProtocolError(f"chunk {head.seq} for job {head.job_id} attempt {head.attempt}: "
                                "that job is not leased to this connector")  # fmt: skip
        if verdict == guard.STALE and (head.job_id, head.attempt) not in session.superseded:
            session.superseded.add((head.job_id, head.attempt))
            await session.send("job.cancel.v1", jobId=head.job_id, attempt=head.attempt, reason="SUPERSEDED")
        return None

    async def _frame(
        self, relay: Relay, session: AgentSession, frame: Frame, slots: asyncio.Semaphore,
        after: asyncio.Future[None] | None, ready: Callable[[], None], cost: int,
    ) -> None:  # fmt: skip
        """Handle one frame; what goes wrong is answered on the socket, as one frame's
        error, never ending the session (but for repeated protocol violations)."""
        try:
            if after is not None and not after.done():  # no yield when it is: same group commit
                await asyncio.wait({after})
            if session.dead:
                return
            try:
                await self._route(relay, session, frame, ready)
            except steps.StaleAttempt:
                pass  # the agent was told to drop that attempt; its frames are ignored
            except ProtocolError as exc:
                if isinstance(frame, ChunkFrame) and frame.refused is None:
                    relay.metrics.agent_frames_refused.labels(reason="payload").inc()
                await self._violation(session, exc.message, relay.config.max_violations)
                if isinstance(frame, ChunkFrame):
                    await messages.end_refused(relay, session, frame.head, "RESULT_REJECTED",
                                               f"the relay refused the agent's rows: {exc.message}", False)  # fmt: skip
            except StoreFull as exc:  # said once in the relay's log; the agent cannot help
                if isinstance(frame, ChunkFrame):
                    why = f"the relay's store is out of disk space: chunk {frame.head.seq} of the result could not be stored"
                    with contextlib.suppress(StoreFull):  # then its end waits for space
                        await messages.end_refused(relay, session, frame.head, exc.code, why, True)
            except StoreUnavailable:  # said once by the store (store/outage.py)
                # Not acknowledged, not failed: the agent reconnects and resends what the
                # relay has not acknowledged (chunks, started, done) once the store is back.
                # A heartbeat or log lines are simply tried again later.
                if isinstance(frame, ChunkFrame) or frame.type in _RESENT_ON_RECONNECT:
                    log.info("closing %s: the store is unreachable; the agent resends once it is back",
                             session.connector_id)
                    session.request_close(CLOSE["INTERNAL_ERROR"], "STORE_UNAVAILABLE")
            except MCError as exc:
                await session.send("relay.error.v1", code=exc.code, message=exc.message[:2000])
                if isinstance(frame, ChunkFrame):
                    await messages.end_refused(relay, session, frame.head, exc.code, exc.message,
                                               exc.retryable)  # fmt: skip
            except Exception:
                log.exception("handling a frame from %s failed", session.connector_id)
                await session.send("relay.error.v1", code="INTERNAL_ERROR",
                                   message="the relay could not process this message")  # fmt: skip
                if isinstance(frame, ChunkFrame):
                    await messages.end_refused(relay, session, frame.head, "INTERNAL_ERROR",
                                               f"the relay could not store chunk {frame.head.seq}", True)  # fmt: skip
        finally:
            ready()
            session.budget.give(cost)
            slots.release()

    async def _route(self, relay: Relay, session: AgentSession, frame: Frame, ready: Callable[[], None]) -> None:
        if isinstance(frame, ChunkFrame):
            if frame.refused is not None:
                raise frame.refused
            await messages.on_chunk(relay, session, frame.head, frame.data, ready)
            return
        ready()  # a text frame's first step is its store call
        handler = _HANDLERS.get(frame.type)
        if handler is None:
            raise ProtocolError(f"{frame.type} is not expected after the hello")
        await handler(relay, session, frame)

    async def _violation(self, session: AgentSession, message: str, limit: int) -> None:
        if session.dead:
            return  # closing already: frames still in hand get no more errors
        session.violations += 1
        await session.send("relay.error.v1", code="PROTOCOL_ERROR", message=message[:2000])
        if session.violations >= limit and not session.dead:
            log.warning("closing %s after %d protocol violations", session.connector_id, limit)
            session.request_close(CLOSE["PROTOCOL_VIOLATION"], "PROTOCOL_VIOLATION")
            if session.penalty > 0 and session.key_hash:  # no sooner back than an honest agent
                self.penalties.punish(session.key_hash, session.penalty)

    async def _gone(self, relay: Relay, session: AgentSession) -> None:
        """The socket closed. Unless this session was replaced or swept, mark offline."""
        with contextlib.suppress(Exception):  # the store may be closing at shutdown
            await messages.flush_log_drops(relay, session)
        if self.sessions.get(session.connector_id) is not session:
            return
        del self.sessions[session.connector_id]
        session.to("end")
        await self._mark_offline(relay, session)

    async def _mark_offline(self, relay: Relay, session: AgentSession, *, silent: bool = False) -> None:
        """Offline, with ``lastSeen`` the last time the agent was heard: now when its
        socket closed, its last heartbeat or frame when it went ``silent`` (swept)."""
        at = max(session.last_heartbeat, session.last_traffic) if silent else now()
        released = False
        with contextlib.suppress(Exception):  # the store may be closing at shutdown
            # Offline unless another relay node holds the agent now (relay/agents/cluster.py).
            released = await relay.store.run(owners.release, session.connector_id, relay.cluster.node_id, at)
        if not released:
            return
        relay.events.publish(
            session.tenant_id, "connector_status_changed",
            cs.changed(session.connector_id, cs.OFFLINE, at),
        )  # fmt: skip
        log.info("agent disconnected", extra={"connector_id": session.connector_id})

    # ------------------------------------------------------------ used by the API

    async def kick(self, relay: Relay, connector_id: str) -> None:
        session = self.sessions.get(connector_id)
        if session is not None and not session.dead:
            # The store out of reach: said once by it; its return kicks every session again
            # (the LISTEN reconnect, relay/agents/cluster.py), and the sweeps dispatch.
            with contextlib.suppress(StoreUnavailable):
                await messages.dispatch(relay, session)

    async def cancel(self, connector_id: str, job_id: str, attempt: int) -> None:
        session = self.sessions.get(connector_id)
        if session is not None and job_id in session.in_flight:
            await session.send("job.cancel.v1", jobId=job_id, attempt=attempt, reason="CANCELLED")

    async def disconnect(self, connector_id: str, code: int, reason: str) -> None:
        """Close a live session now (revocation); no offline event, the caller says why."""
        session = self.sessions.pop(connector_id, None)
        if session is not None:
            self._spawn(session.close(code, reason))

    def end_key(self, connector_id: str) -> None:
        """The API key the live session connected with stopped working (a rotation with
        grace 0, or its grace ran out): close it 4001 (the agent backs off; its key now
        gets 401). Unlike ``disconnect`` the socket's end is ordinary: ``offline``."""
        session = self.sessions.get(connector_id)
        if session is not None and not session.dead:
            log.info("closing the agent: its API key is no longer valid", extra={"connector_id": connector_id})
            session.request_close(CLOSE["UNAUTHORIZED"], "UNAUTHORIZED")

    async def end_lapsed_keys(self, relay: Relay) -> None:
        """Close the sessions here whose API key has stopped working since they connected."""
        held = {cid: s.key_hash for cid, s in self.sessions.items() if s.key_hash and not s.dead}
        if not held:
            return
        for cid in await relay.store.run(con_store.keys_no_longer_valid, held, now()):
            session = self.sessions.get(cid)
            if session is not None and session.key_hash == held[cid]:
                self.end_key(cid)

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run ``coro`` as a task the hub keeps (and waits for at shutdown)."""
        return self._spawn(coro)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------ liveness

    async def sweep(self, relay: Relay) -> None:
        """Drop sessions silent for ``offline_after_missed`` heartbeat intervals (close
        4011), then give back the jobs whose lease lapsed."""
        deadline = now() - relay.config.offline_after
        for cid, session in list(self.sessions.items()):
            if max(session.last_heartbeat, session.last_traffic) < deadline and not session.dead:
                del self.sessions[cid]
                session.to("end")
                await self._mark_offline(relay, session, silent=True)
                self._spawn(session.close(CLOSE["HEARTBEAT_TIMEOUT"], "HEARTBEAT_TIMEOUT"))
        await self.lapse_leases(relay)

    async def lapse_leases(self, relay: Relay) -> None:
        """In-flight jobs whose lease ran out go back to the queue (or fail past their
        retryLimit). A connector still talking to this node keeps its jobs: its heartbeat
        may just be late behind a stream of chunks, so its leases are renewed instead. None
        lapse while the store is out of reach or for one lease after it is back: its agents
        were sent away (1011) and could not come back until then (store/outage.py)."""
        if relay.store.outage.recent(relay.config.offline_after):
            return
        at = now()
        lapsed = await relay.store.run(queue.lapsed, at, relay.cluster.node_id)
        if not lapsed:
            return
        lease = relay.config.offline_after
        renew, lost = set(), []
        for job in lapsed:
            s = self.sessions.get(job["connector_id"])
            alive = s is not None and not s.dead and s.last_traffic >= at - lease
            if alive and s is not None and s.in_flight.get(job["id"]) == job["attempt"]:
                renew.add(job["connector_id"])
            else:
                lost.append(job)
        moved = await relay.store.run(connector_steps.lapse, lost, renew, at,
                                     lifecycle.lease_expiry(at, lease))
        for job in moved:
            log.info("lease of job %s lapsed", job["id"], extra={"job_id": job["id"]})
        self._given_back(relay, moved)

    def _given_back(self, relay: Relay, jobs: list[dict[str, Any]]) -> None:
        """Jobs that left their agent: readers of the old attempt end, the queue moves on."""
        for job in jobs:
            relay.notifier.notify(job["id"])  # a live reader of the abandoned attempt ends
            session = self.sessions.get(job["connector_id"])
            if session is not None:  # its later frames: SUPERSEDED if it went back to the queue
                session.release_job(job["id"], supersede=job["status"] not in lifecycle.FINAL)
            if job["status"] in lifecycle.FINAL:
                messages.publish_completed(relay.events, job["tenant_id"], job)
            elif session is not None:
                self._spawn(self.kick(relay, job["connector_id"]))

    async def close_all(self) -> None:
        self.workers.shutdown()
        sessions = list(self.sessions.values())
        await asyncio.gather(
            *(s.close(CLOSE["GOING_AWAY"], "relay shutting down") for s in sessions),
            return_exceptions=True,
        )
        # Let disconnection bookkeeping finish (it writes "offline"), then stop stragglers.
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=3.0)
        for task in list(self._tasks):
            task.cancel()


async def _refuse(ws: web.WebSocketResponse, message: str, close_code: int, *, code: str = "PROTOCOL_ERROR") -> None:
    with contextlib.suppress(Exception):
        text = protocol.encode(protocol.make("relay.error.v1", code=code, message=message[:2000]))
        await ws.send_str(text)
    with contextlib.suppress(Exception):
        await ws.close(code=close_code, message=code.encode())


_RESENT_ON_RECONNECT = frozenset({"job.started.v1", "job.done.v1"})
_HANDLERS = {
    "agent.heartbeat.v1": messages.on_heartbeat,
    "job.started.v1": messages.on_started,
    "job.done.v1": messages.on_done,
    "agent.logs.v1": messages.on_logs,
    "agent.sources.v1": messages.on_sources,
}
