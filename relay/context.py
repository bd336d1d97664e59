"""What every handler and service shares, reached through ``request.app[RELAY]``.

One object per app, built by ``create_app`` (relay/app.py, the composition root);
nothing here is module-level state. The modules whose objects ``Relay`` holds never
import this one: they take the narrower things they need as arguments, so the relay's
modules import one another in one direction (tests/test_import_graph.py). The
hub is the exception the other way: it works on the whole ``Relay``, so ``Relay`` holds
it as ``AgentHub``, what the rest of the relay may ask of it (relay/agents/hub.py's ``Hub``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from shared.crypto import DataCipher

from .agents.cluster import Cluster
from .agents.guard import ChunkWorkers
from .agents.handshake_limit import HandshakeGuard
from .agents.kems import KemDirectory
from .agents.loglevel import LogLevels
from .agents.session import AgentSession
from .config import RelayConfig
from .events import EventBus
from .jobs.live_chunks import RecentChunks
from .jobs.notify import JobNotifier
from .metrics import RelayMetrics
from .store import Store
from .web.auth import TokenVerifier
from .web.ratelimit import RequestLimits
from .web.slow_clients import StreamSlots


class AgentHub(Protocol):
    """The live agent sessions on this node, as the API, the services, the cluster and
    the sweeper use them (implemented by ``relay.agents.hub.Hub``)."""

    sessions: dict[str, AgentSession]  # connector id -> its session here
    workers: ChunkWorkers  # the threads chunk payloads are worked on

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]: ...
    async def kick(self, relay: Relay, connector_id: str) -> None: ...
    async def cancel(self, connector_id: str, job_id: str, attempt: int) -> None: ...
    async def disconnect(self, connector_id: str, code: int, reason: str) -> None: ...
    def end_key(self, connector_id: str) -> None: ...
    async def end_lapsed_keys(self, relay: Relay) -> None: ...
    async def sweep(self, relay: Relay) -> None: ...
    async def close_all(self) -> None: ...


@dataclass
class Relay:
    config: RelayConfig
    store: Store
    cipher: DataCipher
    events: EventBus
    notifier: JobNotifier
    limiter: RequestLimits  # per token and tenant, by role; its own bucket for public routes
    verifier: TokenVerifier
    hub: AgentHub
    kems: KemDirectory = field(default_factory=KemDirectory)
    handshakes: HandshakeGuard = field(default_factory=HandshakeGuard)
    cluster: Cluster = field(default_factory=Cluster)  # this node among several (relay/agents/cluster.py)
    metrics: RelayMetrics = field(default_factory=RelayMetrics)
    log_levels: LogLevels = field(default_factory=LogLevels)
    recent: RecentChunks = field(default_factory=RecentChunks)  # chunks stored lately, for live readers
    result_streams: StreamSlots = field(default_factory=StreamSlots)  # open GET /results per tenant
    stopping: bool = False  # SIGTERM received: agents are refused (503) and sent away
    download_sums: dict[tuple[str, int, int], str] = field(default_factory=dict)


RELAY: web.AppKey[Relay] = web.AppKey("relay", Relay)
