"""``GET /events?token=``: the tenant's events over a WebSocket, ``{"type","data","timestamp"}``.

A socket that does not read loses its oldest events (``relay.events.QUEUE_SIZE``) and is
cut after ``MC_RELAY_SEND_TIMEOUT`` without progress or at its token's expiry, whichever
comes first (relay/web/slow_clients.py)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from typing import Any

import orjson
from aiohttp import web

from shared.errors import BadRequest, RateLimited

from ..web.auth import LEEWAY
from ..web.slow_clients import reset, watch_sends
from .common import principal, relay_of

TOKEN_EXPIRED = 4001  # the close code when the token that opened the socket expires
RETRY_AFTER = 5  # seconds a client over the per-tenant socket cap is asked to wait


async def _drain(ws: web.WebSocketResponse) -> None:
    # Clients send nothing we act on; reading keeps pings answered and sees the close.
    async for _ in ws:
        pass


async def stream(request: web.Request) -> web.StreamResponse:
    relay, who = relay_of(request), principal(request)
    ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=64 * 1024, timeout=2.0)
    if not ws.can_prepare(request).ok:
        raise BadRequest("this route needs a WebSocket upgrade")
    limit = relay.config.event_sockets_per_tenant
    if relay.events.subscribers(who.tenant_id) >= limit:
        # Each socket buffers up to QUEUE_SIZE events: without a cap one valid token could
        # hold the relay's memory by opening socket after socket.
        raise RateLimited(f"this tenant already has {limit} event sockets open on this relay node "
                          f"(MC_RELAY_EVENT_SOCKETS): close one; retry after {RETRY_AFTER} s",
                          details={"retryAfter": RETRY_AFTER, "limit": limit})  # fmt: skip
    q = relay.events.subscribe(who.tenant_id)
    try:
        await ws.prepare(request)
        # A client that stops reading is cut after MC_RELAY_SEND_TIMEOUT (its send buffer
        # full, its queue dropping the oldest events meanwhile): aiohttp alone would wait
        # on it for ever, past its token's expiry, holding one of the tenant's sockets.
        async with watch_sends(request.transport, relay.config.send_timeout, f"an event socket of {who.tenant_id}"):
            await _pump(ws, q, who.exp + LEEWAY, request)
    except ConnectionError:
        pass  # the client went (or was cut): nothing to answer
    finally:
        relay.events.unsubscribe(who.tenant_id, q)
    return ws


async def _pump(ws: web.WebSocketResponse, q: asyncio.Queue[dict[str, Any]], good_until: float,
                request: web.Request) -> None:  # fmt: skip
    reader = asyncio.create_task(_drain(ws))
    try:
        while not ws.closed:
            getter = asyncio.create_task(q.get())
            left = good_until - time.time()  # the token is good until then
            timeout = None if math.isinf(left) else max(0.0, left)
            done, _ = await asyncio.wait({getter, reader}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                if not done:  # the token expired: a new socket needs a new token
                    await ws.close(code=TOKEN_EXPIRED, message=b"the token has expired")
                break
            left = good_until - time.time()
            try:
                # A send waits while the client does not read: not past the token's expiry.
                async with asyncio.timeout(None if math.isinf(left) else max(0.0, left)):
                    await ws.send_str(orjson.dumps(getter.result()).decode())
            except TimeoutError:
                # Its send buffer is full, so a close frame could not reach it either.
                if request.transport is not None:
                    reset(request.transport)
                break
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
