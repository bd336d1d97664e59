"""The one middleware: request ids, rate limits, authentication, and the error envelope.

Every response leaves through here. ``MCError`` becomes the contract's envelope with the
status from ``shared.errors.HTTP_STATUS``; aiohttp's own HTTP errors (unknown route,
wrong method, body too large) get the same envelope; anything unexpected is logged with
its stack and answered 500 ``INTERNAL_ERROR`` without one. Routes named in
``PUBLIC_ROUTES`` skip token checks (health, spec, and the agent socket, which checks its
API key itself); every other route needs a valid token, a matching ``X-Tenant-ID`` and a
role allowed by ``auth.ROUTE_ROLES``.

Limits (relay/web/ratelimit.py): an authenticated request counts against its token's
quota and its tenant's, both by the token's role (``RelayConfig.rate_limits``); the
response reports the tighter. A valid token refused 403 (its role, another tenant's
``X-Tenant-ID``) counts the same way and its 403 carries that quota. A request that
fails authentication (401) counts against its client address (relay/web/clientaddr.py);
once an address has failed ``MC_RELAY_AUTH_FAILURES`` times in the window, its requests
are answered 429 before any token is checked, except those bearing a token this relay
has already verified and that is still valid: a platform that shares an address (a NAT,
a proxy not configured as trusted) with a scanner keeps working, while the scanner's
guesses are not even evaluated.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import HttpVersion11, web

from shared.errors import Forbidden, MCError, NotFound, RateLimited, Unauthorized, ValidationError

from ..context import RELAY
from ..ids_and_times import new_request_id
from . import auth
from .clientaddr import client_address
from .envelope import envelope_error
from .ratelimit import AUTH_FAILURES, Quota
from .request_keys import CLOSE_CONNECTION, PRINCIPAL, REQUEST_ID, STREAMING

log = logging.getLogger("relay.http")

# /metrics checks its own token (relay/api/prometheus.py); /downloads serves public builds.
# The console's page and assets are static: it signs in in the browser and calls the API.
CONSOLE_ROUTES: Final = frozenset({"console", "console.assets"})
PUBLIC_ROUTES: Final = frozenset(
    {"health", "health.root", "openapi", "openapi.root", "asyncapi", "agent.connect", "metrics", "downloads"}
) | CONSOLE_ROUTES
UNCOUNTED_ROUTES: Final = frozenset({"health", "health.root", "openapi", "openapi.root", "asyncapi", "metrics"}) | CONSOLE_ROUTES
# Public routes that check a token of their own: their failures count per client address.
SELF_CHECKED_ROUTES: Final = frozenset({"metrics"})
_HTTP_CODES: Final = {
    400: "BAD_REQUEST", 401: "UNAUTHORIZED", 403: "FORBIDDEN", 404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED", 409: "CONFLICT", 413: "PAYLOAD_TOO_LARGE", 410: "GONE",
    415: "UNSUPPORTED_MEDIA_TYPE", 417: "EXPECTATION_FAILED",
}  # fmt: skip
_HTTP_MESSAGES: Final = {
    404: "no such route", 413: "the request body is too large",
    417: "the relay meets no expectation but 100-continue: leave Expect out or send 100-continue",
}  # fmt: skip

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
QUOTA: web.RequestKey[Quota] = web.RequestKey("quota", Quota)


def rate_limited(quota: Quota, message: str) -> RateLimited:
    return RateLimited(f"{message}; retry after {quota.retry_after} s",
                       details={"retryAfter": quota.retry_after})  # fmt: skip


def _authenticate(request: web.Request, route: str | None) -> None:
    relay = request.app[RELAY]
    if route == "events":
        # Browsers cannot set headers on a WebSocket: the token comes in ?token=.
        token = request.query.get("token") or auth.bearer(request.headers.get("Authorization"))
        principal = relay.verifier.verify(token)
        header_tenant = request.headers.get("X-Tenant-ID") or principal.tenant_id
    else:
        principal = relay.verifier.verify(auth.bearer(request.headers.get("Authorization")))
        header_tenant = request.headers.get("X-Tenant-ID")
    request[PRINCIPAL] = principal  # authenticated: a 403 below still counts against the token
    auth.check_tenant(principal, header_tenant)
    auth.check_role(principal, route or "")


def _presented_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    return header[7:].strip() if header[:7].lower() == "bearer " else request.query.get("token")


def _admit(request: web.Request, route: str, token: str | None) -> None:
    """Authenticate under both limits; the quota the response reports goes in ``QUOTA``."""
    relay = request.app[RELAY]
    failures = request.app[AUTH_FAILURES]
    address_key = "a:" + client_address(request)
    if not (token and relay.verifier.known(token)):
        request[QUOTA] = over = failures.peek(address_key)
        if not over.allowed:
            raise rate_limited(over, f"more than {over.limit} failed authentications a minute from this address")
    forbidden: Forbidden | None = None
    try:
        _authenticate(request, route)
    except Unauthorized:
        request[QUOTA] = failures.hit(address_key)
        raise
    except Forbidden as exc:  # a valid token without the right: counted, and answered with its quota
        forbidden = exc
    who = request[PRINCIPAL]
    request[QUOTA] = quota = relay.limiter.hit_principal(token or "", who.tenant_id, who.role)
    if not quota.allowed:
        scope = "this token" if quota.scope == "token" else f"this tenant's {who.role} tokens together"
        raise rate_limited(quota, f"more than {quota.limit} requests a minute from {scope}")
    if forbidden is not None:
        raise forbidden


def check_query(request: web.Request) -> None:
    """Every query parameter named, once, and with a value: ``?status=&status=x`` is a
    mistake (which one did the caller mean?), not a request to ignore, so it is 422."""
    seen: set[str] = set()
    for name, value in request.query.items():
        shown = name[:40]
        if name == "":
            raise ValidationError("a query parameter has no name", field="")
        if name in seen:
            raise ValidationError(f"query parameter {shown} is given more than once", field=shown)
        if value == "":
            raise ValidationError(f"query parameter {shown} is empty; leave it out instead", field=shown)
        seen.add(name)


async def _self_checked(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A public route that checks its own token (``/metrics``): its 401s count against the
    client address like any failed authentication, and an address over the limit waits."""
    failures = request.app[AUTH_FAILURES]
    address_key = "a:" + client_address(request)
    request[QUOTA] = over = failures.peek(address_key)
    if not over.allowed:
        raise rate_limited(over, f"more than {over.limit} failed authentications a minute from this address")
    try:
        return await handler(request)
    except Unauthorized:
        request[QUOTA] = failures.hit(address_key)
        raise


