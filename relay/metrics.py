"""The relay's Prometheus metrics (prometheus-client), one registry per app.

Each app owns a ``CollectorRegistry`` (never the global one), so several apps in one test
process keep separate numbers. Counters and the histogram are fed where things happen
(dispatch, job completion, refused handshakes); gauges that mirror state (connected
agents, jobs by state) are read at scrape time, by ``GET /metrics``
(relay/api/prometheus.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from shared.errors import MCError

from .jobs.lifecycle import STATUSES

JOB_STATES = STATUSES
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RelayMetrics:
    """The relay's metrics in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connected_agents = Gauge(
            "mini_relay_connected_agents", "Agents connected to this relay node", registry=r
        )
        self.jobs = Gauge("mini_relay_jobs", "Jobs in the store by state", ["state"], registry=r)
        self.dispatch_latency = Histogram(
            "mini_relay_dispatch_latency_seconds",
            "Time from submission (or a retry's due time) to dispatch to an agent",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.result_bytes = Counter(
            "mini_relay_result_bytes", "Result bytes of jobs that ended on this node", registry=r
        )
        self.jobs_finished = Counter(
            "mini_relay_jobs_finished", "Jobs that ended on this node, by status", ["status"], registry=r
        )
        self.failed_handshakes = Counter(
            "mini_relay_failed_handshakes", "Agent handshakes refused, by reason", ["reason"], registry=r
        )
        self.log_lines = Counter(
            "mini_relay_agent_log_lines", "Agent log lines stored (duplicates excluded)", registry=r
        )
        # Hostile agents (relay/agents/guard.py, docs/SECURITY.md "Hostile agents").
        self.agent_frames_refused = Counter(
            "mini_relay_agent_frames_refused",
            "Agent frames refused or dropped, by reason (foreign, stale, late, header: before any "
            "work on the payload; payload: while decoding it)", ["reason"], registry=r,
        )  # fmt: skip
        self.chunk_payloads = Counter(
            "mini_relay_chunk_payloads_decoded", "Chunk payloads worked on (decompressed, checked)", registry=r
        )
        self.agent_log_lines_dropped = Counter(
            "mini_relay_agent_log_lines_dropped", "Agent log lines dropped by the per-connection log budget",
            registry=r,
        )  # fmt: skip
        self.agent_reads_paused = Counter(
            "mini_relay_agent_reads_paused", "Times an agent socket was not read: its memory budget was full",
            registry=r,
        )  # fmt: skip
        # SQLite's group commit (relay/store/batching.py), counted since the node started:
        # ops / transactions is how many store calls share each commit.
        self.store_transactions = Gauge(
            "mini_relay_store_transactions", "Store transactions committed by group commit since start",
            registry=r,
        )  # fmt: skip
        self.store_ops = Gauge(
            "mini_relay_store_ops", "Store calls run in group-committed transactions since start", registry=r
        )

    def dispatched(self, jobs: Iterable[dict[str, Any]], at: float) -> None:
        for job in jobs:
            start = job.get("not_before") or job.get("queued_at")
            if start is not None:
                self.dispatch_latency.observe(max(0.0, at - start))

    def finished(self, status: str, byte_count: int | None) -> None:
        self.jobs_finished.labels(status=status).inc()
        if byte_count:
            self.result_bytes.inc(byte_count)

    def render(self, connected: int, by_state: dict[str, int], batcher: Any = None) -> bytes:
        self.connected_agents.set(connected)
        if batcher is not None:
            self.store_transactions.set(batcher.batches)
            self.store_ops.set(batcher.ops)
        for state in (*JOB_STATES, *(s for s in by_state if s not in JOB_STATES)):
            self.jobs.labels(state=state).set(by_state.get(state, 0))
        return generate_latest(self.registry)


def counting(handler: Handler, metrics: RelayMetrics) -> Handler:
    """``handler`` (the agent socket) with refused handshakes counted by reason."""
    reasons = {401: "unauthorized", 429: "rate_limited", 503: "unavailable"}

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            response = await handler(request)
        except MCError as exc:
            metrics.failed_handshakes.labels(reason=reasons.get(exc.status, "bad_request")).inc()
            raise
        if response.status in reasons:
            metrics.failed_handshakes.labels(reason=reasons[response.status]).inc()
        return response

    return handle
