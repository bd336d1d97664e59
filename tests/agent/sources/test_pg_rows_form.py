"""The COPY fast path's text form read as rows (``pgrows.rows_out``, libpq's chunked-rows
mode) against the same query read as a COPY (``pgcopy.copy_out``), on the real database.

The two must hand the producer the same bytes: every edge value of every listed type in
four time zones, json documents with raw whitespace, generated strings (quotes,
backslashes, control characters, Unicode beyond the BMP, non-ASCII spaces). The other
files (test_pg_copy*.py) hold the fast path, now read as rows, to the cursor path; this
one holds the COPY reading (libpq before 17) to the rows reading, in both forms (the
text form, PostgreSQL writing each line; the CSV form, each value's text keyed by the
agent, ``pgcsv.RowLines``). And what the rows
reading must do besides: fail mid-stream with the database's own error and leave the
source usable, stop at maxRows, end an empty result cleanly.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.sources import pgcopy, pgrows
from agent.sources.sql import SqlSource
from shared.errors import JobError
from shared.rows import object_lines_count

from .test_pg_copy import ZONES, _exec, _source, pg_edge  # noqa: F401 (pg_edge: a fixture)
from .test_pg_copy_json import EDGE_JSON

pytestmark = pytest.mark.postgres

needs_rows = pytest.mark.skipif(not pgrows.rows_mode(), reason="libpq before 17: no chunked-rows mode")


def _body(src: SqlSource, sql: str, rows: bool, monkeypatch: pytest.MonkeyPatch, csv: bool = False,
          **pump: Any) -> bytes:  # fmt: skip
    """The payloads of ``sql`` on the fast path's text form (``csv``: its CSV form), read
    as rows or as a COPY."""
    taken: list[str] = []
    real_rows, real_copy = pgrows.rows_out, pgcopy.copy_out
    monkeypatch.setattr(pgrows, "rows_mode", lambda: rows)
    monkeypatch.setattr(pgrows, "rows_out", lambda *a, **k: taken.append("rows") or real_rows(*a, **k))
    monkeypatch.setattr(pgcopy, "copy_out", lambda *a, **k: taken.append("copy") or real_copy(*a, **k))
    stream = src.prepare({"sql": sql})
    out: list[bytes] = []
    try:
        stream.start()
        assert stream.copy is not None, "the fast path was not taken"
        # forced both ways: the plan's own choice (rows_per_result) is tested below
        stream.copy = dataclasses.replace(stream.copy, csv=csv, rows_per_result=pgrows.ROWS_A_RESULT if rows else 0)
        stream.payloads(lambda payload, n: out.append(payload) or True, **pump)
    finally:
        stream.close()
        monkeypatch.undo()
    assert taken == ["rows" if rows else "copy"]
    return b"".join(out)


def _same(src: SqlSource, sql: str, monkeypatch: pytest.MonkeyPatch, csv: bool = False) -> bytes:
    as_rows = _body(src, sql, True, monkeypatch, csv)
    assert as_rows == _body(src, sql, False, monkeypatch, csv)
    return as_rows


@needs_rows
def test_the_text_form_is_read_as_rows_where_libpq_can() -> None:
    assert psycopg.pq.version() >= 170000 and pgrows.rows_mode()


@needs_rows
@pytest.mark.parametrize("zone", ZONES)
def test_every_listed_type_reads_the_same_as_rows_and_as_a_copy(
    pg_edge: tuple[str, str], zone: str, monkeypatch: pytest.MonkeyPatch  # noqa: F811 (the fixture)
) -> None:
    url, schema = pg_edge
    src = _source(url, options=f"-c TimeZone={zone}")
    try:
        body = _same(src, f"SELECT * FROM {schema}.edge ORDER BY id", monkeypatch)
        assert object_lines_count(body) > 40
        assert b'"t":"back\\\\slash"' in body and b'"t":"new\\nline"' in body  # JSON's escapes, not COPY's
    finally:
        src.close()


CSV_COLUMNS = "id, t, vc, bc, nm, u, n, n2, b, i2, i4, i8, o"  # every type of pgcsv.CSV_EXPRESSIONS


@needs_rows
def test_the_csv_forms_types_read_the_same_as_rows_and_as_a_copy(
    pg_edge: tuple[str, str], monkeypatch: pytest.MonkeyPatch  # noqa: F811 (the fixture)
) -> None:
    """Strings with quotes, backslashes, control characters, padding (char(6)), NULL in
    every column, and each string column alone (one column: its own join)."""
    url, schema = pg_edge
    src = _source(url)
    try:
        body = _same(src, f"SELECT {CSV_COLUMNS} FROM {schema}.edge ORDER BY id", monkeypatch, csv=True)
        assert object_lines_count(body) > 40
        assert b'"t":"back\\\\slash"' in body and b'"t":"new\\nline"' in body and b'"bc":"plain "' in body
        assert b'"t":null,"vc":null,"bc":null,"nm":null,"u":null,"n":null' in body
        for col in ("t", "bc", "u", "n", "b", "i8"):
            _same(src, f"SELECT {col} FROM {schema}.edge ORDER BY id", monkeypatch, csv=True)
    finally:
        src.close()


@needs_rows
def test_json_with_raw_whitespace_reads_the_same_as_rows_and_as_a_copy(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A json value keeps its own newlines, tabs and carriage returns between tokens: as
    rows they come raw (not as COPY's escapes) and must still become spaces, one line a
    row; big integers and deep arrays are read again the same way on both readings."""
    schema = "mc_rows_json_" + uuid.uuid4().hex[:10]
    _exec(pg_url, f"CREATE SCHEMA {schema}", f"CREATE TABLE {schema}.j (k int, j json, jb jsonb, t text)")
    _exec(pg_url, f"INSERT INTO {schema}.j VALUES (:k, CAST(:j AS json), CAST(:jb AS jsonb), :t)",
          params=[{"k": k, "j": text, "jb": text if both else None, "t": text}
                  for k, (text, both) in enumerate(EDGE_JSON)])  # fmt: skip
    _exec(pg_url, f"INSERT INTO {schema}.j VALUES (1000, CAST(:j AS json), NULL, NULL)",
          params=[{"j": "[" + ",\n".join(str(2**70 + i) for i in range(3)) + "\r\n]"}])
    src = _source(pg_url)
    try:
        body = _same(src, f"SELECT k, j, jb, t FROM {schema}.j ORDER BY k", monkeypatch)
        assert object_lines_count(body) == len(EDGE_JSON) + 1
        assert b'{"k":1000,"j":["1180591620717411303424",' in body  # read again: strings
        for col in ("j", "jb"):
            _same(src, f"SELECT {col} FROM {schema}.j ORDER BY k", monkeypatch)
    finally:
        src.close()
        _exec(pg_url, f"DROP SCHEMA {schema} CASCADE")


