"""``GET /health``: is the store reachable, how many agents are connected here."""

from __future__ import annotations

import asyncio
import logging

import orjson
from aiohttp import web

from ..store.outage import StoreUnavailable
from .common import relay_of

log = logging.getLogger("relay.health")
PING_TIMEOUT = 3.0


async def get(request: web.Request) -> web.Response:
    relay = relay_of(request)
    try:
        await asyncio.wait_for(relay.store.ping(), PING_TIMEOUT)
        db = "healthy"
    except StoreUnavailable:  # said once by the store (relay/store/outage.py)
        db = "unhealthy"
    except Exception as exc:  # noqa: BLE001 - any failure means unhealthy, said plainly
        log.warning("health: store unreachable (%s)", type(exc).__name__)
        db = "unhealthy"
    healthy = db == "healthy"
    body = {
        "success": healthy,
        "status": "healthy" if healthy else "unhealthy",
        "version": relay.config.version,
        # Reads still work on a full disk: it is said here, not made an outage (store/diskfull).
        "checks": {"database": {"status": db, "disk": "full" if relay.store.disk.full else "ok"}},
        "connectedAgents": len(relay.hub.sessions),
    }
    return web.Response(status=200 if healthy else 503, body=orjson.dumps(body),
                        content_type="application/json")  # fmt: skip
