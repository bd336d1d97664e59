"""Request limits: a fixed one-minute window per key.

``hit(key)`` counts one request and returns the numbers every response carries
(``X-RateLimit-Limit``, ``-Remaining``, ``-Reset`` as epoch seconds of the window's end).
Keys are a hash of the bearer token (or the client address when there is none), so a
token never sits in memory twice. Old windows are dropped as they pass.

The relay keeps three kinds (relay/web/middleware.py):

- ``RequestLimits``: an authenticated request counts against its token AND its tenant,
  each by the token's role (``RelayConfig.rate_limits``: ``admin`` and ``support`` 100 a
  minute per token and per tenant, ``service``, the platform, 120,000 per token and
  240,000 per tenant). The tenant bucket is per role, so people clicking in the console
  never eat the platform's budget, nor the platform theirs. A response reports the
  tighter of the two buckets; a request refused by either counts in neither.
- its ``public`` bucket: unauthenticated routes that are counted (downloads, the agent
  socket's upgrade) per presented key or client address.
- ``AUTH_FAILURES``: requests that FAILED authentication, per client address
  (``MC_RELAY_AUTH_FAILURES``, 10 by default as the seed API's unauthenticated limit).
  Made-up tokens are all counted against their address, never each in a bucket of its own.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from aiohttp import web

WINDOW_SECONDS = 60.0


@dataclass(frozen=True)
class Quota:
    limit: int
    remaining: int
    reset: int  # epoch seconds when the window ends
    allowed: bool
    retry_after: int
    scope: str = ""  # which bucket: "token" or "tenant" (RequestLimits), else ""

    def headers(self) -> dict[str, str]:
        h = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset),
        }
        if not self.allowed:
            h["Retry-After"] = str(self.retry_after)
        return h


class RateLimiter:
    def __init__(self, limit: int, clock: Callable[[], float] = time.time) -> None:
        self.limit = limit
        self._clock = clock
        self._counts: dict[str, int] = {}
        self._window_start = self._current_window()

    def _current_window(self) -> float:
        return math.floor(self._clock() / WINDOW_SECONDS) * WINDOW_SECONDS

    def _roll(self) -> None:
        start = self._current_window()
        if start != self._window_start:
            self._window_start = start
            self._counts.clear()

    @staticmethod
    def key_for(token: str | None, remote: str | None) -> str:
        if token:
            return "t:" + hashlib.sha256(token.encode()).hexdigest()[:32]
        return "a:" + (remote or "unknown")

    def peek(self, key: str) -> Quota:
        """The key's quota without counting; ``allowed`` is False once it is used up."""
        self._roll()
        used = self._counts.get(key, 0)
        reset = self._window_start + WINDOW_SECONDS
        retry = max(1, math.ceil(reset - self._clock()))
        return Quota(self.limit, max(0, self.limit - used), int(reset), used < self.limit, retry)

    def hit(self, key: str, *, count: bool = True) -> Quota:
        self._roll()
        used = self._counts.get(key, 0)
        reset = self._window_start + WINDOW_SECONDS
        retry = max(1, math.ceil(reset - self._clock()))
        if count and used >= self.limit:
            return Quota(self.limit, 0, int(reset), False, retry)
        if count:
            used += 1
            self._counts[key] = used
        return Quota(self.limit, max(0, self.limit - used), int(reset), True, retry)


class RequestLimits(RateLimiter):
    """Per token and per tenant, by role; itself the ``public`` bucket (unauthenticated
    routes). ``limits``: role -> (per token, per tenant) requests a minute. A role not in
    it (none reaches here: ``auth.check_role`` refuses it first) gets the strictest."""

    def __init__(
        self, limits: dict[str, tuple[int, int]], public: int, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(public, clock)
        strictest = min(limits.values(), key=lambda pair: pair[0]) if limits else (public, public)
        self._fallback = (RateLimiter(strictest[0], clock), RateLimiter(strictest[1], clock))
        self._by_role = {
            role: (RateLimiter(per_token, clock), RateLimiter(per_tenant, clock))
            for role, (per_token, per_tenant) in limits.items()
        }

    def limits_of(self, role: str) -> tuple[int, int]:
        token, tenant = self._by_role.get(role, self._fallback)
        return token.limit, tenant.limit

    def hit_principal(self, token: str, tenant_id: str, role: str) -> Quota:
        """Count one request of ``token`` (of ``tenant_id``, as ``role``) in both its
        buckets, or in neither when one is used up; the quota of the tighter bucket."""
        by_token, by_tenant = self._by_role.get(role, self._fallback)
        token_key = self.key_for(token, None)
        tenant_key = "n:" + tenant_id
        for limiter, key, scope in ((by_token, token_key, "token"), (by_tenant, tenant_key, "tenant")):
            over = limiter.peek(key)
            if not over.allowed:
                return replace(over, scope=scope)
        a = replace(by_token.hit(token_key), scope="token")
        b = replace(by_tenant.hit(tenant_key), scope="tenant")
        return a if (a.remaining, a.limit) <= (b.remaining, b.limit) else b


# Requests that failed authentication, counted per client address (relay/web/middleware.py).
AUTH_FAILURES: web.AppKey[RateLimiter] = web.AppKey("auth_failures", RateLimiter)
