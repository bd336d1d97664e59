"""Failed agent handshakes, limited per client address.

An API key carries 190 random bits, so guessing is hopeless; the limit is about cost and
noise: an address that keeps presenting bad keys (a misconfigured fleet, a scanner) is
answered 429 with ``Retry-After`` for the rest of the window, before any store lookup.
Each refusal is logged with the address and the reason, never the key (not even its
prefix). ``guarded(handler)`` wraps the agent-connect handler; the counts live in one
``HandshakeGuard`` per app (``Relay.handshakes``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from shared.errors import MCError

log = logging.getLogger("relay.handshake")

WINDOW_SECONDS = 60.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HandshakeGuard:
    """At most ``limit`` failed handshakes per address per fixed window."""

    def __init__(self, limit: int = 20, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._window = self._current()
        self._failures: dict[str, int] = {}

    def _current(self) -> float:
        return math.floor(self._clock() / WINDOW_SECONDS) * WINDOW_SECONDS

    def _roll(self) -> None:
        start = self._current()
        if start != self._window:
            self._window, self._failures = start, {}

    def retry_after(self, address: str) -> int | None:
        """Seconds to wait if ``address`` is over its limit, else None."""
        self._roll()
        if self._failures.get(address, 0) < self.limit:
            return None
        return max(1, math.ceil(self._window + WINDOW_SECONDS - self._clock()))

    def failed(self, address: str) -> int:
        self._roll()
        self._failures[address] = n = self._failures.get(address, 0) + 1
        return n


def guarded(handler: Handler) -> Handler:
    """``handler`` behind the per-address limit on failed handshakes."""

    async def handle(request: web.Request) -> web.StreamResponse:
        from .context import RELAY, REQUEST_ID  # here: context imports this module
        from .middleware import envelope_error

        guard: HandshakeGuard = request.app[RELAY].handshakes
        address = request.remote or "unknown"
        wait = guard.retry_after(address)
        if wait is not None:
            response = envelope_error(
                429, "RATE_LIMITED",
                f"too many failed agent handshakes from this address; retry after {wait} s",
                None, request.get(REQUEST_ID, ""),
            )  # fmt: skip
            response.headers["Retry-After"] = str(wait)
            return response
        try:
            return await handler(request)
        except MCError as exc:
            if exc.status == 401:
                n = guard.failed(address)
                # The reason comes from our own messages, which never quote the key.
                log.warning("agent handshake refused from %s (%d this minute): %s",
                            address, n, exc.message)  # fmt: skip
            raise

    return handle
