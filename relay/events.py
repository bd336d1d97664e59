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
import logging
from collections.abc import Callable
from typing import Any, Final

from shared.errors import ProtocolError
from shared.protocol import F, validate_fields

from .agents.connector_status import STATUSES as CONNECTOR_STATUSES
from .ids_and_times import iso, now
from .jobs.lifecycle import FINAL

log = logging.getLogger("relay.events")
QUEUE_SIZE = 1000
_TIME = F("str", nullable=True, max_len=40)
# Each event's ``data``: the one definition ``publish`` checks against and the AsyncAPI
# document (relay/api/asyncapi.py) describes.
EVENTS: Final[dict[str, dict[str, F]]] = {
    "connector_status_changed": {
        "connectorId": F("str"), "status": F("str", choices=CONNECTOR_STATUSES),
        "lastSeen": _TIME,  # the last time the agent was heard (null: never)
    },
    "job_started": {"jobId": F("str"), "connectorId": F("str")},
    "job_completed": {
        "jobId": F("str"), "status": F("str", choices=tuple(sorted(FINAL))),
        "rowCount": F("int", lo=0), "truncated": F("bool"),
        "durationMs": F("int", nullable=True, lo=0),
    },
}  # fmt: skip


class EventBus:
    """``strict``: an event whose data is not what ``EVENTS`` says raises (the tests' relays);
    otherwise it is logged at ERROR and sent as it is. Events are published after the
    change they announce is committed: raising there would fail the request or the agent
    frame that made the change, for a bug in a notification; dropping it would leave a
    platform waiting for an event that never comes."""

    def __init__(self, *, strict: bool = False) -> None:
        self._subs: dict[str, set[asyncio.Queue[dict[str, Any]]]] = {}
        self.forward: Callable[[str, dict[str, Any]], None] | None = None
        self.strict = strict

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
        """Send an event; its data should be what ``EVENTS`` says (a mismatch is a bug
        here, never a client's doing: raised when ``strict``, else logged)."""
        try:
            fields = EVENTS[type_]
            validate_fields(data, fields, type_)
            if data.keys() - fields.keys():
                raise ValueError(f"{type_} carries fields the event table lacks: {sorted(data.keys() - fields.keys())}")
        except (KeyError, ValueError, ProtocolError) as exc:
            if self.strict:
                raise
            log.error("event %s does not match its published schema (%s); sent as it is", type_, exc)
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
