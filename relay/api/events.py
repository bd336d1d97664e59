"""``GET /events?token=``: the tenant's events over a WebSocket, ``{"type","data","timestamp"}``."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time

import orjson
from aiohttp import web

from shared.errors import BadRequest, RateLimited

from ..web.auth import LEEWAY
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
        reader = asyncio.create_task(_drain(ws))
        try:
            while not ws.closed:
                getter = asyncio.create_task(q.get())
                left = who.exp + LEEWAY - time.time()  # the token is good until then
                timeout = None if math.isinf(left) else max(0.0, left)
                done, _ = await asyncio.wait({getter, reader}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    if not done:  # the token expired: a new socket needs a new token
                        await ws.close(code=TOKEN_EXPIRED, message=b"the token has expired")
                    break
                await ws.send_str(orjson.dumps(getter.result()).decode())
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
    finally:
        relay.events.unsubscribe(who.tenant_id, q)
    return ws
