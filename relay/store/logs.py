"""Agent log lines and heartbeat samples: append (deduplicated), page through, trim."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, delete, func, select

from .schema import agent_logs, metrics_samples


def _new_lines(conn: Connection, connector_id: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop lines this connector already sent (same agent line id): an agent catching up
    after a disconnection may resend what the relay stored before the cut."""
    ids = [r["line_id"] for r in rows if r.get("line_id") is not None]
    seen: set[int] = set()
    if ids:
        c = agent_logs.c
        seen = set(
            conn.execute(
                select(c.line_id).where(c.connector_id == connector_id, c.line_id.in_(ids))
            ).scalars()
        )
    out, batch = [], set()
    for r in rows:
        lid = r.get("line_id")
        if lid is not None and (lid in seen or lid in batch):
            continue
        if lid is not None:
            batch.add(lid)
        out.append(r)
    return out


def _storable(row: dict[str, Any]) -> dict[str, Any]:
    """The row with U+0000 replaced by U+FFFD in its texts: PostgreSQL's text cannot hold
    it, and one such line must not cost the lines shipped in the same batch."""
    for key in ("message", "logger", "job_id"):
        value = row.get(key)
        if isinstance(value, str) and "\x00" in value:
            row = {**row, key: value.replace("\x00", "\ufffd")}
    return row


def add_logs(conn: Connection, rows: list[dict[str, Any]], keep: int) -> int:
    """Append the lines not stored yet; keep the newest ``keep``. Returns how many were new."""
    if not rows:
        return 0
    connector_id = rows[0]["connector_id"]
    rows = [_storable(r) for r in _new_lines(conn, connector_id, rows)]
    if not rows:
        return 0
    conn.execute(agent_logs.insert(), [{"line_id": None, **r} for r in rows])
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
    return len(rows)


def last_line_id(conn: Connection, connector_id: str) -> int | None:
    """The newest agent line id stored for the connector: where its catch-up resumes."""
    c = agent_logs.c
    return conn.execute(select(func.max(c.line_id)).where(c.connector_id == connector_id)).scalar()


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
    conn.execute(metrics_samples.insert(), values)


def add_samples(conn: Connection, rows: list[dict[str, Any]]) -> None:
    if rows:
        conn.execute(metrics_samples.insert(), rows)  # executemany


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
