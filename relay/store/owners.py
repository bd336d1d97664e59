"""Connector ownership: which relay node holds each connector's agent, as an expiring lease.

Several relay nodes share one store. The node that welcomes an agent records itself as the
connector's ``owner_node`` until ``owner_expires_at``; it renews the lease while the agent
stays (``renew``), and a node that dies stops renewing, so its connectors' leases lapse and
any node may then mark them offline (``lapsed_online``). Offline is written only by the
owner (``release``): a node whose socket closes late never overwrites the newer node's
``online``. With SQLite there is one node, and every ``online`` left at startup is stale.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, and_, or_, select, update

from ..agents import connector_status as cs
from . import raw
from .schema import connectors as t

_OWNER = raw.Sql("SELECT owner_node FROM connectors WHERE id = :id")  # every dispatch reads it


def _lapsed(at: float) -> Any:
    return or_(t.c.owner_node.is_(None), t.c.owner_expires_at.is_(None), t.c.owner_expires_at < at)


def owner_fields(node: str, until: float) -> dict[str, Any]:
    """The columns a welcome writes: this node holds the agent until ``until``."""
    return {"owner_node": node, "owner_expires_at": until}


def renew(conn: Connection, node: str, connector_ids: list[str], until: float) -> list[str]:
    """Extend this node's leases on ``connector_ids``; return those another node took over
    meanwhile (the agent reconnected elsewhere: the session here is stale)."""
    if not connector_ids:
        return []
    conn.execute(
        update(t).where(t.c.id.in_(connector_ids), t.c.owner_node == node).values(owner_expires_at=until)
    )
    rows = conn.execute(
        select(t.c.id).where(t.c.id.in_(connector_ids), t.c.owner_node.is_not(None), t.c.owner_node != node)
    )
    return [r.id for r in rows]


def owns(conn: Connection, connector_id: str, node: str) -> bool:
    """May this node dispatch to the connector? (It owns it, or nobody does.)"""
    row = raw.one(conn, _OWNER, {"id": connector_id})
    owner = row[0] if row is not None else None
    return owner is None or owner == node


def held_elsewhere(conn: Connection, connector_id: str, node: str, public_key: str, at: float) -> bool:
    """Is the connector online on another live node with a different agent key pair?"""
    row = conn.execute(
        select(t.c.id).where(
            t.c.id == connector_id, t.c.status == cs.ONLINE, t.c.owner_node != node,
            t.c.owner_expires_at >= at, t.c.public_key != public_key,
        )
    ).first()  # fmt: skip
    return row is not None


def release(conn: Connection, connector_id: str, node: str, at: float) -> bool:
    """The agent left this node: offline, unless another node holds it now (or revoked)."""
    done = conn.execute(
        update(t)
        .where(t.c.id == connector_id, t.c.status.in_(cs.FROM[cs.LEAVE]))
        .where(or_(t.c.owner_node.is_(None), t.c.owner_node == node))
        .values(status=cs.TO[cs.LEAVE], last_seen=at, connected_since=None, active_jobs=0,
                owner_node=None, owner_expires_at=None)
    )
    return bool(done.rowcount)


def startup_offline(conn: Connection, node: str, at: float, *, single_node: bool) -> int:
    """At a node's start: connectors it held in a previous life (same ``node``), or whose
    owner lease lapsed, are offline. With one node (SQLite) every ``online`` is stale."""
    q = update(t).where(t.c.status == cs.ONLINE)
    if not single_node:
        q = q.where(or_(t.c.owner_node == node, _lapsed(at)))
    done = conn.execute(q.values(status=cs.after(cs.ONLINE, cs.LEAVE), connected_since=None, owner_node=None, owner_expires_at=None))
    return done.rowcount or 0


def lapsed_online(conn: Connection, at: float, keep: set[str] | list[str]) -> list[dict[str, Any]]:
    """Connectors still ``online`` whose owner stopped renewing (its node died): marked
    offline now; returns them (id, tenant_id, last_seen) for the status events. Their
    ``last_seen`` stays the last heartbeat the dead node recorded: nobody heard the agent
    since. ``keep``: held here (left out in Python: a NOT IN of every agent a node holds
    was a slow statement)."""
    cond = [t.c.status == cs.ONLINE, and_(t.c.owner_node.is_not(None), t.c.owner_expires_at < at)]
    keep = set(keep)
    rows = [dict(r._mapping) for r in conn.execute(select(t.c.id, t.c.tenant_id, t.c.last_seen).where(*cond))
            if r.id not in keep]  # fmt: skip
    if rows:
        conn.execute(
            update(t).where(t.c.id.in_([r["id"] for r in rows]), *cond)
            .values(status=cs.after(cs.ONLINE, cs.LEAVE), connected_since=None, active_jobs=0,
                    owner_node=None, owner_expires_at=None)
        )  # fmt: skip
    return rows


def owned_elsewhere(node: str, at: float) -> Any:
    """A condition on a connector id column: another live node holds that connector."""
    return select(t.c.id).where(t.c.owner_node.is_not(None), t.c.owner_node != node, t.c.owner_expires_at >= at)
