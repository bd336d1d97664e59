"""Per-request values the middleware (relay/web/middleware.py) sets for handlers."""

from __future__ import annotations

from aiohttp import web

from .auth import Principal

REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)
STREAMING: web.RequestKey[bool] = web.RequestKey("streaming", bool)
# The connection ends after this response (its request body could not be read to the end).
CLOSE_CONNECTION: web.RequestKey[bool] = web.RequestKey("close_connection", bool)
