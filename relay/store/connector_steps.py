"""The transactions of a connector's life: its agent's key found at the handshake, the
welcome (the session's jobs reconciled with what the agent holds), heartbeats, lapsed
leases given back, key rotation and revocation. Plain values in and out; status writes
go through the connector status table (relay/agents/connector_status.py) and job steps through
the lifecycle (relay/jobs/lifecycle.py, applied by ``queue``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from shared import keys
from shared.errors import Conflict, NotFound

from ..agents import connector_status as cs
from ..jobs import lifecycle
from ..jobs.lifecycle import error_json
from . import connectors as con_store
from . import jobs as job_store
from . import logs as log_store
from . import queue


def find_connector(conn: Connection, key: str, at: float) -> dict[str, Any] | None:
    for row in con_store.by_key_prefix(conn, keys.key_prefix(key)):
        if keys.key_matches(key, row["api_key_hash"]):
            return row
        expires = row["prev_key_expires_at"]
        if expires is not None and expires > at and keys.key_matches(key, row["prev_key_hash"]):
            return row
    return None


Reconciled = tuple[
    dict[str, int], list[dict[str, Any]], list[tuple[str, int]], list[tuple[str, int]], list[tuple[str, int]]
]


def reconcile(conn: Connection, connector_id: str, held: set[tuple[str, int]], at: float, lease: float) -> Reconciled:
    """Keep in-flight jobs the agent still holds; give back the rest at once.

    Returns (kept job -> attempt, jobs given back (requeued or, past their retryLimit,
    failed), held jobs cancelled meanwhile, held attempts that are no longer current,
    held jobs that ended meanwhile (the agent may resend their frames)).
    """
    kept: dict[str, int] = {}
    given_back: list[dict[str, Any]] = []
    for job in job_store.with_status(conn, connector_id, lifecycle.IN_FLIGHT):
        if (job["id"], job["attempt"]) in held:
            kept[job["id"]] = job["attempt"]
            continue
        # The abandoned attempt's rows are discarded: the next attempt starts from scratch.
        queue.abandon(conn, job, at)
        given_back.append(job_store.get(conn, None, job["id"]) or job)
    queue.renew_leases(conn, connector_id, lifecycle.lease_expiry(at, lease))
    cancelled, stale, ended = [], [], []
    for job_id, attempt in held:
        if job_id in kept:
            continue
        job = job_store.get(conn, None, job_id)
        if not job or job["connector_id"] != connector_id:
            continue
        if job["attempt"] != attempt:
            stale.append((job_id, attempt))
        elif job["status"] == lifecycle.CANCELLED:
            cancelled.append((job_id, attempt))
        else:
            ended.append((job_id, attempt))
    return kept, given_back, cancelled, stale, ended


def lapse(
    conn: Connection, lost: list[dict[str, Any]], renew: set[str], at: float, until: float
) -> list[dict[str, Any]]:
    """Give back the jobs whose lease lapsed; renew the leases of live connectors."""
    for connector_id in renew:
        queue.renew_leases(conn, connector_id, until)
    moved = []
    for job in lost:
        try:
            queue.abandon(conn, job, at)
        except lifecycle.IllegalTransition:
            continue  # it moved meanwhile (finished, cancelled, renewed by another node)
        moved.append(job_store.get(conn, None, job["id"]) or job)
    return moved


def welcome(
    conn: Connection, connector_id: str, fields: dict[str, Any], held: set[tuple[str, int]], lease: float,
    key_hash: str | None = None,
) -> Reconciled | None:
    """The session's write and its jobs reconciled; None, with nothing written, when the
    connector was revoked, or the API key its handshake presented (``key_hash``) stopped
    working, between that handshake and this welcome (the agent's hello may come late)."""
    at = fields["connected_since"]
    if key_hash is not None and con_store.keys_no_longer_valid(conn, {connector_id: key_hash}, at):
        return None
    if not con_store.connect(conn, connector_id, fields):
        return None
    return reconcile(conn, connector_id, held, at, lease)




def rotate(
    conn: Connection, tenant_id: str, connector_id: str, new_key: str, expires: float, at: float
) -> dict[str, Any]:
    # Locked (PostgreSQL): concurrent rotations take turns, each replacing the key the
    # one before it set, instead of all replacing the same one (a unique-key failure).
    row = con_store.get(conn, tenant_id, connector_id, lock=True)
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




def revoke(conn: Connection, tenant_id: str, connector_id: str, at: float) -> list[dict[str, Any]] | None:
    """The jobs failed by revoking the connector; None when it was already revoked."""
    row = con_store.get(conn, tenant_id, connector_id)
    if row is None:
        raise NotFound(f"connector {connector_id[:80]} does not exist")
    if not con_store.revoke(conn, connector_id, at):
        return None
    con_store.drop_previous_keys(conn, connector_id)  # they ended with it: none is listed as working
    failed = []
    error = error_json("CONNECTOR_REVOKED", "the connector was revoked")
    for job in job_store.with_status(conn, connector_id, (lifecycle.QUEUED, *lifecycle.IN_FLIGHT)):
        try:
            queue.apply(conn, job["id"], "fail", {"error": error, "completed_at": at})
        except lifecycle.IllegalTransition:
            continue
        failed.append(job_store.get(conn, None, job["id"]) or job)
    return failed




def heartbeats(conn: Connection, items: list[tuple[Any, ...]]) -> None:
    """Many agents' heartbeats: one executemany per statement. Leases are renewed only
    for agents holding jobs (``lease_until`` None: nothing in flight to renew)."""
    con_store.set_many(conn, [(cid, fields) for cid, fields, _, _ in items])
    log_store.add_samples(conn, [sample for _, _, sample, _ in items])
    for cid, _, _, until in items:
        if until is not None:
            queue.renew_leases(conn, cid, until)  # its traffic keeps its jobs leased


def set_sources(conn: Connection, connector_id: str, sources_json: str) -> None:
    """The sources the connector's running agent reported (agent.sources.v1)."""
    con_store.set_fields(conn, connector_id, {"sources": sources_json})
