"""A connector's registration, key rotation and revocation, apart from HTTP: the store
work in one transaction (relay/store/connector_steps.py), then the hub, the event bus,
result readers and the other relay nodes are told.
"""

from __future__ import annotations

from typing import Any

from shared import keys
from shared.protocol import CLOSE_CODES

from ..context import Relay
from ..ids_and_times import new_connector_id, now
from ..store import Store, connector_steps
from ..store import connectors as con_store
from . import connector_status as cs
from .messages import publish_completed


async def register_connector(store: Store, tenant_id: str, name: str, os_: str) -> tuple[dict[str, Any], str]:
    api_key = keys.generate_key()
    row = {
        "id": new_connector_id(), "tenant_id": tenant_id, "name": name, "os": os_,
        "status": cs.INITIAL, "sources": "[]", "active_jobs": 0,
        "api_key_prefix": keys.key_prefix(api_key), "api_key_hash": keys.hash_key(api_key),
        "created_at": now(),
    }  # fmt: skip
    await store.run(con_store.insert, row)
    return row, api_key


async def rotate_key(relay: Relay, tenant_id: str, connector_id: str, grace: float) -> tuple[str, float]:
    """A new key; the replaced one works ``grace`` seconds more, earlier ones until their
    own expiry. ``grace`` 0 ends every earlier key at once, and with them the session
    of an agent connected with one (no agent has the new key yet), here or on another
    node; a session whose key's grace runs out later is closed by the maintenance sweep
    (``Hub.end_lapsed_keys``)."""
    new_key = keys.generate_key()
    at = now()
    expires = at + max(0.0, grace)
    await relay.store.run(connector_steps.rotate, tenant_id, connector_id, new_key, expires, at)
    if expires <= at:
        relay.hub.end_key(connector_id)
        relay.cluster.end_key(connector_id)
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
        publish_completed(relay.events, tenant_id, job)
    return True


