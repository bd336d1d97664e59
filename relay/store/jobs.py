"""Job rows: insert, read, list, and the selections the dispatcher and sweeper need."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, bindparam, exists, func, or_, select, update

from . import raw
from .pg import is_postgres
from .schema import jobs as t
from .schema import result_chunks

# The hot path's statements, built once: a job's life runs each of them a few times, and
# building a statement costs more than SQLite takes to run it (docs/BENCHMARKS.md).
_INSERT = t.insert()
_GET = select(t).where(t.c.id == bindparam("b_id"))
_GET_IN_TENANT = _GET.where(t.c.tenant_id == bindparam("b_tenant"))
_OWNER = raw.Sql("SELECT connector_id, attempt, status FROM jobs WHERE id = :id")  # every agent frame
_SET = update(t).where(t.c.id == bindparam("b_id"))  # SET: the keys of the parameters
_NEXT_QUEUED = (
    select(t)
    .where(t.c.connector_id == bindparam("b_connector"), t.c.status == "queued")
    .where(or_(t.c.not_before.is_(None), t.c.not_before <= bindparam("b_at")))
    .order_by(t.c.priority.desc(), t.c.queued_at, t.c.id)
    .limit(bindparam("b_limit"))
)
_NEXT_QUEUED_LOCKED = _NEXT_QUEUED.with_for_update(skip_locked=True)


def insert(conn: Connection, values: dict[str, Any]) -> None:
    conn.execute(_INSERT, values)


def get(conn: Connection, tenant_id: str | None, job_id: str) -> dict[str, Any] | None:
    if tenant_id is None:
        r = conn.execute(_GET, {"b_id": job_id}).first()
    else:
        r = conn.execute(_GET_IN_TENANT, {"b_id": job_id, "b_tenant": tenant_id}).first()
    return dict(r._mapping) if r is not None else None


def owner(conn: Connection, job_id: str) -> tuple[str, int, str] | None:
    """(connector_id, attempt, status) of a job, or None: the check every agent frame
    about a job needs, without reading the job's sealed query."""
    r = raw.one(conn, _OWNER, {"id": job_id})
    return (r[0], r[1], r[2]) if r is not None else None


def get_by_key(conn: Connection, tenant_id: str, job_key: str) -> dict[str, Any] | None:
    r = conn.execute(select(t).where(t.c.tenant_id == tenant_id, t.c.job_key == job_key)).first()
    return dict(r._mapping) if r is not None else None


def list_page(
    conn: Connection, tenant_id: str, connector_id: str | None, status: str | None,
    page: int, limit: int,
) -> tuple[list[dict[str, Any]], int]:  # fmt: skip
    cond = [t.c.tenant_id == tenant_id]
    if connector_id:
        cond.append(t.c.connector_id == connector_id)
    if status:
        cond.append(t.c.status == status)
    total = conn.execute(select(func.count()).select_from(t).where(*cond)).scalar() or 0
    rows = conn.execute(
        select(t).where(*cond).order_by(t.c.queued_at.desc(), t.c.id.desc())
        .limit(limit).offset((page - 1) * limit)
    ).all()  # fmt: skip
    return [dict(r._mapping) for r in rows], int(total)


def next_queued(
    conn: Connection, connector_id: str, limit: int, at: float | None = None
) -> list[dict[str, Any]]:
    """Queued jobs for a connector that are due (no retry delay pending at ``at``),
    highest priority first, then first come first served."""
    q = _NEXT_QUEUED_LOCKED if is_postgres(conn) else _NEXT_QUEUED  # FOR UPDATE SKIP LOCKED
    due = float("inf") if at is None else at
    rows = conn.execute(q, {"b_connector": connector_id, "b_at": due, "b_limit": limit}).all()
    return [dict(r._mapping) for r in rows]


def connectors_with_due_jobs(conn: Connection, at: float) -> list[str]:
    """Connectors with a queued job whose retry delay has passed (the dispatch safety net)."""
    rows = conn.execute(
        select(t.c.connector_id).distinct().where(
            t.c.status == "queued", or_(t.c.not_before.is_(None), t.c.not_before <= at)
        )
    )
    return [r.connector_id for r in rows]


def with_status(conn: Connection, connector_id: str, statuses: tuple[str, ...]) -> list[dict[str, Any]]:
    rows = conn.execute(
        select(t).where(t.c.connector_id == connector_id, t.c.status.in_(statuses))
    ).all()
    return [dict(r._mapping) for r in rows]


def queued_ids(conn: Connection) -> list[tuple[str, float, str]]:
    """(id, queued_at, options json) of every queued job, for the TTL sweep."""
    rows = conn.execute(select(t.c.id, t.c.queued_at, t.c.options).where(t.c.status == "queued"))
    return [(r.id, r.queued_at, r.options) for r in rows]


def expired_results(conn: Connection, now: float) -> list[str]:
    """Jobs past their result TTL that still have chunks stored."""
    has_chunks = exists().where(result_chunks.c.job_id == t.c.id)
    rows = conn.execute(
        select(t.c.id).where(
            t.c.result_expires_at.is_not(None), t.c.result_expires_at < now, has_chunks
        )
    )
    return [r.id for r in rows]


def set_fields(conn: Connection, job_id: str, values: dict[str, Any]) -> None:
    """Update non-status fields (status changes go through ``relay.queue.apply``)."""
    if "status" in values:
        raise ValueError("status changes go through relay.queue.apply")
    conn.execute(_SET, {"b_id": job_id, **values})


def count_by_status(conn: Connection) -> dict[str, int]:
    """How many jobs are in each status, across tenants (for ``GET /metrics``)."""
    rows = conn.execute(select(t.c.status, func.count()).group_by(t.c.status)).all()
    return {status: int(n) for status, n in rows}
