"""What every handler and service shares, reached through ``request.app[RELAY]``.

One object per app, built by ``create_app``; nothing here is module-level state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from shared.crypto import DataCipher

from .auth import Principal, TokenVerifier
from .cluster import Cluster
from .config import RelayConfig
from .events import EventBus
from .handshake_limit import HandshakeGuard
from .kems import KemDirectory
from .loglevel import LogLevels
from .metrics import RelayMetrics
from .notify import JobNotifier
from .ratelimit import RequestLimits
from .recent import RecentChunks
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
    limiter: RequestLimits  # per token and tenant, by role; its own bucket for public routes
    verifier: TokenVerifier
    hub: Hub
    kems: KemDirectory = field(default_factory=KemDirectory)
    handshakes: HandshakeGuard = field(default_factory=HandshakeGuard)
    cluster: Cluster = field(default_factory=Cluster)  # this node among several (relay/cluster.py)
    metrics: RelayMetrics = field(default_factory=RelayMetrics)
    log_levels: LogLevels = field(default_factory=LogLevels)
    recent: RecentChunks = field(default_factory=RecentChunks)  # chunks stored lately, for live readers
    stopping: bool = False  # SIGTERM received: agents are refused (503) and sent away
    download_sums: dict[tuple[str, int, int], str] = field(default_factory=dict)


RELAY: web.AppKey[Relay] = web.AppKey("relay", Relay)

# Per-request values the middleware sets for handlers.
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)
STREAMING: web.RequestKey[bool] = web.RequestKey("streaming", bool)
