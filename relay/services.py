"""What the API's write operations do, apart from HTTP: register, rotate, revoke, submit,
cancel, expire. Each runs its store work in one transaction, then tells the hub, the
event bus and any result readers, and the other relay nodes (``relay/cluster.py``).
"""

from __future__ import annotations

import base64
from typing import Any

import orjson
from sqlalchemy.exc import IntegrityError

from shared import keys
from shared.crypto import relay_info
from shared.errors import Conflict, MCError, NotFound
from shared.protocol import CLOSE_CODES

from . import connector_status as cs
from .context import Relay
from .formats import new_connector_id, new_job_id, now
from .intake import publish_completed
from .jobs import lifecycle
from .store import connectors as con_store
from .store import jobs as job_store
from .store import queue


def _job_error(code: str, message: str, retryable: bool = False) -> str:
    return orjson.dumps({"code": code, "message": message, "retryable": retryable}).decode()


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


def _rotate(
    conn: Any, tenant_id: str, connector_id: str, new_key: str, expires: float, at: float
) -> dict[str, Any]:
    row = con_store.get(conn, tenant_id, connector_id)
    if row is None:
        raise NotFound(f"connector {connector_id[:80]} does not exist")
    if row["status"] == cs.REVOKED:
        raise Conflict("the connector is revoked", code="CONNECTOR_REVOKED")
    if expires <= at:
        # Grace 0: a key thought stolen. Every earlier key stops now, not only the latest.
        con_store.drop_previous_keys(conn, connector_id)
    else:
        # Each earlier key keeps its own expiry; the one replaced now gets ``expires``.
        con_store.drop_previous_keys(conn, connector_id, expired_at=at)
        con_store.keep_previous_key(conn, connector_id, row["api_key_prefix"], row["api_key_hash"], expires)
    con_store.set_fields(conn, connector_id, {
        "prev_key_prefix": None, "prev_key_hash": None, "prev_key_expires_at": None,
        "api_key_prefix": keys.key_prefix(new_key), "api_key_hash": keys.hash_key(new_key),
    })  # fmt: skip
    return row


async def rotate_key(relay: Relay, tenant_id: str, connector_id: str, grace: float) -> tuple[str, float]:
    """A new key; the replaced one works ``grace`` seconds more, earlier ones until their
    own expiry. ``grace`` 0 ends every earlier key at once."""
    new_key = keys.generate_key()
    at = now()
    expires = at + max(0.0, grace)
    await relay.store.run(_rotate, tenant_id, connector_id, new_key, expires, at)
    return new_key, expires


def _revoke(conn: Any, tenant_id: str, connector_id: str, at: float) -> list[dict[str, Any]] | None:
    """The jobs failed by revoking the connector; None when it was already revoked."""
    row = con_store.get(conn, tenant_id, connector_id)
    if row is None:
        raise NotFound(f"connector {connector_id[:80]} does not exist")
    if not con_store.revoke(conn, connector_id, at):
        return None
    failed = []
    error = _job_error("CONNECTOR_REVOKED", "the connector was revoked")
    for job in job_store.with_status(conn, connector_id, (lifecycle.QUEUED, *lifecycle.IN_FLIGHT)):
        try:
            queue.apply(conn, job["id"], "fail", {"error": error, "completed_at": at})
        except lifecycle.IllegalTransition:
            continue
        failed.append(job_store.get(conn, None, job["id"]) or job)
    return failed


async def revoke_connector(relay: Relay, tenant_id: str, connector_id: str) -> bool:
    """Revoke the connector (True), or find it already revoked (False). Either way any
    socket its agent still holds is closed; only the first revoke raises the
    ``revoked`` event and fails the connector's queued jobs, so a repeated DELETE is
    idempotent."""
    at = now()
    failed = await relay.store.run(_revoke, tenant_id, connector_id, at)
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


class SourceNotFound(MCError):
    """A job names a source its connector has reported it does not have: 422 at submit
    (the same code an agent reports on a job, there as a job error)."""

    code = "SOURCE_NOT_FOUND"

    @property
    def status(self) -> int:
        return 422


