"""The contract's error envelope, as one aiohttp response.

Every error the relay answers leaves in this shape (docs/CONTRACT.md):
``{"success": false, "error": {"code", "message", "details", "requestId"}}``. The
middleware turns raised errors into it; the agent route's guards (failed handshakes,
penalties, shutdown) and the HTTP server's parser errors answer with it directly.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web


def envelope_error(
    status: int, code: str, message: str, details: dict[str, Any] | None, request_id: str
) -> web.Response:
    body = {
        "success": False,
        "error": {
            "code": code,
            "message": message,
            "details": details or {},
            "requestId": request_id,
        },
    }
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")
