"""Graceful shutdown of the relay: stop taking agents, send them away spread out, finish writes.

On SIGTERM ``mini-relay serve`` calls ``drain(relay)`` before it stops the server:

1. ``relay.stopping`` is set: new agent handshakes are answered 503
   ``SERVICE_UNAVAILABLE`` with ``Retry-After`` (``refusing`` wraps the agent route), and
   no more jobs are dispatched (each session is marked draining).
2. Every connected agent gets ``relay.reconnect.v1`` with its own ``delaySeconds``, drawn
   uniformly from ``reconnect_delay_min`` to ``reconnect_delay_min + reconnect_delay_spread``,
   so a fleet does not come back in one burst (the agent adds a little jitter of its own).
3. The agents close their sockets. Frames already on a socket (chunks, done messages) are
   handled in order before the close is seen, so every chunk write that started finishes
   and is acknowledged; anything not acknowledged the agent still holds and resends to
   the next relay. After ``shutdown_grace`` seconds the stragglers are closed (1012
   SERVICE_RESTART) and the disconnection bookkeeping runs; then the store closes.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from shared.protocol import CLOSE_CODES

from .context import RELAY, Relay
from .web.envelope import envelope_error
from .web.request_keys import REQUEST_ID

log = logging.getLogger("relay.shutdown")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def refusing(handler: Handler) -> Handler:
    """The agent route, answering 503 while the relay shuts down."""

    async def handle(request: web.Request) -> web.StreamResponse:
        relay = request.app[RELAY]
        if relay.stopping:
            wait = max(1, round(relay.config.reconnect_delay_min))
            response = envelope_error(
                503, "SERVICE_UNAVAILABLE", "the relay is shutting down; reconnect shortly",
                None, request.get(REQUEST_ID, ""),
            )  # fmt: skip
            response.headers["Retry-After"] = str(wait)
            return response
        return await handler(request)

    return handle


def reconnect_delay(relay: Relay, rand: Callable[[float, float], float] = random.uniform) -> float:
    low = relay.config.reconnect_delay_min
    return round(low + rand(0.0, max(0.0, relay.config.reconnect_delay_spread)), 2)


async def drain(relay: Relay, *, rand: Callable[[float, float], float] = random.uniform) -> None:
    """Send the connected agents away (each with its own delay) and wait for them to go."""
    relay.stopping = True
    hub = relay.hub
    sessions = [s for s in hub.sessions.values() if not s.dead]
    for s in sessions:
        s.to("drain")  # no new jobs for it
    sent = await asyncio.gather(
        *(s.send("relay.reconnect.v1", delaySeconds=reconnect_delay(relay, rand)) for s in sessions),
        return_exceptions=True,
    )
    log.info("shutting down: asked %d agents to reconnect later", sum(1 for ok in sent if ok is True))
    deadline = time.monotonic() + relay.config.shutdown_grace
    while time.monotonic() < deadline:
        # A session leaves ``hub.sessions`` once its socket closed and every frame before
        # the close was handled (the hub's loop takes frames one at a time, in order).
        if not any(hub.sessions.get(s.connector_id) is s for s in sessions):
            break
        await asyncio.sleep(0.05)
    left = [s for s in sessions if hub.sessions.get(s.connector_id) is s]
    if left:
        log.warning("%d agents did not disconnect within %.0f s; closing their sockets",
                    len(left), relay.config.shutdown_grace)  # fmt: skip
        await asyncio.gather(
            *(s.close(CLOSE_CODES["SERVICE_RESTART"], "relay restarting") for s in left),
            return_exceptions=True,
        )
    await hub.close_all()  # waits for the disconnection bookkeeping (it writes "offline")
