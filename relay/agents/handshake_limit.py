"""Failed agent handshakes, limited per client address AND key id.

An API key carries 190 random bits, so guessing is hopeless; the limit is about cost and
noise: an address that keeps presenting bad keys (a misconfigured fleet, a scanner) is
answered 429 with ``Retry-After`` for the rest of the window, before any store lookup.

Counted two ways, so that behind a load balancer (many agents, one address unless the
balancer is a trusted proxy: relay/web/clientaddr.py) one bad agent cannot lock out the rest:

- per (address, key id): ``MC_RELAY_HANDSHAKE_FAILURES`` (20) a minute. The key id is the
  key's public prefix (``vmc_`` + 8 characters; ``malformed`` for anything else). A
  misconfigured agent with a stale key locks out only that key, from that address.
- per address, over all key ids: ``MC_RELAY_HANDSHAKE_ADDRESS_FAILURES`` (100) a minute,
  so random keys (each with its own id) still cost little. Key ids that completed a
  handshake on this relay lately are exempt from this one: a scanner behind the same
  address does not lock out the agents already working there.

Each refusal is logged with the address and the reason, never the key (not even its
prefix). ``guarded(handler, guard)`` wraps the agent-connect handler; the counts live in
one ``HandshakeGuard`` per app (``Relay.handshakes``); its ``note_upgrade`` (an
``on_response_prepare`` hook) records the key ids that got through.
"""

from __future__ import annotations

import collections
import logging
import math
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from shared import keys
from shared.errors import MCError

from ..web.clientaddr import client_address
from ..web.envelope import envelope_error
from ..web.request_keys import REQUEST_ID

log = logging.getLogger("relay.handshake")

WINDOW_SECONDS = 60.0
KNOWN_GOOD_KEYS = 65_536  # key ids remembered as having completed a handshake
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def key_id(header: str | None) -> str:
    """The key id of the ``Authorization: Bearer <key>`` an agent presents."""
    scheme, _, key = (header or "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key.startswith(keys.PREFIX) or len(key) != keys.KEY_LENGTH:
        return "malformed"
    return keys.key_prefix(key)


class HandshakeGuard:
    """At most ``limit`` failures per (address, key id) and ``address_limit`` per address
    (known-good key ids exempt from the latter) per fixed window."""

    def __init__(
        self, limit: int = 20, address_limit: int = 100, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.address_limit = address_limit
        self._clock = clock
        self._window = self._current()
        self._failures: dict[tuple[str, str], int] = {}
        self._by_address: dict[str, int] = {}
        self._good: collections.OrderedDict[str, None] = collections.OrderedDict()

    def _current(self) -> float:
        return math.floor(self._clock() / WINDOW_SECONDS) * WINDOW_SECONDS

    def _roll(self) -> None:
        start = self._current()
        if start != self._window:
            self._window, self._failures, self._by_address = start, {}, {}

    def retry_after(self, address: str, kid: str = "malformed") -> int | None:
        """Seconds to wait if ``address`` (with key id ``kid``) is over a limit, else None."""
        self._roll()
        over = self._failures.get((address, kid), 0) >= self.limit or (
            kid not in self._good and self._by_address.get(address, 0) >= self.address_limit
        )
        if not over:
            return None
        return max(1, math.ceil(self._window + WINDOW_SECONDS - self._clock()))

    def failed(self, address: str, kid: str = "malformed") -> int:
        self._roll()
        self._by_address[address] = self._by_address.get(address, 0) + 1
        self._failures[(address, kid)] = n = self._failures.get((address, kid), 0) + 1
        return n

    def succeeded(self, kid: str) -> None:
        if kid == "malformed":
            return
        self._good[kid] = None
        self._good.move_to_end(kid)
        if len(self._good) > KNOWN_GOOD_KEYS:
            self._good.popitem(last=False)

    async def note_upgrade(self, request: web.Request, response: web.StreamResponse) -> None:
        """``on_response_prepare``: an agent socket upgraded, so its key id is known-good."""
        if response.status == 101 and request.match_info.route.name == "agent.connect":
            self.succeeded(key_id(request.headers.get("Authorization")))


def guarded(handler: Handler, guard: HandshakeGuard) -> Handler:
    """``handler`` behind ``guard``'s limits on failed handshakes."""

    async def handle(request: web.Request) -> web.StreamResponse:
        address = client_address(request)
        kid = key_id(request.headers.get("Authorization"))
        wait = guard.retry_after(address, kid)
        if wait is not None:
            response = envelope_error(
                429, "RATE_LIMITED",
                f"too many failed agent handshakes from this address; retry after {wait} s",
                {"retryAfter": wait}, request.get(REQUEST_ID, ""),
            )  # fmt: skip
            response.headers["Retry-After"] = str(wait)
            return response
        try:
            return await handler(request)
        except MCError as exc:
            if exc.status == 401:
                n = guard.failed(address, kid)
                # The reason comes from our own messages, which never quote the key.
                log.warning("agent handshake refused from %s (%d this minute for this key id): %s",
                            address, n, exc.message)  # fmt: skip
            raise

    return handle
