"""Result chunks: idempotent insert keyed (job, attempt, seq), ordered reads, expiry."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, select

from .schema import result_chunks as t

# Built once: every chunk and every read runs these (see relay/store/jobs.py).
_OF_ATTEMPT = (t.c.job_id == bindparam("b_job"), t.c.attempt == bindparam("b_attempt"))
_SEQ = t.c.seq == bindparam("b_seq")
_EXISTS = select(t.c.seq).where(*_OF_ATTEMPT, _SEQ)
_ROWS_BEFORE = select(func.coalesce(func.sum(t.c.rows), 0)).where(
    *_OF_ATTEMPT, t.c.seq < bindparam("b_seq")
)
_INSERT = t.insert()
_TOP = select(func.max(t.c.seq), func.count()).where(*_OF_ATTEMPT)
_SEQS = select(t.c.seq, t.c.rows).where(*_OF_ATTEMPT).order_by(t.c.seq)
_READ = select(t.c.seq, t.c.rows, t.c.key_id, t.c.data).where(*_OF_ATTEMPT, _SEQ)


def insert(
    conn: Connection, job_id: str, attempt: int, seq: int, rows: int, key_id: str, data: bytes
) -> bool:
    """Store one chunk; an existing (job, attempt, seq) is left alone. True if new."""
    key = {"b_job": job_id, "b_attempt": attempt, "b_seq": seq}
    if conn.execute(_EXISTS, key).first() is not None:
        return False
    row_start = conn.execute(_ROWS_BEFORE, key).scalar() if seq else 0
    conn.execute(_INSERT, {
        "job_id": job_id, "attempt": attempt, "seq": seq, "row_start": int(row_start or 0),
        "rows": rows, "key_id": key_id, "data": data,
    })  # fmt: skip
    return True


def acked_through(conn: Connection, job_id: str, attempt: int) -> int:
    """The highest ``n`` such that chunks 0..n of the attempt are all stored (-1: none).

    The relay acknowledges cumulatively (the agent drops everything up to an ack), so it
    only ever acknowledges a gap-free prefix.
    """
    top, count = conn.execute(_TOP, {"b_job": job_id, "b_attempt": attempt}).one()
    if top is None:
        return -1
    if count == top + 1:
        return int(top)
    expected = 0
    where = (t.c.job_id == job_id, t.c.attempt == attempt)
    for (seq,) in conn.execute(select(t.c.seq).where(*where).order_by(t.c.seq)):
        if seq != expected:
            break
        expected += 1
    return expected - 1


def seqs(conn: Connection, job_id: str, attempt: int) -> list[tuple[int, int]]:
    """(seq, rows) of every stored chunk of an attempt, in order."""
    return [(r.seq, r.rows) for r in conn.execute(_SEQS, {"b_job": job_id, "b_attempt": attempt})]


def key_ids(conn: Connection, job_id: str, attempt: int) -> list[str]:
    """The data keys a job attempt's stored chunks were encrypted with."""
    rows = conn.execute(
        select(t.c.key_id).distinct().where(t.c.job_id == job_id, t.c.attempt == attempt)
    )
    return [r.key_id for r in rows]


def read(conn: Connection, job_id: str, attempt: int, seq: int) -> dict[str, Any] | None:
    r = conn.execute(_READ, {"b_job": job_id, "b_attempt": attempt, "b_seq": seq}).first()
    return dict(r._mapping) if r is not None else None


def delete_for_job(conn: Connection, job_id: str, attempt: int | None = None) -> None:
    q = delete(t).where(t.c.job_id == job_id)
    if attempt is not None:
        q = q.where(t.c.attempt == attempt)
    conn.execute(q)