async def expect_continue(request: web.Request) -> None:
    """Every route's ``Expect`` handler. ``100-continue`` on HTTP/1.1 is answered
    ``100 Continue`` unless the declared body is over the limit: then the client is told
    413 (read_json), or whatever else is wrong, without sending it. Any other expectation
    is ignored, as RFC 9110 (10.1.1) allows. (aiohttp's own handler, which still serves a
    path no route serves and a method a route does not take, answers one with a plain-text
    417 quoting it; the relay's runner puts that 417 in the envelope: httpserver.py.)"""
    if request.version != HttpVersion11 or request.headers.get("Expect", "").lower() != "100-continue":
        return
    if request.content_length is not None and request.content_length > request.app[RELAY].config.max_body_bytes:
        return
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # as aiohttp's handler: the response proper has not begun


def http_error(request: web.BaseRequest, exc: web.HTTPException, request_id: str) -> web.Response:
    """aiohttp's own HTTP error (unknown route, wrong method, body too large, an
    expectation it does not know) in the envelope, never quoting the request."""
    code = _HTTP_CODES.get(exc.status, "BAD_REQUEST")
    message = f"method {request.method} is not allowed here" if exc.status == 405 else None
    response = envelope_error(exc.status, code, message or _HTTP_MESSAGES.get(exc.status, exc.reason),
                              None, request_id)  # fmt: skip
    if "Allow" in exc.headers:  # a 405 says which methods the route takes (RFC 9110)
        response.headers["Allow"] = exc.headers["Allow"]
    return response


async def stamp_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: the request id and rate-limit headers on a response a
    handler sends itself (a streamed result, a WebSocket upgrade), whose headers leave
    before ``envelope_middleware`` gets it back."""
    request_id = request.get(REQUEST_ID)
    if request_id is not None and "X-Request-ID" not in response.headers:
        response.headers["X-Request-ID"] = request_id
    quota = request.get(QUOTA)
    if quota is not None and "X-RateLimit-Limit" not in response.headers:
        response.headers.update(quota.headers())


@web.middleware
async def envelope_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    relay = request.app[RELAY]
    request_id = new_request_id()
    request[REQUEST_ID] = request_id
    route = request.match_info.route.name
    if request.content_length is not None and request.content_length > relay.config.max_body_bytes:
        request[CLOSE_CONNECTION] = True  # never read: whatever the answer, the connection ends with it
    try:
        if route is not None and route not in PUBLIC_ROUTES:
            # /events authenticates its ?token= first (_authenticate): count that one too.
            token = request.query.get("token") if route == "events" else None
            _admit(request, route, token or _presented_token(request))
            check_query(request)
            if any("\x00" in v for v in request.match_info.values()):
                # No id holds U+0000, and PostgreSQL refuses it in a query (a 500 there):
                # answered as any id that does not exist.
                raise NotFound("nothing here has that id (it holds U+0000)")
            response = await handler(request)
        elif route in SELF_CHECKED_ROUTES:
            response = await _self_checked(request, handler)
        else:
            key = relay.limiter.key_for(_presented_token(request), client_address(request))
            request[QUOTA] = quota = relay.limiter.hit(key, count=route not in UNCOUNTED_ROUTES)
            if not quota.allowed:
                raise rate_limited(quota, f"more than {quota.limit} requests a minute")
            response = await handler(request)
    except MCError as exc:
        if request.get(STREAMING):
            raise  # its head is gone: an envelope now would land inside the body (see below)
        response = envelope_error(exc.status, exc.code, exc.message, exc.details, request_id)
        if exc.status in (429, 503) and "retryAfter" in (exc.details or {}):  # a handler's own limit, the store
            response.headers["Retry-After"] = str(exc.details["retryAfter"])
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = http_error(request, exc, request_id)
    except asyncio.CancelledError:
        raise
    except Exception:
        if request.get(STREAMING):
            raise  # headers are gone; aiohttp cuts the connection, the reader sees an error
        log.exception("unhandled error on %s %s (%s)", request.method, request.path, request_id)
        response = envelope_error(
            500, "INTERNAL_ERROR", "the relay failed to handle this request", None, request_id
        )
    if not response.prepared:
        if request.get(CLOSE_CONNECTION):
            response.force_close()
        response.headers["X-Request-ID"] = request_id
        quota = request.get(QUOTA)
        if quota is not None:
            response.headers.update(quota.headers())
    return response