_nasty = st.lists(st.sampled_from(['"', "\\", "\\\\", "\n", "\r", "\t", "\x01", "\x1f", "\x7f", "a", " ",
                                   "\u00a0", "\u2003", "\u3000", "\u2028", "é", "漢", "😀", "\U0010fffd",
                                   "\\N", "\\.", "},{", '":']), max_size=12).map("".join)  # fmt: skip


@needs_rows
def test_generated_strings_read_the_same_as_rows_and_as_a_copy(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    schema = "mc_rows_gen_" + uuid.uuid4().hex[:10]
    _exec(pg_url, f"CREATE SCHEMA {schema}", f"CREATE TABLE {schema}.v (k int, t text, a text[], j json)")
    src = _source(pg_url)

    @given(values=st.lists(st.tuples(_nasty, st.lists(st.none() | _nasty, max_size=3)), min_size=1, max_size=6))
    @settings(max_examples=40, deadline=None)
    def check(values: list[tuple[str, list[str | None]]]) -> None:
        _exec(pg_url, f"DELETE FROM {schema}.v")
        _exec(pg_url, f"INSERT INTO {schema}.v VALUES (:k, :t, :a, to_json(CAST(:t AS text)))",
              params=[{"k": k, "t": t, "a": a} for k, (t, a) in enumerate(values)])  # fmt: skip
        body = _same(src, f"SELECT k, t, a, j, k AS k2, k AS k3 FROM {schema}.v ORDER BY k", monkeypatch)
        assert object_lines_count(body) == len(values)
        for sql in (f"SELECT t FROM {schema}.v ORDER BY k", f"SELECT k, t, t AS t2, k AS k2 FROM {schema}.v ORDER BY k"):
            assert object_lines_count(_same(src, sql, monkeypatch, csv=True)) == len(values)

    try:
        check()
    finally:
        src.close()
        _exec(pg_url, f"DROP SCHEMA {schema} CASCADE")


@needs_rows
def test_an_error_mid_stream_fails_with_the_databases_message_and_the_source_stays_usable(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _source(pg_url)
    try:
        with pytest.raises(JobError) as info:
            _body(src, "SELECT g, 1 / (g - 25000) AS x FROM generate_series(1, 30000) g", True, monkeypatch)
        assert info.value.code == "QUERY_FAILED" and "division by zero" in info.value.message
        assert _body(src, "SELECT 1 AS one", True, monkeypatch) == b'{"one":1}\n'
        assert _body(src, "SELECT 1 AS one WHERE false", True, monkeypatch) == b""
    finally:
        src.close()


@needs_rows
def test_max_rows_stops_the_rows_reading_and_the_source_stays_usable(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _source(pg_url)
    try:
        body = _body(src, "SELECT g FROM generate_series(1, 100000) g", True, monkeypatch, limit=4321)
        assert object_lines_count(body) == 4321 and body.endswith(b'{"g":4321}\n')
        assert _body(src, "SELECT 2 AS two", True, monkeypatch) == b'{"two":2}\n'
    finally:
        src.close()


@needs_rows
def test_a_reader_that_stops_mid_stream_leaves_the_source_usable(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The producer's emit raising (a cancel or an abort on the loop side) leaves the
    connection inside a running query: the next job on the source must still work."""
    src = _source(pg_url)
    monkeypatch.setattr(pgrows, "rows_mode", lambda: True)
    try:
        stream = src.prepare({"sql": "SELECT g, md5(g::text) AS h FROM generate_series(1, 300000) g"})
        try:
            stream.start()
            assert stream.copy is not None

            def emit(payload: bytes, n: int) -> bool:
                raise RuntimeError("the loop side stopped listening")

            with pytest.raises(RuntimeError):
                stream.payloads(emit, target=4096)
        finally:
            stream.close()
        for _ in range(2):
            assert _body(src, "SELECT 3 AS three", True, monkeypatch) == b'{"three":3}\n'
    finally:
        src.close()


@needs_rows
def test_only_rows_of_a_bounded_size_are_read_as_rows(pg_url: str) -> None:
    """libpq's chunked-rows mode bounds a result by rows, not bytes: a plan with a column
    of unbounded size (text, json, bytea, unconstrained varchar or numeric) keeps the COPY,
    which holds one row at a time, so 2,000 rows of 1 MB documents never sit in memory."""
    src = _source(pg_url)
    cases = {
        "SELECT 1::int4 AS a, now() AS b, gen_random_uuid() AS u, true AS t, 1.5::numeric(12,2) AS n": pgrows.ROWS_A_RESULT,
        "SELECT 'x'::varchar(40) AS v, 'y'::char(6) AS c, '1 day'::interval AS i, point(1, 2) AS p": pgrows.ROWS_A_RESULT,
        "SELECT 'x'::varchar(10000) AS v": pgrows.ROWS_BUDGET // (6 * 10000 + 2 + 10),
        "SELECT 'x'::text AS t": 0, "SELECT 'x'::varchar AS v": 0, "SELECT 1.5::numeric AS n": 0,
        "SELECT '{}'::jsonb AS j": 0, "SELECT '\\x00'::bytea AS b": 0, "SELECT ARRAY[1] AS a": 0,
        "SELECT 1 AS a, 'x'::text AS t": 0, "SELECT 'x'::varchar(20000) AS v": 0,
    }
    try:
        for sql, want in cases.items():
            stream = src.prepare({"sql": sql})
            try:
                stream.start()
                assert stream.copy is not None, sql
                assert stream.copy.rows_per_result == want, (sql, stream.copy.rows_per_result)
            finally:
                stream.close()
    finally:
        src.close()


@needs_rows
def test_large_text_rows_are_read_one_at_a_time_and_memory_stays_small(pg_url: str) -> None:
    """300 rows of 1 MB of text: read by the COPY (the plan's own choice), the agent's
    peak memory for it stays far under the 300 MB that one chunked result would hold."""
    import tracemalloc

    src = _source(pg_url)
    try:
        stream = src.prepare({"sql": "SELECT g, repeat(md5(g::text), 32768) AS doc FROM generate_series(1, 300) g"})
        try:
            stream.start()
            assert stream.copy is not None
            got = [0]
            tracemalloc.start()
            stream.payloads(lambda payload, n: got.__setitem__(0, got[0] + n) or True)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        finally:
            stream.close()
        assert got[0] == 300 and peak < 40 << 20, peak
    finally:
        src.close()
