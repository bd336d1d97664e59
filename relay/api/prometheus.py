"""``GET /metrics``: the relay's Prometheus metrics (relay/metrics.py), read at scrape time.

The route lives outside ``/api/v1`` and skips the platform's JWT: when
``MC_RELAY_METRICS_TOKEN`` is set it needs ``Authorization: Bearer <that token>``,
otherwise it is open (serve it on an internal network, or block it at the reverse proxy).
"""

from __future__ import annotations

import hmac

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from shared.errors import Unauthorized

from ..store import jobs as job_store
from .common import relay_of


def _check_token(request: web.Request, token: str | None) -> None:
    if not token:
        return
    header = request.headers.get("Authorization", "")
    given = header[7:].strip() if header[:7].lower() == "bearer " else ""
    if not given or not hmac.compare_digest(given.encode(), token.encode()):
        raise Unauthorized("GET /metrics needs Authorization: Bearer <MC_RELAY_METRICS_TOKEN>")


async def get(request: web.Request) -> web.Response:
    relay = relay_of(request)
    _check_token(request, relay.config.metrics_token)
    by_state = await relay.store.run(job_store.count_by_status)
    connected = sum(1 for s in relay.hub.sessions.values() if not s.dead)
    body = relay.metrics.render(connected, by_state, relay.store.batcher)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
