"""Result chunks: idempotent insert keyed (job, attempt, seq), ordered reads, expiry."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, bindparam, delete, select
from sqlalchemy.exc import IntegrityError

from . import raw
from .pg import copy_in_row, copy_out_rows, is_postgres
from .schema import result_chunks as t

# Built once: every chunk and every read runs these (see relay/store/jobs.py). The chunk
# path's own statements run on the driver's cursor (relay/store/raw.py).
_OF_ATTEMPT = (t.c.job_id == bindparam("b_job"), t.c.attempt == bindparam("b_attempt"))
_SEQ = t.c.seq == bindparam("b_seq")
_SEQS = raw.Sql(
    "SELECT seq, rows FROM result_chunks WHERE job_id = :job_id AND attempt = :attempt ORDER BY seq"
)
_READ = select(t.c.seq, t.c.rows, t.c.key_id, t.c.data).where(*_OF_ATTEMPT, _SEQ)
_ROWS_BEFORE = raw.Sql(
    "SELECT COALESCE(SUM(rows), 0) FROM result_chunks WHERE job_id = :job_id AND attempt = :attempt AND seq < :seq"
)
_INSERT = raw.Sql(
    "INSERT INTO result_chunks (job_id, attempt, seq, row_start, rows, key_id, data) "
    "VALUES (:job_id, :attempt, :seq, :row_start, :rows, :key_id, :data) "
    "ON CONFLICT (job_id, attempt, seq) DO NOTHING"
)
_COLUMNS = ("job_id", "attempt", "seq", "row_start", "rows", "key_id", "data")
_EXISTS = raw.Sql("SELECT 1 FROM result_chunks WHERE job_id = :job_id AND attempt = :attempt AND seq = :seq")
_READ_PG = "SELECT seq, rows, key_id, data FROM result_chunks WHERE job_id = %s AND attempt = %s AND seq = %s"
_TOP = raw.Sql("SELECT MAX(seq), COUNT(*) FROM result_chunks WHERE job_id = :job_id AND attempt = :attempt")
_BELOW = raw.Sql(
    "SELECT COUNT(*) FROM result_chunks WHERE job_id = :job_id AND attempt = :attempt AND seq >= 0 AND seq < :seq"
)


def insert(
    conn: Connection, job_id: str, attempt: int, seq: int, rows: int, key_id: str, data: bytes
) -> bool:
    """Store one chunk; an existing (job, attempt, seq) is left alone. True if new."""
    key = {"job_id": job_id, "attempt": attempt, "seq": seq}
    row_start = raw.one(conn, _ROWS_BEFORE, key)[0] if seq else 0  # type: ignore[index]
    values = {**key, "row_start": int(row_start or 0), "rows": rows, "key_id": key_id, "data": data}
    if not is_postgres(conn):
        return raw.count(conn, _INSERT, values) == 1
    # PostgreSQL: binary COPY (relay/store/pg.py), which has no ON CONFLICT; a resent
    # chunk is found first, and one racing in meanwhile trips the key in a savepoint.
    if raw.one(conn, _EXISTS, key) is not None:
        return False
    try:
        with conn.begin_nested():
            copy_in_row(conn, "result_chunks", _COLUMNS, tuple(values[c] for c in _COLUMNS))
    except IntegrityError:
        return False
    return True


# PostgreSQL, the usual chunk in few round trips: one statement for the ownership check,
# whether the chunk is stored already, its first row and the count behind the cumulative
# ack; then the blob by binary COPY (a bytea parameter goes as hex text, and PostgreSQL's
# lexer spends ~0.4 ms on the 100 KB literal of a 50 KB blob: more than the insert). No
# savepoint: a copy of the chunk racing in meanwhile fails the whole store call with
# IntegrityError, and the caller takes the careful path (relay/agents/messages.py).
_STATE_PG = raw.Sql(
    "SELECT EXISTS (SELECT 1 FROM jobs WHERE id = :job_id AND connector_id = :connector_id AND attempt = :attempt), "
    "COALESCE(bool_or(seq = :seq), false), COALESCE(SUM(rows) FILTER (WHERE seq < :seq), 0), MAX(seq), COUNT(*) "
    "FROM result_chunks WHERE job_id = :job_id AND attempt = :attempt"
)


def insert_owned(
    conn: Connection, connector_id: str, job_id: str, attempt: int, seq: int, rows: int, key_id: str,
    data: bytes,
) -> tuple[bool, int] | None:  # fmt: skip
    """PostgreSQL's usual chunk: (new, the gap-free prefix stored now), as ``insert`` then
    ``acked_through`` would say; None (nothing written) when the job is not this
    connector's in this attempt, or on SQLite: then the caller takes the careful path.
    ``IntegrityError`` if the same chunk was stored concurrently (the transaction is then
    unusable: the caller starts again)."""
    if not is_postgres(conn):
        return None
    key = {"connector_id": connector_id, "job_id": job_id, "attempt": attempt, "seq": seq}
    owned, exists, row_start, top, count = raw.one(conn, _STATE_PG, key)  # type: ignore[misc]
    if not owned:
        return None
    if not exists:
        values = (job_id, attempt, seq, int(row_start), rows, key_id, data)
        copy_in_row(conn, "result_chunks", _COLUMNS, values)
        top, count = seq if top is None else max(top, seq), count + 1
    return not exists, _prefix_end(conn, job_id, attempt, top, count)


def acked_through(conn: Connection, job_id: str, attempt: int) -> int:
    """The highest ``n`` such that chunks 0..n of the attempt are all stored (-1: none).

    The relay acknowledges cumulatively (the agent drops everything up to an ack), so it
    only ever acknowledges a gap-free prefix.
    """
    top, count = raw.one(conn, _TOP, {"job_id": job_id, "attempt": attempt})  # type: ignore[misc]
    return _prefix_end(conn, job_id, attempt, top, count)


def _prefix_end(conn: Connection, job_id: str, attempt: int, top: int | None, count: int) -> int:
    """``acked_through`` given the attempt's highest stored seq and how many are stored."""
    if top is None:
        return -1
    if count == top + 1:
        return int(top)
    expected = 0
    for seq, _rows in seqs(conn, job_id, attempt):
        if seq != expected:
            break
        expected += 1
    return expected - 1


