"""The COPY fast path's CSV form (``pgcopy.CopyPlan.csv``, ``pgcsv.CsvSink``) against the real
database: the same rule as tests/agent/sources/test_pg_copy.py (every row's object equals
the cursor path's), on the values CSV leaves raw (quotes, backslashes, control
characters, newlines and the delimiter inside a value, the text ``null``), in both of the
sink's readings (a buffer's lines keyed by bytes operations, or read value by value)."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.jobs.producer import QUEUE_DEPTH
from agent.sources import pgcsv
from agent.sources.sql import SqlSource
from tests.agent.sources.test_pg_copy import (  # noqa: F401 - pg_edge: a fixture
    STRINGS,
    _canon,
    _exec,
    _payload,
    _produce,
    _source,
    cursor_rows,
    pg_edge,
)

pytestmark = pytest.mark.postgres


def rows_by_form(src: SqlSource, sql: str, csv: bool | None) -> tuple[bool, list[Any]]:
    """(whether the CSV form ran, the rows) through the COPY fast path; ``csv`` forces
    the form (None: the plan's own choice)."""
    stream = src.prepare({"sql": sql})
    try:
        stream.start()
        assert stream.copy is not None and stream.payloads is not None, "the COPY fast path was not taken"
        if csv is not None:
            stream.copy = dataclasses.replace(stream.copy, csv=csv)
        used = stream.copy.csv
        out: list[bytes] = []
        stream.payloads(lambda payload, rows: out.append(payload) or True)
    finally:
        stream.close()
    body = b"".join(out)
    return used, [orjson.loads(line) for line in body.splitlines()]


def assert_both_forms_match(src: SqlSource, sql: str) -> list[Any]:
    _, slow = cursor_rows(src, {"sql": sql})
    for csv in (True, False):
        _, fast = rows_by_form(src, sql, csv)
        assert [_canon(r) for r in fast] == [_canon(r) for r in slow], (csv, fast, slow)
    return slow


def test_which_queries_take_the_csv_form(request: pytest.FixtureRequest) -> None:
    """One text or uuid column, or at least half of the columns text; not one numeric
    column or a mostly-numeric row (the keys cost what to_json saved) nor a type off the
    CSV list."""
    url, schema = request.getfixturevalue("pg_edge")  # test_pg_copy's table of edge values
    src = _source(url)
    try:
        for sql, csv in [
            (f"SELECT t FROM {schema}.edge", True), (f"SELECT u FROM {schema}.edge", True),
            (f"SELECT i4 FROM {schema}.edge", False), (f"SELECT n FROM {schema}.edge", False),
            (f"SELECT nm FROM {schema}.edge", True), (f"SELECT id, t FROM {schema}.edge", True),
            (f"SELECT id, t, vc, bc, nm, u, n, b FROM {schema}.edge", True),
            (f"SELECT id, i8, t FROM {schema}.edge", False), (f"SELECT t, d FROM {schema}.edge", False),
            (f"SELECT t, f8 FROM {schema}.edge", False), (f"SELECT ts FROM {schema}.edge", False),
        ]:  # fmt: skip
            used, _ = rows_by_form(src, sql, None)
            assert used is csv, sql
    finally:
        src.close()


def test_csv_form_matches_the_cursor_path_on_edge_values(request: pytest.FixtureRequest) -> None:
    """Every CSV-listed type, NULLs and the edge strings (quotes, backslashes, tabs,
    newlines, the delimiter, ``\\N``, ``},{"b":``), one column and many, in both forms."""
    url, schema = request.getfixturevalue("pg_edge")  # test_pg_copy's table of edge values
    src = _source(url)
    try:
        rows = assert_both_forms_match(src, f"SELECT id, t, vc, bc, nm, u, n, n2, b, i2, i4, i8, o FROM {schema}.edge ORDER BY id")
        assert [r["t"] for r in rows[13 : 13 + len(STRINGS)]] == STRINGS
        for col in ("t", "bc", "u", "n", "b", "o"):
            assert_both_forms_match(src, f"SELECT {col} FROM {schema}.edge ORDER BY id")
        assert assert_both_forms_match(src, "SELECT 'null'::text AS a, NULL::text AS b, '' AS c, 'NaN'::numeric AS d") == [
            {"a": "null", "b": None, "c": "", "d": None}
        ]
    finally:
        src.close()


_nasty = st.text(
    st.sampled_from(['"', "\\", "\n", "\r", "\t", "\x1f", "\x01", "\x7f", "n", "u", "l", ",", "{", "}",
                     "\u2028", "é", "😀", "\U0010fffd", "\u00a0", " ", "a"]),
    max_size=12,
)  # fmt: skip


def test_generated_text_matches_the_cursor_path(pg_url: str) -> None:
    """Strings built from the characters the CSV form treats specially, as one column and
    beside an int and a second text; each batch is one buffer, so a batch with one such
    value in it is read value by value and one without by bytes operations."""
    src = _source(pg_url)
    schema = "mc_copy_csv_" + uuid.uuid4().hex[:10]
    _exec(pg_url, f"CREATE SCHEMA {schema}", f"CREATE TABLE {schema}.v (k int, s text, s2 varchar)")

    @given(values=st.lists(st.tuples(st.none() | _nasty, st.none() | _nasty), min_size=1, max_size=20))
    @settings(max_examples=60, deadline=None)
    def check(values: list[tuple[str | None, str | None]]) -> None:
        _exec(pg_url, f"DELETE FROM {schema}.v")
        _exec(pg_url, f"INSERT INTO {schema}.v VALUES (:k, :s, :s2)",
              params=[{"k": k, "s": s, "s2": s2} for k, (s, s2) in enumerate(values)])  # fmt: skip
        rows = assert_both_forms_match(src, f"SELECT k, s, s2 FROM {schema}.v ORDER BY k")
        assert [(r["s"], r["s2"]) for r in rows] == values
        assert [r["s"] for r in assert_both_forms_match(src, f"SELECT s FROM {schema}.v ORDER BY k")] == [
            v[0] for v in values
        ]

    try:
        check()
    finally:
        _exec(pg_url, f"DROP SCHEMA {schema} CASCADE")
        src.close()


def _sink_output(rows: list[bytes], keys: list[bytes]) -> bytes:
    out: list[bytes] = []
    sink = pgcsv.CsvSink(lambda payload, n: out.append(payload) or True, keys, 1 << 20)
    sink.write(bytearray(b"".join(rows)), len(rows))
    sink.flush()
    return b"".join(out)


def test_the_sink_reads_what_postgresql_writes() -> None:
    """Rows as PostgreSQL sends them (one CopyData message each) read the same by bytes
    operations and value by value; what is not the CSV form fails the job instead of
    writing wrong lines."""
    keys = [b'{"k":', b',"s":']
    rows = [b'1\x1f"a\\"b\\\\"\n', b"2\x1fnull\n", b'3\x1f"null"\n', b'4\x1f"x\ny\tz"\n', b'5\x1f"\n"\n']
    assert _sink_output(rows, keys) == pgcsv._csv_rows(b"".join(rows), keys)
    assert [orjson.loads(x) for x in _sink_output(rows, keys).splitlines()] == [
        {"k": 1, "s": 'a"b\\'}, {"k": 2, "s": None}, {"k": 3, "s": "null"}, {"k": 4, "s": "x\ny\tz"},
        {"k": 5, "s": "\n"}]  # fmt: skip
    one = [b'"x"\n', b"null\n", b'"\x1f\x01"\n']
    assert _sink_output(one, keys[:1]) == b'{"k":"x"}\n{"k":null}\n{"k":"\\u001f\\u0001"}\n'
    assert orjson.loads(pgcsv._csv_rows(b'1\x1f"x\ny\x1fz\t"\n', keys)) == {"k": 1, "s": "x\ny\x1fz\t"}
    assert orjson.loads(_sink_output([b'6\x1f"a\tb\rc\x01"\n'], keys)) == {"k": 6, "s": "a\tb\rc\x01"}
    lines = _sink_output([b'"a\nb"\n', b'"\n"\n', b"null\n", b'"\n\n\\"\n"\n'], keys[:1])
    assert [orjson.loads(x) for x in lines.splitlines()] == [{"k": "a\nb"}, {"k": "\n"}, {"k": None}, {"k": '\n\n"\n'}]
    for n, bad in ((2, b'"a\nb"\n'), (1, b'"a\nb\n'), (1, b'"a\x00\nb"\n')):
        with pytest.raises(pgcsv.JobError):
            pgcsv._inner_newlines_escaped(bad, n)
    assert orjson.loads(_sink_output([b'1\x1f"x\ny\x1fz\t"\n'], keys)) == {"k": 1, "s": "x\ny\x1fz\t"}
    for bad in (b'1\x1f"open\n', b"1\n", b'1\x1f"a"\x1f"b"\n', b'\x1f"a"\n', b'1\x1f"a"\n2'):
        with pytest.raises(pgcsv.JobError):
            pgcsv._csv_rows(bad, keys)


def test_producer_on_the_csv_form_chunk_limit_max_rows_and_back_pressure(pg_url: str) -> None:
    """The job's reader on the CSV form: chunks within the limit, every row once and in
    order, back-pressure, maxRows cut exactly (and said), a row too large for a chunk."""
    src = _source(pg_url)
    sql = {"sql": "SELECT g AS id, repeat('x', 50) || g AS s FROM generate_series(1, 3000) g ORDER BY g"}
    try:
        items, ahead, stream = _produce(src, sql, max_rows=None, max_chunk_bytes=4096)
        assert stream.copy.csv
        chunks = [v for k, v in items if k == "chunk"]
        assert items[-1] == ("end", None) and all(c.payload_bytes <= 4096 for c in chunks) and len(chunks) > 30
        assert max(ahead) <= QUEUE_DEPTH + 1
        lines = [orjson.loads(line) for c in chunks for line in _payload(c.frame).splitlines()]
        assert lines == [{"id": g, "s": "x" * 50 + str(g)} for g in range(1, 3001)]
        assert sum(c.rows for c in chunks) == 3000
        for max_rows, cut in ((3000, False), (2999, True), (1, True)):
            items, _, stream = _produce(src, sql, max_rows=max_rows, max_chunk_bytes=65536)
            chunks = [v for k, v in items if k == "chunk"]
            assert sum(c.rows for c in chunks) == max_rows and stream.truncated is cut, max_rows
            assert [orjson.loads(x)["id"] for c in chunks for x in _payload(c.frame).splitlines()] == list(range(1, max_rows + 1))
        items, _, stream = _produce(src, {"sql": "SELECT repeat('y', 5000) AS big"}, max_rows=None, max_chunk_bytes=4096)
        assert stream.copy.csv and items[-1][0] == "error" and items[-1][1].code == "RESULT_TOO_LARGE"
    finally:
        src.close()
