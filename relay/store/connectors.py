"""Connector rows: create, read, list, update, key lookup, revoke, live status."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, select, update

from ..agents import connector_status as cs
from . import raw
from .schema import connector_keys as k
from .schema import connectors as t

# Built once: every job submission reads the connector, every heartbeat updates it.
_GET = select(t).where(t.c.id == bindparam("b_id"))
_GET_IN_TENANT = _GET.where(t.c.tenant_id == bindparam("b_tenant"))
_SET = update(t).where(t.c.id == bindparam("b_id"))  # SET: the keys of the parameters


def _row(r: Any) -> dict[str, Any] | None:
    return dict(r._mapping) if r is not None else None


def insert(conn: Connection, values: dict[str, Any]) -> None:
    conn.execute(t.insert().values(**values))


def get(conn: Connection, tenant_id: str | None, connector_id: str, *, lock: bool = False) -> dict[str, Any] | None:
    """``lock``: the row stays locked until the transaction ends (PostgreSQL's ``FOR
    UPDATE``; SQLite's writers take turns anyway)."""
    if tenant_id is None:
        return _row(conn.execute(_GET, {"b_id": connector_id}).first())
    params = {"b_id": connector_id, "b_tenant": tenant_id}
    query = _GET_IN_TENANT.with_for_update() if lock else _GET_IN_TENANT
    return _row(conn.execute(query, params).first())


_KEY_STATUS = raw.Sql(
    "SELECT status, public_key, sources FROM connectors WHERE id = :id AND tenant_id = :tenant"
)


def accepts_jobs_for(conn: Connection, tenant_id: str, connector_id: str, public_key: str) -> str | None:
    """The connector's reported sources (its JSON text) if the tenant's connector is
    unrevoked with ``public_key`` as its key (a job sealed to that key may be queued for
    it, source permitting); None otherwise."""
    row = raw.one(conn, _KEY_STATUS, {"id": connector_id, "tenant": tenant_id})
    if row is None or row[0] == cs.REVOKED or row[1] != public_key:
        return None
    return str(row[2] or "[]")


def list_page(
    conn: Connection, tenant_id: str, status: str | None, page: int, limit: int
) -> tuple[list[dict[str, Any]], int]:
    cond = [t.c.tenant_id == tenant_id]
    if status:
        cond.append(t.c.status == status)
    total = conn.execute(select(func.count()).select_from(t).where(*cond)).scalar() or 0
    rows = conn.execute(
        select(t).where(*cond).order_by(t.c.created_at, t.c.id).limit(limit).offset((page - 1) * limit)
    ).all()
    return [dict(r._mapping) for r in rows], int(total)


def by_key_prefix(conn: Connection, prefix: str, at: float | None = None) -> list[dict[str, Any]]:
    """Connectors (not revoked) whose current key, or a previous key unexpired at ``at``,
    starts with ``prefix``. A previous key comes back as a copy of its connector's row with
    ``prev_key_prefix``/``prev_key_hash``/``prev_key_expires_at`` set to it, one row per
    such key, so the handshake checks each the same way (relay/agents/hub.py)."""
    rows = [dict(r._mapping) for r in conn.execute(
        select(t).where(t.c.api_key_prefix == prefix, t.c.revoked_at.is_(None))
    ).all()]  # fmt: skip
    cond = [k.c.key_prefix == prefix, t.c.revoked_at.is_(None)]
    if at is not None:
        cond.append(k.c.expires_at > at)
    previous = conn.execute(
        select(t, k.c.key_prefix, k.c.key_hash, k.c.expires_at)
        .join(k, k.c.connector_id == t.c.id).where(*cond)
    ).all()
    for r in previous:
        row = {c.name: r._mapping[c] for c in t.columns}
        row.update(prev_key_prefix=r._mapping[k.c.key_prefix], prev_key_hash=r._mapping[k.c.key_hash],
                   prev_key_expires_at=r._mapping[k.c.expires_at])  # fmt: skip
        rows.append(row)
    return rows


def previous_keys(conn: Connection, connector_ids: list[str], at: float) -> dict[str, list[dict[str, Any]]]:
    """connector id -> its previous keys still working at ``at`` (prefix, expiry), soonest
    expiry first."""
    if not connector_ids:
        return {}
    rows = conn.execute(
        select(k.c.connector_id, k.c.key_prefix, k.c.expires_at)
        .where(k.c.connector_id.in_(connector_ids), k.c.expires_at > at)
        .order_by(k.c.expires_at, k.c.key_prefix)
    ).all()
    out: dict[str, list[dict[str, Any]]] = {}
    for cid, prefix, expires in rows:
        out.setdefault(cid, []).append({"prefix": prefix, "expires_at": expires})
    return out


def keys_no_longer_valid(conn: Connection, held: dict[str, str], at: float) -> list[str]:
    """Of ``held`` (connector id -> hash of the API key its live session connected with),
    the connectors whose key no longer opens a session at ``at``: neither the current key
    of an unrevoked connector nor a previous key unexpired (a grace that ran out, a
    rotation with grace 0, a revocation)."""
    if not held:
        return []
    ids = list(held)
    valid = {(cid, h) for cid, h in conn.execute(
        select(t.c.id, t.c.api_key_hash).where(t.c.id.in_(ids), t.c.revoked_at.is_(None))
    ).all()}  # fmt: skip
    valid |= {(cid, h) for cid, h in conn.execute(
        select(k.c.connector_id, k.c.key_hash).join(t, k.c.connector_id == t.c.id)
        .where(k.c.connector_id.in_(ids), k.c.expires_at > at, t.c.revoked_at.is_(None))
    ).all()}  # fmt: skip
    return [cid for cid, h in held.items() if (cid, h) not in valid]


def keep_previous_key(conn: Connection, connector_id: str, prefix: str, key_hash: str, expires: float) -> None:
    """The key being replaced keeps working until ``expires``."""
    conn.execute(delete(k).where(k.c.connector_id == connector_id, k.c.key_hash == key_hash))
    conn.execute(k.insert().values(connector_id=connector_id, key_prefix=prefix, key_hash=key_hash,
                                   expires_at=expires))  # fmt: skip


def drop_previous_keys(conn: Connection, connector_id: str, *, expired_at: float | None = None) -> None:
    """Forget the connector's previous keys: all of them, or those expired at ``expired_at``."""
    q = delete(k).where(k.c.connector_id == connector_id)
    if expired_at is not None:
        q = q.where(k.c.expires_at <= expired_at)
    conn.execute(q)


def set_fields(conn: Connection, connector_id: str, values: dict[str, Any]) -> None:
    conn.execute(_SET, {"b_id": connector_id, **values})


def connect(conn: Connection, connector_id: str, values: dict[str, Any]) -> bool:
    """A welcome's write (``values`` hold ``status`` online), unless the connector was
    revoked meanwhile: False then, and nothing written (revoked is final)."""
    result = conn.execute(
        update(t).where(t.c.id == connector_id, t.c.status.in_(cs.FROM[cs.CONNECT])).values(**values)
    )
    return bool(result.rowcount)


def set_many(conn: Connection, items: list[tuple[str, dict[str, Any]]]) -> None:
    """``set_fields`` for many connectors: one executemany per set of field names."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for connector_id, values in items:
        groups.setdefault(tuple(values), []).append({"b_id": connector_id, **values})
    for params in groups.values():
        conn.execute(_SET, params)


def revoke(conn: Connection, connector_id: str, at: float) -> bool:
    """Mark the connector revoked at ``at``; False when it already was (nothing changes:
    its first ``revoked_at`` stays). One conditional UPDATE, so of two concurrent revokes
    exactly one sees True."""
    result = conn.execute(
        update(t)
        .where(t.c.id == connector_id, t.c.status.in_(cs.FROM[cs.REVOKE]))
        .values(status=cs.TO[cs.REVOKE], revoked_at=at, connected_since=None)
    )
    return bool(result.rowcount)


def set_offline_unless_revoked(conn: Connection, connector_id: str, last_seen: float) -> None:
    conn.execute(
        update(t)
        .where(t.c.id == connector_id, t.c.status.in_(cs.FROM[cs.LEAVE]))
        .values(status=cs.TO[cs.LEAVE], last_seen=last_seen, connected_since=None, active_jobs=0)
    )


def mark_stale_online_offline(conn: Connection, live_ids: list[str]) -> int:
    """At startup no agent is connected to this node: whatever says online is stale."""
    q = update(t).where(t.c.status == cs.ONLINE)
    if live_ids:
        q = q.where(t.c.id.not_in(live_ids))
    return conn.execute(q.values(status=cs.after(cs.ONLINE, cs.LEAVE), connected_since=None)).rowcount or 0
