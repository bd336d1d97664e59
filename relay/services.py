"""What the API's write operations do, apart from HTTP: register, rotate, revoke, submit,
cancel, expire. Each runs its store work in one transaction, then tells the hub, the
event bus and any result readers, and the other relay nodes (``relay/cluster.py``).
"""

from __future__ import annotations

import base64
from typing import Any

from shared import keys
from shared.crypto import relay_info
from shared.protocol import CLOSE_CODES

from . import connector_status as cs
from .context import Relay
from .formats import new_connector_id, new_job_id, now
from .intake import publish_completed
from .jobs import lifecycle
from .store import connector_steps, job_steps
from .store import connectors as con_store
from .store import jobs as job_store
from .store.engine import DuplicateRow

# ---------------------------------------------------------------- connectors


async def register_connector(relay: Relay, tenant_id: str, name: str, os_: str) -> tuple[dict[str, Any], str]:
    api_key = keys.generate_key()
    row = {
        "id": new_connector_id(), "tenant_id": tenant_id, "name": name, "os": os_,
        "status": cs.INITIAL, "sources": "[]", "active_jobs": 0,
        "api_key_prefix": keys.key_prefix(api_key), "api_key_hash": keys.hash_key(api_key),
        "created_at": now(),
    }  # fmt: skip
    await relay.store.run(con_store.insert, row)
    return row, api_key


async def rotate_key(relay: Relay, tenant_id: str, connector_id: str, grace: float) -> tuple[str, float]:
    """A new key; the replaced one works ``grace`` seconds more, earlier ones until their
    own expiry. ``grace`` 0 ends every earlier key at once."""
    new_key = keys.generate_key()
    at = now()
    expires = at + max(0.0, grace)
    await relay.store.run(connector_steps.rotate, tenant_id, connector_id, new_key, expires, at)
    return new_key, expires


async def revoke_connector(relay: Relay, tenant_id: str, connector_id: str) -> bool:
    """Revoke the connector (True), or find it already revoked (False). Either way any
    socket its agent still holds is closed; only the first revoke raises the
    ``revoked`` event and fails the connector's queued jobs, so a repeated DELETE is
    idempotent."""
    at = now()
    failed = await relay.store.run(connector_steps.revoke, tenant_id, connector_id, at)
    await relay.hub.disconnect(connector_id, CLOSE_CODES["REVOKED"], "REVOKED")
    relay.cluster.revoke(connector_id)  # its agent may be on another relay node
    if failed is None:
        return False
    relay.events.publish(
        tenant_id, "connector_status_changed", cs.changed(connector_id, cs.REVOKED, at)
    )
    for job in failed:
        relay.notifier.notify(job["id"])
        publish_completed(relay, tenant_id, job)
    return True


# ---------------------------------------------------------------- jobs


async def submit_job(relay: Relay, tenant_id: str, spec: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Queue a job (True) or return the tenant's job with the same jobKey (False)."""
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


def decode_sealed(value: str) -> bytes:
    return base64.b64decode(value, validate=True)


async def cancel_job(relay: Relay, tenant_id: str, job_id: str) -> dict[str, Any]:
    job, was = await relay.store.run(job_steps.cancel, tenant_id, job_id, now())
    if was in lifecycle.IN_FLIGHT:
        await relay.hub.cancel(job["connector_id"], job_id, job["attempt"])
        relay.cluster.cancel(job["connector_id"], job_id, job["attempt"])
    relay.notifier.notify(job_id)
    publish_completed(relay, tenant_id, job)
    return job


async def expire_jobs(relay: Relay) -> None:
    for job in await relay.store.run(job_steps.expire_due, now()):
        relay.notifier.notify(job["id"])
        publish_completed(relay, job["tenant_id"], job)