def check_source(sources_json: str, source: str) -> None:
    """Refuse ``source`` if the connector reported sources (its last hello) and it is not
    one of them. A connector that reported none (never connected, or an agent with no
    sources configured yet) is not checked: its agent answers for itself."""
    if sources_json in ("", "[]"):
        return
    try:
        reported = orjson.loads(sources_json)
        names = {s["name"] for s in reported if isinstance(s, dict) and isinstance(s.get("name"), str)}
    except (orjson.JSONDecodeError, TypeError):
        return
    if names and source not in names:
        shown = sorted(names)[:20]
        raise SourceNotFound(
            f"the connector has no source named {source[:100]!r} (it reported: {', '.join(shown)})",
            details={"field": "source", "sources": shown},
        )


def _connector_for_job(conn: Any, tenant_id: str, connector_id: str, source: str) -> dict[str, Any]:
    row = con_store.get(conn, tenant_id, connector_id)
    if row is None:
        raise NotFound(f"connector {connector_id[:80]} does not exist",
                       details={"field": "connectorId"})  # fmt: skip
    if row["status"] == cs.REVOKED:
        raise MCError("the connector is revoked", code="CONNECTOR_REVOKED")
    if not row["public_key"]:
        raise MCError(
            "the connector has never connected, so jobs cannot be sealed to it yet",
            code="CONNECTOR_PENDING",
        )
    check_source(row["sources"] or "[]", source)
    return row


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
        if row is None or not await relay.store.run(_insert_if_key, row, guess):
            connector = await relay.store.run(_connector_for_job, tenant_id, connector_id, spec["source"])
            row = _job_row(relay, tenant_id, job_id, connector, spec)
            await relay.store.run(job_store.insert, row)
    except IntegrityError:
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


def _insert_if_key(conn: Any, row: dict[str, Any], public_key: str) -> bool:
    """Queue the job sealed to ``public_key`` if that is still the connector's key and it
    is not revoked (False: nothing written; the caller reads the connector and reseals).
    A source the connector did not report raises ``SourceNotFound``."""
    sources = con_store.accepts_jobs_for(conn, row["tenant_id"], row["connector_id"], public_key)
    if sources is None:
        return False
    check_source(sources, row["source"])
    job_store.insert(conn, row)
    return True


def decode_sealed(value: str) -> bytes:
    return base64.b64decode(value, validate=True)


def _cancel(conn: Any, tenant_id: str, job_id: str, at: float) -> tuple[dict[str, Any], str]:
    job = job_store.get(conn, tenant_id, job_id)
    if job is None:
        raise NotFound(f"job {job_id[:80]} does not exist")
    if job["status"] in lifecycle.FINAL:
        raise MCError(f"the job already ended ({job['status']})", code="JOB_ALREADY_FINISHED",
                      details={"status": job["status"]})  # fmt: skip
    values = {"cancelled_at": at, "completed_at": at,
              "error": _job_error("CANCELLED", "the job was cancelled")}  # fmt: skip
    try:
        queue.apply(conn, job_id, "cancel", values)
    except lifecycle.IllegalTransition as exc:
        raise MCError(f"the job already ended ({exc.status_now})", code="JOB_ALREADY_FINISHED") from None
    return job_store.get(conn, None, job_id) or job, job["status"]


async def cancel_job(relay: Relay, tenant_id: str, job_id: str) -> dict[str, Any]:
    job, was = await relay.store.run(_cancel, tenant_id, job_id, now())
    if was in lifecycle.IN_FLIGHT:
        await relay.hub.cancel(job["connector_id"], job_id, job["attempt"])
        relay.cluster.cancel(job["connector_id"], job_id, job["attempt"])
    relay.notifier.notify(job_id)
    publish_completed(relay, tenant_id, job)
    return job


def _expire_due(conn: Any, at: float) -> list[dict[str, Any]]:
    expired = []
    for job_id, queued_at, options in job_store.queued_ids(conn):
        if not lifecycle.expired(queued_at, lifecycle.JobOptions.from_json(options), at):
            continue
        error = _job_error("EXPIRED", "the job waited longer than its ttlSeconds")
        try:
            queue.apply(conn, job_id, "expire", {"error": error, "completed_at": at})
        except lifecycle.IllegalTransition:
            continue
        job = job_store.get(conn, None, job_id)
        if job:
            expired.append(job)
    return expired


async def expire_jobs(relay: Relay) -> None:
    for job in await relay.store.run(_expire_due, now()):
        relay.notifier.notify(job["id"])
        publish_completed(relay, job["tenant_id"], job)
