"""Request limits: a fixed one-minute window per key.

``hit(key)`` counts one request and returns the numbers every response carries
(``X-RateLimit-Limit``, ``-Remaining``, ``-Reset`` as epoch seconds of the window's end).
Keys are a hash of the bearer token (or the client address when there is none), so a
token never sits in memory twice. Old windows are dropped as they pass.

The relay keeps two: one per authenticated token (``MC_RELAY_RATE_LIMIT``), and one of
requests that FAILED authentication, per client address (``MC_RELAY_AUTH_FAILURES``, 10
by default as the seed API's unauthenticated limit; relay/middleware.py). Made-up tokens
are all counted against their address, never each in a bucket of its own.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

WINDOW_SECONDS = 60.0


@dataclass(frozen=True)
class Quota:
    limit: int
    remaining: int
    reset: int  # epoch seconds when the window ends
    allowed: bool
    retry_after: int

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


# Requests that failed authentication, counted per client address (relay/middleware.py).
AUTH_FAILURES: web.AppKey[RateLimiter] = web.AppKey("auth_failures", RateLimiter)
