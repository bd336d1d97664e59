"""``create_app(config)``: the relay as one aiohttp application, run in process by tests.

Routes are registered with names; those names key the role table (``auth.ROUTE_ROLES``)
and the middleware's public list. Startup opens the store and applies migrations, marks
connectors left ``online`` by a previous run as offline (only those this node held or
whose owner node stopped renewing its lease, when several nodes share PostgreSQL:
``relay/agents/cluster.py``), extends the leases of jobs in
flight by a grace period (their agents reconnect and name them), and starts the sweeper;
shutdown closes agent sockets with 1001, then the store (``mini-relay serve`` first runs
``shutdown.drain`` on SIGTERM: agents are sent away with jittered reconnect delays).
Besides ``/api/v1`` it serves ``/metrics`` (``relay/api/prometheus.py``) and ``/downloads``.

This is the composition root: it builds the pieces ``Relay`` holds and wires them to
one another (the agent route's guards, the cluster's view of the hub), so that those
modules never import ``relay.context`` or the hub themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from . import metrics, shutdown
from .agents import loglevel
from .agents.cluster import Cluster
from .agents.handshake_limit import HandshakeGuard, guarded
from .agents.hub import Hub
from .api import (
    asyncapi,
    connectors,
    console,
    downloads,
    events,
    health,
    jobs,
    openapi,
    prometheus,
    results,
    telemetry,
)
from .config import RelayConfig
from .context import RELAY, Relay
from .events import EventBus
from .ids_and_times import now
from .jobs import submission
from .jobs.notify import JobNotifier
from .store import Store, owners, queue
from .store import chunks as chunk_store
from .store import jobs as job_store
from .store import logs as log_store
from .store.diskfull import StoreFull
from .store.outage import StoreUnavailable
from .web.auth import TokenVerifier
from .web.clientaddr import TRUSTED_PROXIES, parse_networks
from .web.middleware import envelope_middleware, expect_continue, stamp_headers
from .web.ratelimit import AUTH_FAILURES, RateLimiter, RequestLimits

log = logging.getLogger("relay.app")
API = "/api/v1"


def _routes(app: web.Application, relay: Relay, hub: Hub) -> None:
    # Each route answers an Expect header itself, within the body limit (expect_continue).
    get, post, patch, delete = (functools.partial(add, expect_handler=expect_continue) for add in
                                (app.router.add_get, app.router.add_post, app.router.add_patch, app.router.add_delete))
    get("/health", health.get, name="health.root")
    get(f"{API}/health", health.get, name="health")
    get("/openapi.json", openapi.get, name="openapi.root")
    get(f"{API}/openapi.json", openapi.get, name="openapi")
    get(f"{API}/asyncapi.json", asyncapi.get, name="asyncapi")
    post(f"{API}/connectors", connectors.create, name="connectors.create")
    get(f"{API}/connectors", connectors.list_, name="connectors.list")
    get(f"{API}/connectors/{{id}}", connectors.get, name="connectors.get")
    patch(f"{API}/connectors/{{id}}", connectors.update, name="connectors.update")
    delete(f"{API}/connectors/{{id}}", connectors.delete, name="connectors.delete")
    post(f"{API}/connectors/{{id}}/rotate-key", connectors.rotate_key, name="connectors.rotate_key")
    get(f"{API}/connectors/{{id}}/logs", telemetry.logs, name="connectors.logs")
    get(f"{API}/connectors/{{id}}/metrics", telemetry.metrics, name="connectors.metrics")
    post(f"{API}/jobs", jobs.create, name="jobs.create")
    get(f"{API}/jobs", jobs.list_, name="jobs.list")
    get(f"{API}/jobs/{{id}}", jobs.get, name="jobs.get")
    post(f"{API}/jobs/{{id}}/cancel", jobs.cancel, name="jobs.cancel")
    get(f"{API}/jobs/{{id}}/results", results.get, name="jobs.results")
    get(f"{API}/events", events.stream, name="events")
    agent_route = metrics.counting(shutdown.refusing(guarded(hub.handle, relay.handshakes)), relay.metrics)
    get(f"{API}/agent/connect", agent_route, name="agent.connect")
    get("/metrics", prometheus.get, name="metrics")
    get("/downloads/{name}", downloads.get, name="downloads")
    get("/console", console.page, name="console")
    get("/console/assets/{name}", console.asset, name="console.assets")


async def _maintain(relay: Relay) -> None:
    """Expire queued jobs past their TTL, close agents whose API key stopped working,
    drop old samples and expired results, and dispatch jobs whose retry delay has passed
    to agents connected here."""
    await submission.expire_jobs(relay.store, relay.notifier, relay.events)
    at = now()
    for connector_id in await relay.store.run(job_store.connectors_with_due_jobs, at):
        if connector_id in relay.hub.sessions:
            await relay.hub.kick(relay, connector_id)
    await relay.store.run(log_store.prune_samples, at - relay.config.metrics_retention_seconds)
    for job_id in await relay.store.run(job_store.expired_results, at):
        await relay.store.run(chunk_store.delete_for_job, job_id, None)
        relay.recent.forget(job_id)
    await relay.hub.end_lapsed_keys(relay)  # agents whose API key's grace ran out


async def _expire_log_levels(relay: Relay) -> None:
    """Agents here whose raised log level ran out go back to INFO."""
    for connector_id in relay.log_levels.expired(now()):
        session = relay.hub.sessions.get(connector_id)
        if session is not None and not session.dead:
            await session.send("agent.config.v1", logLevel=loglevel.DEFAULT_LEVEL)


async def _sweeper(relay: Relay) -> None:
    last_maintenance = 0.0
    while True:
        await asyncio.sleep(relay.config.sweep_every)
        try:
            await relay.hub.sweep(relay)
            await _expire_log_levels(relay)
            if now() - last_maintenance >= relay.config.maintenance_interval:
                last_maintenance = now()
                await _maintain(relay)
        except asyncio.CancelledError:
            raise
        except (StoreFull, StoreUnavailable):
            pass  # said once by the store (relay/store/diskfull.py, outage.py); the next round tries again
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
        limiter=RequestLimits(config.rate_limits(), config.public_rate_limit),
        verifier=TokenVerifier(config.effective_jwt_secret(), config.jwt_public_key, config.jwt_audience),
        hub=hub,
        handshakes=HandshakeGuard(config.handshake_failure_limit, config.handshake_address_failure_limit),
        cluster=Cluster(config.node_id),
    )
    app[RELAY] = relay
    app[AUTH_FAILURES] = RateLimiter(config.auth_failure_limit)
    app[TRUSTED_PROXIES] = parse_networks(config.trusted_proxies)
    _routes(app, relay, hub)

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        await relay.store.open(wait=config.store_start_wait)
        # This node holds no agent yet: an "online" it (or a dead node) left is stale.
        await relay.store.run(owners.startup_offline, relay.cluster.node_id, now(),
                              single_node=relay.store.is_sqlite)  # fmt: skip
        # Nobody watched the agents while the relay was down: give them time to come back
        # (their reconnect backoff tops out at 60 s) before any lease may lapse.
        await relay.store.run(queue.extend_all_leases, now() + config.restart_lease_grace)
        await relay.cluster.start(
            relay.store, hub, relay.notifier, relay.events,
            lease=config.offline_after, kick=functools.partial(hub.kick, relay),
        )  # fmt: skip
        sweeper = asyncio.create_task(_sweeper(relay), name="relay-sweeper")
        if not config.metrics_token:
            log.info("GET /metrics is open: set MC_RELAY_METRICS_TOKEN to require a bearer token")
        yield
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        await relay.cluster.stop()
        await relay.store.close()

    async def on_shutdown(_app: web.Application) -> None:
        await hub.close_all()

    app.on_response_prepare.append(relay.handshakes.note_upgrade)
    app.on_response_prepare.append(stamp_headers)  # streamed responses' rate-limit headers
    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(on_shutdown)
    return app
