"""Agent log lines and heartbeat samples: append, page through, trim."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, delete, select

from .schema import agent_logs, metrics_samples


def add_logs(conn: Connection, rows: list[dict[str, Any]], keep: int) -> None:
    if not rows:
        return
    conn.execute(agent_logs.insert(), rows)
    connector_id = rows[0]["connector_id"]
    # Keep the newest ``keep`` lines: find the id of the oldest one kept, drop the rest.
    cutoff = conn.execute(
        select(agent_logs.c.id)
        .where(agent_logs.c.connector_id == connector_id)
        .order_by(agent_logs.c.id.desc())
        .offset(keep)
        .limit(1)
    ).scalar()
    if cutoff is not None:
        conn.execute(
            delete(agent_logs).where(
                agent_logs.c.connector_id == connector_id, agent_logs.c.id <= cutoff
            )
        )


def page_logs(
    conn: Connection,
    connector_id: str,
    *,
    min_level: int,
    since: float | None,
    until: float | None,
    job_id: str | None,
    after_id: int,
    limit: int,
) -> list[dict[str, Any]]:
    c = agent_logs.c
    cond = [c.connector_id == connector_id, c.level_no >= min_level, c.id > after_id]
    if since is not None:
        cond.append(c.timestamp >= since)
    if until is not None:
        cond.append(c.timestamp <= until)
    if job_id:
        cond.append(c.job_id == job_id)
    rows = conn.execute(select(agent_logs).where(*cond).order_by(c.id).limit(limit)).all()
    return [dict(r._mapping) for r in rows]


def add_sample(conn: Connection, values: dict[str, Any]) -> None:
    conn.execute(metrics_samples.insert().values(**values))


def samples(conn: Connection, connector_id: str, since: float) -> list[dict[str, Any]]:
    c = metrics_samples.c
    rows = conn.execute(
        select(metrics_samples)
        .where(c.connector_id == connector_id, c.timestamp >= since)
        .order_by(c.timestamp, c.id)
    ).all()
    return [dict(r._mapping) for r in rows]


def prune_samples(conn: Connection, before: float) -> None:
    conn.execute(delete(metrics_samples).where(metrics_samples.c.timestamp < before))