def count_below(conn: Connection, job_id: str, attempt: int, n: int) -> int:
    """How many of chunks 0..n-1 of the attempt are stored (n: all of them)."""
    return int(raw.one(conn, _BELOW, {"job_id": job_id, "attempt": attempt, "seq": n})[0])  # type: ignore[index]


def seqs(conn: Connection, job_id: str, attempt: int) -> list[tuple[int, int]]:
    """(seq, rows) of every stored chunk of an attempt, in order."""
    return raw.tuples(conn, _SEQS, {"job_id": job_id, "attempt": attempt})  # type: ignore[return-value]


_FOLLOW = raw.Sql(
    "SELECT j.attempt, j.status, j.chunks, c.seq, c.rows FROM jobs j "
    "LEFT JOIN result_chunks c ON c.job_id = j.id AND c.attempt = :attempt AND c.seq >= :start "
    "WHERE j.id = :job_id ORDER BY c.seq"
)


def follow(
    conn: Connection, job_id: str, attempt: int, start: int
) -> tuple[tuple[int, str, int | None] | None, list[tuple[int, int]]]:
    """What a live reader needs, as of one statement: the job's (attempt, status, chunks),
    None if it is gone, and (seq, rows) of the attempt's chunks from ``start`` on."""
    found = raw.tuples(conn, _FOLLOW, {"job_id": job_id, "attempt": attempt, "start": start})
    if not found:
        return None, []
    state = (found[0][0], found[0][1], found[0][2])
    return state, [(seq, n) for _a, _s, _c, seq, n in found if seq is not None]


def key_ids(conn: Connection, job_id: str, attempt: int) -> list[str]:
    """The data keys a job attempt's stored chunks were encrypted with."""
    rows = conn.execute(
        select(t.c.key_id).distinct().where(t.c.job_id == job_id, t.c.attempt == attempt)
    )
    return [r.key_id for r in rows]


def read(conn: Connection, job_id: str, attempt: int, seq: int) -> dict[str, Any] | None:
    if is_postgres(conn):  # the bytes as they are, not hex text (relay/store/pg.py)
        found = copy_out_rows(conn, _READ_PG, (job_id, attempt, seq), ("int4", "int4", "text", "bytea"))
        return dict(zip(("seq", "rows", "key_id", "data"), found[0], strict=True)) if found else None
    r = conn.execute(_READ, {"b_job": job_id, "b_attempt": attempt, "b_seq": seq}).first()
    return dict(r._mapping) if r is not None else None


def delete_for_job(conn: Connection, job_id: str, attempt: int | None = None) -> None:
    q = delete(t).where(t.c.job_id == job_id)
    if attempt is not None:
        q = q.where(t.c.attempt == attempt)
    conn.execute(q)
