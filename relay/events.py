"""The tenant's event stream: ``connector_status_changed``, ``job_started``, ``job_completed``.

An in-process fan-out: each subscriber (one ``/events`` WebSocket) gets a bounded queue;
a subscriber too slow to keep up loses its oldest events rather than growing memory or
slowing the publisher. Events are ``{"type", "data", "timestamp"}``. With several relay
nodes, ``forward`` (set by ``relay.agents.cluster``) passes each published event on to the other
nodes, which hand it to their own subscribers with ``deliver``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from .ids_and_times import iso, now

QUEUE_SIZE = 1000


class EventBus:
    def __init__(self) -> None:
        self._subs: dict[str, set[asyncio.Queue[dict[str, Any]]]] = {}
        self.forward: Callable[[str, dict[str, Any]], None] | None = None

    def subscribe(self, tenant_id: str) -> asyncio.Queue[dict[str, Any]]:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        self._subs.setdefault(tenant_id, set()).add(q)
        return q

    def unsubscribe(self, tenant_id: str, q: asyncio.Queue[dict[str, Any]]) -> None:
        subs = self._subs.get(tenant_id)
        if subs is not None:
            subs.discard(q)
            if not subs:
                del self._subs[tenant_id]

    def publish(self, tenant_id: str, type_: str, data: dict[str, Any]) -> None:
        event = {"type": type_, "data": data, "timestamp": iso(now())}
        self.deliver(tenant_id, event)
        if self.forward is not None:
            self.forward(tenant_id, event)

    def deliver(self, tenant_id: str, event: dict[str, Any]) -> None:
        """Hand ``event`` to this node's subscribers of the tenant."""
        for q in list(self._subs.get(tenant_id, ())):
            if q.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
            q.put_nowait(event)

    def subscribers(self, tenant_id: str) -> int:
        return len(self._subs.get(tenant_id, ()))
