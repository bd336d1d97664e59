"""One live agent connection on this node: its socket, identity, capacity and jobs.

The hub owns sessions; intake and dispatch read and update them. Sends are serialised
with a lock so a chunk ack and a job assignment never interleave on the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from shared import protocol

from .guard import CLOSED_KEEP, Budget, LogThrottle

log = logging.getLogger("relay.hub")

# The session's own lifecycle, one table every change goes through (``AgentSession.to``):
#
#   welcoming --welcomed--> open      (the welcome's transaction made this node the
#                                      connector's owner; until then the session takes no
#                                      job and the cluster's lease renewal leaves it alone)
#   open --drain--> draining          (the agent said AGENT_SHUTDOWN, or the relay drains)
#   open/draining --end--> ending     (the relay ended it: close requested, swept, replaced
#                                      or its socket gone; its message loop is finishing)
#   open/draining/ending --close--> closing --closed--> closed   (the close handshake)
#
# Only an open session takes new jobs; ``dead`` is every state from ending on. An event a
# state already reflects (drain while ending, end while closing) leaves it where it is;
# a pair with no entry is a bug and raises.
WELCOMING, OPEN, DRAINING, ENDING, CLOSING, CLOSED = "welcoming", "open", "draining", "ending", "closing", "closed"
SESSION_STATES = (WELCOMING, OPEN, DRAINING, ENDING, CLOSING, CLOSED)
SESSION_TRANSITIONS: dict[tuple[str, str], str] = {
    (WELCOMING, "welcomed"): OPEN,
    (WELCOMING, "drain"): DRAINING, (WELCOMING, "end"): ENDING, (WELCOMING, "close"): CLOSING,
    # welcomed after the relay began to drain or end it: it stays where it is
    (DRAINING, "welcomed"): DRAINING, (ENDING, "welcomed"): ENDING,
    (CLOSING, "welcomed"): CLOSING, (CLOSED, "welcomed"): CLOSED,
    (OPEN, "drain"): DRAINING, (DRAINING, "drain"): DRAINING,
    (ENDING, "drain"): ENDING, (CLOSING, "drain"): CLOSING, (CLOSED, "drain"): CLOSED,
    (OPEN, "end"): ENDING, (DRAINING, "end"): ENDING, (ENDING, "end"): ENDING,
    (CLOSING, "end"): CLOSING, (CLOSED, "end"): CLOSED,
    (OPEN, "close"): CLOSING, (DRAINING, "close"): CLOSING, (ENDING, "close"): CLOSING,
    (CLOSING, "closed"): CLOSED,
}  # fmt: skip
_DEAD = frozenset({ENDING, CLOSING, CLOSED})


class IllegalSessionStep(RuntimeError):
    """A session event its state has no entry for (a bug, never the agent's doing)."""


CLOSE_WAIT_SECONDS = 12.0  # longer than aiohttp's own wait for the peer's close reply
CLOSE_REQUEST_SECONDS = 0.25  # a close asked of the message loop, done by it or after this


@dataclass
class AgentSession:
    connector_id: str
    tenant_id: str
    ws: web.WebSocketResponse
    public_key: str
    capacity: int
    hostname: str
    version: str
    connected_since: float
    last_heartbeat: float
    cpu_usage: float | None = None
    memory_usage: float | None = None
    active_jobs: int = 0
    violations: int = 0
    state: str = WELCOMING  # SESSION_TRANSITIONS; changed only by ``to``
    last_traffic: float = 0.0  # any frame at all; what keeps the session (and leases) alive
    in_flight: dict[str, int] = field(default_factory=dict)  # job id -> attempt
    pending_done: dict[str, protocol.Message] = field(default_factory=dict)
    superseded: set[tuple[str, int]] = field(default_factory=set)  # told to drop these
    ending: set[tuple[str, int]] = field(default_factory=set)  # attempts messages.end_refused is ending
    # Jobs that left this session (ended, given back, or held at hello but over): job id
    # -> (attempt, whether its frames get SUPERSEDED). Tells a late frame from a foreign one.
    closed: OrderedDict[str, tuple[int, bool]] = field(default_factory=OrderedDict)
    budget: Budget = field(default_factory=lambda: Budget(64 << 20))  # bytes of frames in hand
    chunk_work: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(2))  # in threads at once
    log_throttle: LogThrottle = field(default_factory=lambda: LogThrottle(200, 256 << 10, 10))
    key_hash: str = ""  # of the API key it connected with (the violation penalty's key)
    penalty: float = 0.0  # seconds its key's handshakes get 429 after a close for violations
    close_request: tuple[int, str] | None = None  # see request_close
    _close_timer: asyncio.TimerHandle | None = None
    _close_task: asyncio.Task[None] | None = None
    close_done: asyncio.Event = field(default_factory=asyncio.Event)
    dispatch_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def to(self, event: str) -> str:
        """Take ``event`` (SESSION_TRANSITIONS); returns the new state."""
        target = SESSION_TRANSITIONS.get((self.state, event))
        if target is None:
            raise IllegalSessionStep(f"session {self.connector_id} is {self.state}; it cannot {event}")
        self.state = target
        return target

    @property
    def dead(self) -> bool:
        """Ended by the relay (or its socket gone): it takes nothing more, its loop ends."""
        return self.state in _DEAD

    @property
    def draining(self) -> bool:
        """The agent is leaving (AGENT_SHUTDOWN) or the relay is: no new jobs for it."""
        return self.state == DRAINING

    @property
    def takes_jobs(self) -> bool:
        return self.state == OPEN

    @property
    def welcomed(self) -> bool:
        """Its welcome is committed: this node is the connector's owner in the store."""
        return self.state != WELCOMING

    @property
    def closing(self) -> bool:
        return self.state in (CLOSING, CLOSED)

    @property
    def free_slots(self) -> int:
        return max(0, self.capacity - len(self.in_flight))

    def release_job(self, job_id: str, *, supersede: bool = False) -> int | None:
        """The job leaves this session (ended or given back); returns its attempt. Its
        later frames are then dropped (``supersede``: the agent is told to drop it)."""
        attempt = self.in_flight.pop(job_id, None)
        if attempt is not None:
            self.note_closed(job_id, attempt, supersede=supersede)
        return attempt

    def note_closed(self, job_id: str, attempt: int, *, supersede: bool = False) -> None:
        self.closed[job_id] = (attempt, supersede)
        self.closed.move_to_end(job_id)
        while len(self.closed) > CLOSED_KEEP:
            self.closed.popitem(last=False)

    async def send(self, type_: str, **fields: Any) -> bool:
        """Send one message; False if the socket is gone (the caller decides what then)."""
        if self.ws.closed:
            return False
        text = protocol.encode(protocol.make(type_, **fields))
        try:
            async with self.send_lock:
                await self.ws.send_str(text)
        except (ConnectionError, RuntimeError) as exc:
            log.info("send to %s failed: %s", self.connector_id, type(exc).__name__)
            return False
        return True

    def request_close(self, code: int, message: str) -> None:
        """Ask the message loop to close the socket, from a frame's task. Closed from a
        task other than the reader, aiohttp drops the connection right after sending the
        close frame; frames the agent sent meanwhile, unread, make the kernel answer with
        a reset, and the agent may never see the close code. The loop closes at its next
        frame; if none comes within CLOSE_REQUEST_SECONDS, nothing is left unread and
        closing from here is safe."""
        if self.dead:
            return
        self.to("end")
        self.close_request = (code, message)
        loop = asyncio.get_running_loop()

        def fallback() -> None:
            if not self.closing:
                self._close_task = loop.create_task(self.close(code, message))

        self._close_timer = loop.call_later(CLOSE_REQUEST_SECONDS, fallback)

    async def close(self, code: int, message: str = "") -> None:
        """Close the socket with ``code``, once: frames are handled in tasks of their own
        (relay/agents/hub.py), so two of them may decide to close at the same time; the second
        waits for the first close handshake instead of cutting it short."""
        if self._close_timer is not None:
            self._close_timer.cancel()
        if self.closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.close_done.wait(), CLOSE_WAIT_SECONDS)
            return
        self.to("close")
        try:
            with contextlib.suppress(Exception):
                await self.ws.close(code=code, message=message.encode()[:120])
        finally:
            self.to("closed")
            self.close_done.set()

    async def wait_closed(self, timeout: float) -> None:
        """When another task is closing this socket, let it finish the close handshake
        before the handler returns (returning early drops the connection: 1006)."""
        if self.closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.close_done.wait(), timeout)
