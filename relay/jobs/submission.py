"""A job's submission, cancel and expiry, apart from HTTP: the store work in one
transaction (relay/store/job_steps.py), then the hub (dispatch now), the event bus,
result readers and the other relay nodes are told.
"""

from __future__ import annotations

from typing import Any

from shared.crypto import relay_info
from shared.errors import NotFound

from ..agents.messages import publish_completed
from ..context import Relay
from ..events import EventBus
from ..ids_and_times import new_job_id, now
from ..store import Store, job_steps
from ..store import jobs as job_store
from ..store.engine import DuplicateRow
from . import lifecycle
from .notify import JobNotifier
from .sources import SourceNotFound


async def submit_job(relay: Relay, tenant_id: str, spec: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Queue a job (True) or return the tenant's job with the same jobKey (False)."""
    # U+0000 is in no connector id and no source name (agents allow letters, digits, _ . -),
    # and PostgreSQL refuses it in a query (a 500): as any id or name that does not exist
    if "\x00" in spec["connectorId"]:
        raise NotFound(f"connector {spec['connectorId'][:80]!r} does not exist", details={"field": "connectorId"})
    if "\x00" in spec["source"]:
        raise SourceNotFound(f"no connector has a source named {spec['source'][:100]!r}", details={"field": "source"})
    relay.store.disk.refuse("new jobs are not taken")  # 503: keep the space left for jobs ending
    job_key = spec["options"].job_key
    if job_key:
        existing = await relay.store.run(job_store.get_by_key, tenant_id, job_key)
        if existing is not None:
            return existing, False
    job_id = new_job_id()
    connector_id = spec["connectorId"]
    # The agent connected here says which key to seal to: one store call (the insert
    # checks that key is still the connector's). Otherwise the connector is read first.
    live = relay.hub.sessions.get(connector_id)
    guess = live.public_key if live is not None and live.tenant_id == tenant_id and not live.dead else None
    row = _job_row(relay, tenant_id, job_id, {"id": connector_id, "public_key": guess}, spec) if guess else None
    try:
        if row is None or not await relay.store.run(job_steps.insert_if_key, row, guess):
            connector = await relay.store.run(job_steps.connector_for_job, tenant_id, connector_id, spec["source"])
            row = _job_row(relay, tenant_id, job_id, connector, spec)
            await relay.store.run(job_store.insert, row)
    except DuplicateRow:
        existing = await relay.store.run(job_store.get_by_key, tenant_id, job_key or "")
        if existing is None:
            raise
        return existing, False
    await relay.hub.kick(relay, connector_id)
    relay.cluster.kick(connector_id)  # the node holding the agent, if not this one
    return row, True


def _job_row(
    relay: Relay, tenant_id: str, job_id: str, connector: dict[str, Any], spec: dict[str, Any]
) -> dict[str, Any]:
    if spec.get("sealedQuery") is not None:
        sealed, form = spec["sealedQuery"], "platform"
    else:
        # Sealed on receipt: the clear query exists only in this request's memory.
        sealed = relay.kems.seal_for(connector, spec.get("query") or {},
                                     relay_info(connector["id"], job_id))  # fmt: skip
        form = "relay"
    options = spec["options"]
    return {
        "id": job_id, "tenant_id": tenant_id, "connector_id": connector["id"],
        "source": spec["source"], "operation": spec["operation"], "sealed": sealed,
        "seal_form": form, "options": options.to_json(),
        "priority": options.priority, "job_key": options.job_key or None,
        "status": lifecycle.QUEUED, "attempt": 1, "queued_at": now(),
    }  # fmt: skip


async def cancel_job(relay: Relay, tenant_id: str, job_id: str) -> dict[str, Any]:
    job, was = await relay.store.run(job_steps.cancel, tenant_id, job_id, now())
    if was in lifecycle.IN_FLIGHT:
        await relay.hub.cancel(job["connector_id"], job_id, job["attempt"])
        relay.cluster.cancel(job["connector_id"], job_id, job["attempt"])
    relay.notifier.notify(job_id)
    publish_completed(relay.events, tenant_id, job)
    return job


async def expire_jobs(store: Store, notifier: JobNotifier, events: EventBus) -> None:
    """Queued jobs past their TTL end ``expired``: their readers and the tenant are told."""
    for job in await store.run(job_steps.expire_due, now()):
        notifier.notify(job["id"])
        publish_completed(events, job["tenant_id"], job)
