"""What every handler and service shares, reached through ``request.app[RELAY]``.

One object per app, built by ``create_app``; nothing here is module-level state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from shared.crypto import DataCipher

from .auth import Principal, TokenVerifier
from .config import RelayConfig
from .events import EventBus
from .handshake_limit import HandshakeGuard
from .kems import KemDirectory
from .notify import JobNotifier
from .ratelimit import RateLimiter
from .store import Store

if TYPE_CHECKING:
    from .hub import Hub


@dataclass
class Relay:
    config: RelayConfig
    store: Store
    cipher: DataCipher
    events: EventBus
    notifier: JobNotifier
    limiter: RateLimiter
    verifier: TokenVerifier
    hub: Hub
    kems: KemDirectory = field(default_factory=KemDirectory)
    handshakes: HandshakeGuard = field(default_factory=HandshakeGuard)


RELAY: web.AppKey[Relay] = web.AppKey("relay", Relay)

# Per-request values the middleware sets for handlers.
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)
STREAMING: web.RequestKey[bool] = web.RequestKey("streaming", bool)
