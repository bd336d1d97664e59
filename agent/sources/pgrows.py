"""The PostgreSQL fast path's query read as rows, not as a COPY (libpq 17+).

``pgcopy.CopyPlan.select`` run in libpq's chunked-rows mode: a result of rows at a time,
each value a ``bytes`` made in C, where a COPY costs a ``PQgetCopyData`` and a turn of a
Python loop a row (the agent's CPU a row halves). The mode bounds a result by rows, not
bytes, so only rows of a bounded size are read this way (``rows_per_result``); the others
keep the COPY, one row at a time. docs/ARCHITECTURE.md, "Read as rows, not as a COPY";
tests/agent/sources/test_pg_rows_form.py holds the two readings to each other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import Any

ROWS_BUDGET = 8 << 20  # bytes one result of rows_out may hold at most
ROWS_A_RESULT = 2000  # rows a result, at most (fewer pay ~4.5 us a result: 32 rows +0.14 us a row)
MAX_ROW_BOUND = 64 << 10  # past this a row's bound, the COPY (one row at a time) reads it


def row_bound(d: Any) -> int | None:
    """The most bytes one column's JSON (its key aside) can take, from the description
    (psycopg's ``Column``): a fixed-size type's text is within 8 characters a byte plus 64
    (a point's 16 bytes: 51); varchar(n)/char(n) n characters, each at most 6 bytes as JSON
    (``\u001f``); numeric(p, s) p digits, a sign, a point and quotes. None: unbounded (text,
    json, bytea, arrays, unconstrained varchar and numeric, inet ...)."""
    if getattr(d, "internal_size", None) and d.internal_size > 0:
        return 8 * d.internal_size + 64
    if getattr(d, "display_size", None) and d.display_size > 0:
        return 6 * d.display_size + 2
    if d[1] == 1700 and getattr(d, "precision", None):
        return d.precision + 5
    return None


def rows_per_result(description: Sequence[Any]) -> int:
    """How many rows ``rows_out`` may take a result at a time for rows of this shape: libpq's
    chunked-rows mode bounds a result by rows, not bytes, so only rows of a known, small
    bound are read that way (``ROWS_BUDGET`` a result); a row that may be large (a text,
    json or bytea column) is read by the COPY, one row at a time, as before. 0: the COPY."""
    bounds = [row_bound(d) for d in description]
    if any(b is None for b in bounds):
        return 0
    row = sum(bounds) + sum(len(str(d[0])) * 6 + 4 for d in description)  # type: ignore[arg-type]
    if row > MAX_ROW_BOUND:
        return 0
    return max(1, min(ROWS_A_RESULT, ROWS_BUDGET // row))


def rows_mode() -> bool:
    """Whether the text form's lines can come as rows (``rows_out``): libpq 17+."""
    import psycopg

    return psycopg.pq.version() >= 170000


def rows_out(cursor: Any, sql: str, write: Callable[[bytes, int], Any],
             lines: Callable[[list[tuple[Any, ...]], int], bytes] | None = None, *,
             per_result: int = ROWS_A_RESULT) -> None:  # fmt: skip
    """Run ``sql`` (``CopyPlan.select``: every column text) on a
    ``pgconn.OneStatementCursor``'s connection in libpq's chunked-rows mode (libpq 17+,
    ``rows_mode``; ``per_result`` rows a result, ``CopyPlan.rows_per_result``) and
    ``write(lines, n)`` each result's ``n`` lines, newline-terminated:
    ``lines(rows, n)`` makes them (``CopyPlan.row_lines``), or, for the text form's one
    column, each row is its line.

    The lines are the same bytes a ``COPY`` of the query writes, less COPY's escapes, at
    half the agent's CPU a row (~0.35 against ~0.7 us, 1M 41-byte lines on this machine):
    libpq parses a result's rows into one block, and psycopg makes each line a ``bytes``
    in C (the binary format of text is its bytes: ``ByteaBinaryLoader``, no decoding),
    where the COPY costs a ``PQgetCopyData`` (a malloc and a copy) and a turn of a Python
    loop a row. The server streams as a COPY does (one execution, no ``FETCH`` round trip),
    and ``PQsendQueryParams`` is the extended protocol: one statement. A json value's own
    raw newlines (whitespace between its tokens) become spaces here (``_each_a_line``);
    ``pgjson.checked`` with ``raw`` does the rest."""
    from psycopg import errors
    from psycopg.adapt import Transformer
    from psycopg.generators import fetch
    from psycopg.pq import ExecStatus, Format
    from psycopg.types.string import ByteaBinaryLoader

    conn = cursor.connection
    for name in ("text", "varchar", "bpchar", "name"):  # their binary form is their text's bytes
        cursor.adapters.register_loader(name, ByteaBinaryLoader)  # this cursor's map only
    tx = Transformer(cursor)
    pgconn = conn.pgconn
    rows_ok = (ExecStatus.TUPLES_CHUNK, ExecStatus.TUPLES_OK)
    failed = None
    with conn.lock:
        pgconn.send_query_params(sql.encode(), None, result_format=Format.BINARY)
        pgconn.set_chunked_rows_mode(per_result)
        while (res := conn.wait(fetch(pgconn))) is not None:  # every result, to the end
            if res.status not in rows_ok:
                failed = failed or res
            elif failed is None and (n := res.ntuples):
                tx.set_pgresult(res)
                rows = tx.load_rows(0, n, tuple)
                write(_each_a_line(rows, n) if lines is None else lines(rows, n), n)
    if failed is not None:
        if failed.status == ExecStatus.FATAL_ERROR:
            raise errors.error_from_result(failed, encoding=pgconn._encoding)
        raise errors.ProgrammingError(f"the query returned a result of status {failed.status.name}")


def _each_a_line(rows: list[tuple[bytes]], n: int) -> bytes:
    """The text form's rows (one object line each) as lines; a json value's own raw
    newlines (whitespace between its tokens) become spaces."""
    values = list(map(_FIRST, rows))
    payload = b"\n".join(values) + b"\n"
    if payload.count(b"\n") != n:
        payload = b"\n".join([v.replace(b"\n", b" ") for v in values]) + b"\n"
    return payload


_FIRST = itemgetter(0)
