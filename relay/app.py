"""``create_app(config)``: the relay as one aiohttp application, run in process by tests.

Routes are registered with names; those names key the role table (``auth.ROUTE_ROLES``)
and the middleware's public list. Startup opens the store and applies migrations, marks
connectors left ``online`` by a previous run as offline, extends the leases of jobs in
flight by a grace period (their agents reconnect and name them), and starts the sweeper;
shutdown closes agent sockets with 1001, then the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from . import queue, services
from .api import connectors, events, health, jobs, openapi, results, telemetry
from .auth import TokenVerifier
from .config import RelayConfig
from .context import RELAY, Relay
from .events import EventBus
from .formats import now
from .handshake_limit import HandshakeGuard, guarded
from .hub import Hub
from .middleware import envelope_middleware
from .notify import JobNotifier
from .ratelimit import RateLimiter
from .store import Store
from .store import chunks as chunk_store
from .store import connectors as con_store
from .store import jobs as job_store
from .store import logs as log_store

log = logging.getLogger("relay.app")
API = "/api/v1"


def _routes(app: web.Application, hub: Hub) -> None:
    r = app.router
    r.add_get("/health", health.get, name="health.root")
    r.add_get(f"{API}/health", health.get, name="health")
    r.add_get("/openapi.json", openapi.get, name="openapi.root")
    r.add_get(f"{API}/openapi.json", openapi.get, name="openapi")
    r.add_post(f"{API}/connectors", connectors.create, name="connectors.create")
    r.add_get(f"{API}/connectors", connectors.list_, name="connectors.list")
    r.add_get(f"{API}/connectors/{{id}}", connectors.get, name="connectors.get")
    r.add_patch(f"{API}/connectors/{{id}}", connectors.update, name="connectors.update")
    r.add_delete(f"{API}/connectors/{{id}}", connectors.delete, name="connectors.delete")
    r.add_post(f"{API}/connectors/{{id}}/rotate-key", connectors.rotate_key, name="connectors.rotate_key")
    r.add_get(f"{API}/connectors/{{id}}/logs", telemetry.logs, name="connectors.logs")
    r.add_get(f"{API}/connectors/{{id}}/metrics", telemetry.metrics, name="connectors.metrics")
    r.add_post(f"{API}/jobs", jobs.create, name="jobs.create")
    r.add_get(f"{API}/jobs", jobs.list_, name="jobs.list")
    r.add_get(f"{API}/jobs/{{id}}", jobs.get, name="jobs.get")
    r.add_post(f"{API}/jobs/{{id}}/cancel", jobs.cancel, name="jobs.cancel")
    r.add_get(f"{API}/jobs/{{id}}/results", results.get, name="jobs.results")
    r.add_get(f"{API}/events", events.stream, name="events")
    r.add_get(f"{API}/agent/connect", guarded(hub.handle), name="agent.connect")


async def _maintain(relay: Relay) -> None:
    """Expire queued jobs past their TTL, drop old samples and expired results, and
    dispatch jobs whose retry delay has passed to agents connected here."""
    await services.expire_jobs(relay)
    at = now()
    for connector_id in await relay.store.run(job_store.connectors_with_due_jobs, at):
        if connector_id in relay.hub.sessions:
            await relay.hub.kick(relay, connector_id)
    await relay.store.run(log_store.prune_samples, at - relay.config.metrics_retention_seconds)
    for job_id in await relay.store.run(job_store.expired_results, at):
        await relay.store.run(chunk_store.delete_for_job, job_id, None)


async def _sweeper(relay: Relay) -> None:
    last_maintenance = 0.0
    while True:
        await asyncio.sleep(relay.config.sweep_every)
        try:
            await relay.hub.sweep(relay)
            if now() - last_maintenance >= relay.config.maintenance_interval:
                last_maintenance = now()
                await _maintain(relay)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("sweep failed; retrying next round")


def create_app(config: RelayConfig) -> web.Application:
    config.check()
    app = web.Application(middlewares=[envelope_middleware], client_max_size=config.max_body_bytes)
    hub = Hub()
    relay = Relay(
        config=config,
        store=Store(config.database_url),
        cipher=config.cipher(),
        events=EventBus(),
        notifier=JobNotifier(),
        limiter=RateLimiter(config.rate_limit_per_minute),
        verifier=TokenVerifier(config.effective_jwt_secret(), config.jwt_public_key),
        hub=hub,
        handshakes=HandshakeGuard(config.handshake_failure_limit),
    )
    app[RELAY] = relay
    _routes(app, hub)

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        await relay.store.open()
        # This node holds no agent yet: any "online" left by a previous run is stale.
        await relay.store.run(con_store.mark_stale_online_offline, [])
        # Nobody watched the agents while the relay was down: give them time to come back
        # (their reconnect backoff tops out at 60 s) before any lease may lapse.
        await relay.store.run(queue.extend_all_leases, now() + config.restart_lease_grace)
        sweeper = asyncio.create_task(_sweeper(relay), name="relay-sweeper")
        yield
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        await relay.store.close()

    async def on_shutdown(_app: web.Application) -> None:
        await hub.close_all()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(on_shutdown)
    return app
