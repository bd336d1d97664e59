"""PostgreSQL's COPY fast path (agent/sources/pgcopy.py) against the real database.

The hard rule: for every type on the COPY list, each row's object equals (after
``orjson.loads``, as Python values, int vs float and -0.0 included) what the cursor path
produces for the same row, i.e. the driver's values (psycopg 3 loading what psycopg2 loaded,
``pgconn.PSYCOPG2_LIKE``) encoded by the producer
(``shared.rows.encode_objects``). And everything the cursor path guarantees holds:
read-only transaction, timeout, cancel, maxRows, parameters, columns, chunk limits,
back-pressure, fallbacks.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import sqlalchemy
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from agent.jobs.producer import QUEUE_DEPTH, Producer
from agent.sources import create_source, pgcopy
from agent.sources.base import Batches
from agent.sources.sql import SqlSource
from shared.errors import JobError
from shared.rows import encode_objects
from tests.conftest import scaled, wait_until

pytestmark = pytest.mark.postgres

COLUMNS = [
    ("b", "boolean"), ("i2", "int2"), ("i4", "int4"), ("i8", "int8"), ("o", "oid"),
    ("f4", "float4"), ("f8", "float8"), ("n", "numeric"), ("n2", "numeric(12,2)"),
    ("t", "text"), ("vc", "varchar(40)"), ("bc", "char(6)"), ("nm", "name"),
    ("d", "date"), ("ts", "timestamp"), ("tz", "timestamptz"), ("tm", "time"),
    ("by", "bytea"), ("u", "uuid"), ("iv", "interval"),
]  # fmt: skip

STRINGS = ["", "plain", 'quo"te', "it's", "back\\slash", "\\\\", "tab\there", "new\nline",
           "cr\rlf", "\x01\x02\x1f\x7f", "unicode é ü 漢字 😀", "\u2028\u2029", '},{"b":', "\\N",
           "\\.", "  padded  "]  # fmt: skip

EDGE_ROWS: list[dict[str, str]] = [
    {"b": "true", "i2": "-32768", "i4": "-2147483648", "i8": "-9223372036854775808", "o": "0",
     "f4": "'NaN'", "f8": "'NaN'", "n": "'NaN'", "n2": "0", "d": "'0001-01-01'",
     "ts": "'0001-01-01 00:00:00'", "tz": "'2025-06-01 12:00:00.25+02'", "tm": "'00:00:00'",
     "by": "''::bytea", "u": "'00000000-0000-0000-0000-000000000000'"},
    {"b": "false", "i2": "32767", "i4": "2147483647", "i8": "9223372036854775807", "o": "4294967295",
     "f4": "'Infinity'", "f8": "'-Infinity'", "n": "'Infinity'", "n2": "-9999999999.99",
     "d": "'9999-12-31'", "ts": "'9999-12-31 23:59:59.999999'", "tz": "'1900-01-01 00:00:00+00'",
     "tm": "'24:00:00'", "by": "'\\x00ff0a5c'::bytea", "u": "'ffffffff-ffff-ffff-ffff-ffffffffffff'"},
    {"f4": "1.1", "f8": "'-0'", "n": "'-Infinity'", "d": "'infinity'", "ts": "'infinity'",
     "tz": "'infinity'", "tm": "'23:59:59.999999'", "by": "decode(repeat('ab', 100), 'hex')"},
    {"f4": "16777217", "f8": "2.0", "n": "0.000000000000000000001", "d": "'-infinity'",
     "ts": "'-infinity'", "tz": "'-infinity'", "tm": "'12:00:00.1'"},
    {"f8": "1e300", "n": "123456789012345678901234567890.123456789", "ts": "'2025-01-01 00:00:01.5'",
     "tz": "'1800-06-01 00:00:00.000001+00'", "d": "'0044-03-15'", "tm": "'00:00:00.000001'"},
    {"f8": "5e-324", "n": "-0.00", "ts": "'0044-03-15 12:00:00'", "tz": "'2025-01-01 00:00:00+05:30'"},
    {"f8": "1e15", "f4": "'-Infinity'", "n": "1e-20", "ts": "'2025-01-01 00:00:00.000010'"},
    {"f8": "123456789012345", "f4": "'-0'", "n": "1.5e10"},
    {"f8": "0.1", "f4": "3.4028235e38"},
    {"f8": "1.7976931348623157e308", "f4": "1e-45"},
    {"f8": "2.2250738585072014e-308", "f4": "-1.5"},
    {"f8": "-1e-7"},
    {},  # NULL in every column
]  # fmt: skip
for _i, _s in enumerate(STRINGS):
    _lit = "'" + _s.replace("'", "''") + "'"
    EDGE_ROWS.append({"t": _lit, "vc": _lit, "bc": f"left({_lit}, 6)", "nm": _lit})
# where PostgreSQL's float8 text turns to exponent notation (the ".0" rule of _float), and
# base64 around encode()'s 76-character line break
EDGE_ROWS += [
    {"f8": "999999999999999"}, {"f8": "-999999999999999"}, {"f8": "99999999999999.5"},
    {"f8": "100000000000000.5"},
    {"f8": "1e15"}, {"f8": "-1e15"}, {"f8": "1e16 + 2"}, {"f8": "0.0001"}, {"f8": "0.00001"},
    {"by": "decode(repeat('cd', 57), 'hex')"}, {"by": "decode(repeat('cd', 58), 'hex')"},
]  # fmt: skip
# intervals: psycopg's 365-day years and 30-day months, mixed signs folded as timedelta
# folds them, fractions, and the ends of what a timedelta holds
INTERVALS = ["'0'", "'1 year 2 mons 3 days 04:05:06.789'", "'-1 year -2 mons +3 days -04:05:06.789'",
             "'-5 days +03:00:01'", "'5 days -03:00:01'", "'-0.000001 sec'", "'0.5 sec'", "'1 mon -30 days'",
             "'2562047788:00:54.775807'", "'-2562047788:00:54.775807'", "'999999999 days 23:59:59.999999'",
             "'-999999999 days'", "'2739727 years -1000 days'", "'-11 mons -1 day -00:00:00.000010'",
             "'100 years 0.5 sec'", "'23:59:60'", "'1 day -24:00:00'"]  # fmt: skip
EDGE_ROWS += [{"iv": f"interval {v}"} for v in INTERVALS]

ZONES = ["UTC", "Europe/Amsterdam", "America/St_Johns", "Asia/Kolkata"]


def _exec(url: str, *statements: str, params: list[dict[str, Any]] | None = None) -> None:
    eng = sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg2://", 1))
    try:
        with eng.begin() as conn:
            for s in statements:
                conn.execute(text(s), params) if params else conn.execute(text(s))
    finally:
        eng.dispose()


@pytest.fixture
def pg_edge(pg_url: str) -> Iterator[tuple[str, str]]:
    schema = "mc_copy_" + uuid.uuid4().hex[:10]
    cols = ", ".join(f"{n} {t}" for n, t in COLUMNS)
    inserts = []
    for k, row in enumerate(EDGE_ROWS):
        names = ["id", *row]
        values = [str(k), *row.values()]
        inserts.append(
            f"INSERT INTO {schema}.edge ({', '.join(names)}) VALUES ({', '.join(values)})"
        )
    _exec(
        pg_url,
        f"CREATE SCHEMA {schema}",
        f"CREATE TABLE {schema}.edge (id int PRIMARY KEY, {cols})",
        *inserts,
    )
    try:
        yield pg_url, schema
    finally:
        _exec(pg_url, f"DROP SCHEMA {schema} CASCADE")


def _source(url: str, **options: str) -> SqlSource:
    src = create_source("s", "postgres", url, options=options or None)
    assert isinstance(src, SqlSource)
    return src


def _canon(value: Any) -> Any:
    """A value with its type made visible: 1 != 1.0, -0.0 != 0.0, NaN == NaN."""
    if isinstance(value, float):
        return ("float", "nan" if math.isnan(value) else repr(value))
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int):
        return ("int", value)
    if isinstance(value, dict):
        return ("dict", [(k, _canon(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", [_canon(v) for v in value])
    return (type(value).__name__, value)


def fast_rows(
    src: SqlSource, request: dict[str, Any], **pump: Any
) -> tuple[list[dict[str, str]], list[Any]]:
    """(columns, rows) through the COPY fast path (fails if it was not taken)."""
    stream = src.prepare(request)
    try:
        stream.start()
        assert stream.copy is not None and stream.payloads is not None, (
            "the COPY fast path was not taken"
        )
        out: list[bytes] = []
        stream.payloads(lambda payload, rows: out.append(payload) or True, **pump)
        columns = stream.columns
    finally:
        stream.close()
    body = b"".join(out)
    assert body == b"" or body.endswith(b"\n")
    return columns, [orjson.loads(line) for line in body.splitlines()]


def cursor_rows(src: SqlSource, request: dict[str, Any]) -> tuple[list[dict[str, str]], list[Any]]:
    """(columns, rows) through the cursor path, encoded as the producer encodes them."""
    stream = src.prepare(request)
    stream.copy_wanted = False
    try:
        stream.start()
        assert stream.copy is None
        names = [c["name"] for c in stream.columns]
        rows: list[Any] = []
        for batch in Batches(stream, 1000):
            rows += [orjson.loads(line) for line in encode_objects(names, batch).splitlines()]
        return stream.columns, rows
    finally:
        stream.close()


def assert_same(src: SqlSource, request: dict[str, Any]) -> list[Any]:
    fast_cols, fast = fast_rows(src, request)
    slow_cols, slow = cursor_rows(src, request)
    assert fast_cols == slow_cols
    assert len(fast) == len(slow)
    for f, s in zip(fast, slow, strict=True):
        assert list(f) == list(s)
        assert _canon(f) == _canon(s), (f, s)
    return fast


@pytest.mark.parametrize("zone", ZONES)
def test_every_listed_type_matches_the_cursor_path_on_edge_values(
    pg_edge: tuple[str, str], zone: str
) -> None:
    url, schema = pg_edge
    src = _source(url, options=f"-c TimeZone={zone}")
    try:
        rows = assert_same(src, {"sql": f"SELECT * FROM {schema}.edge ORDER BY id"})
        assert len(rows) == len(EDGE_ROWS)
        by_id = {r["id"]: r for r in rows}
        # A few values spelled out, so "equal" cannot mean "equally wrong".
        assert by_id[0]["f8"] is None and by_id[0]["n"] is None and by_id[0]["by"] == ""
        assert by_id[1]["tm"] == "00:00:00" and by_id[1]["by"] == "AP8KXA=="
        assert (
            by_id[3]["f8"] == 2.0
            and isinstance(by_id[3]["f8"], float)
            and by_id[3]["d"] == "0001-01-01"
        )
        assert by_id[2]["ts"] == "9999-12-31T23:59:59.999999" and by_id[2]["n"] == "-Infinity"
        assert math.copysign(1, by_id[2]["f8"]) == -1.0
        assert (
            by_id[4]["ts"] == "2025-01-01T00:00:01.500000"
            and by_id[5]["ts"] == "0044-03-15T12:00:00"
        )
        assert by_id[12] == {"id": 12, **{n: None for n, _ in COLUMNS}}
        first = len(EDGE_ROWS) - len(INTERVALS)
        assert [by_id[first + i]["iv"] for i in (1, 2, 3, 5, 10, 11, 12, 13)] == [
            "P428DT4H5M6.789S", "-P422DT4H5M6.789S", "-P4DT20H59M59S", "-P0DT0H0M0.000001S",
            "P999999999DT23H59M59.999999S", "-P999999999DT0H0M0S", "P999999355DT0H0M0S",
            "-P331DT0H0M0.00001S"]  # fmt: skip
        assert [by_id[13 + i]["t"] for i in range(len(STRINGS))] == STRINGS
        assert by_id[13 + STRINGS.index("  padded  ")]["bc"] == "  padd"
        if zone == "UTC":
            assert by_id[1]["tz"] == "1900-01-01T00:00:00+00:00"
        if zone == "Europe/Amsterdam":
            assert (
                by_id[1]["tz"] == "1900-01-01T00:19:32+00:20"
            )  # LMT +00:19:32, as orjson rounds it
    finally:
        src.close()


def test_floats_stay_exact_when_the_database_would_round_them(pg_edge: tuple[str, str]) -> None:
    """A database, a role or the admin's options may set extra_float_digits <= 0: then
    0.1 + 0.2 is written "0.3" and the largest double "1.79769313486232e+308", past the
    largest double (the driver read infinity; the COPY path wrote a number JSON readers
    refuse). The agent's session pins it (ours win over the admin's options), so floats
    read exactly on both paths."""
    url, schema = pg_edge
    src = _source(url, options="-c extra_float_digits=0")
    try:
        rows = assert_same(src, {"sql": f"SELECT id, f8, 0.1::float8 + 0.2::float8 AS s FROM {schema}.edge ORDER BY id"})
        f8 = [r["f8"] for r in rows]
        assert 1.7976931348623157e308 in f8 and 100000000000000.5 in f8
        assert rows[0]["s"] == 0.30000000000000004
    finally:
        src.close()


_floats = st.floats(allow_nan=True, allow_infinity=True)
_floats32 = st.floats(width=32, allow_subnormal=False)
_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30
)
_decimals = st.decimals(allow_nan=False, allow_infinity=False).filter(
    lambda d: abs(d.adjusted()) < 300
)
_stamps = st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30))
_rows = st.lists(
    st.tuples(st.integers(-(2**63), 2**63 - 1), _floats, _floats32, _decimals, _text, _stamps, st.binary(max_size=60)),
    min_size=1, max_size=25,
)  # fmt: skip


@pytest.mark.parametrize("zone", ["UTC", "America/St_Johns"])
def test_generated_values_match_the_cursor_path(pg_url: str, zone: str) -> None:
    src = _source(pg_url, options=f"-c TimeZone={zone}")
    schema = "mc_copy_h_" + uuid.uuid4().hex[:10]
    _exec(pg_url, f"CREATE SCHEMA {schema}",
          f"CREATE TABLE {schema}.v (k int, i int8, f float8, r float4, n numeric, s text, ts timestamp, "
          "tz timestamptz, b bytea)")  # fmt: skip

    @given(values=_rows)
    @settings(max_examples=40, deadline=None)
    def check(values: list[tuple[Any, ...]]) -> None:
        params = [{"k": k, "i": i, "f": f, "r": r, "n": n, "s": s, "ts": ts, "b": b}
                  for k, (i, f, r, n, s, ts, b) in enumerate(values)]  # fmt: skip
        _exec(pg_url, f"DELETE FROM {schema}.v")
        _exec(
            pg_url,
            f"INSERT INTO {schema}.v VALUES (:k, :i, :f, :r, :n, :s, :ts, :ts, :b)",
            params=params,
        )
        rows = assert_same(src, {"sql": f"SELECT * FROM {schema}.v ORDER BY k"})
        assert [r["s"] for r in rows] == [v[4] for v in values]
        assert [r["i"] for r in rows] == [v[0] for v in values]

    try:
        check()
    finally:
        _exec(pg_url, f"DROP SCHEMA {schema} CASCADE")
        src.close()


def test_dates_psycopg2_cannot_read_fail_on_both_paths(pg_url: str) -> None:
    src = _source(pg_url)
    try:
        for sql in ("SELECT DATE '0044-03-15 BC' AS d", "SELECT TIMESTAMP '10000-01-01 00:00:00' AS t",
                    "SELECT TIMESTAMPTZ '0001-01-01 00:00:00+00' - interval '1 day' AS tz"):  # fmt: skip
            with pytest.raises(JobError) as fast:
                fast_rows(src, {"sql": sql})
            with pytest.raises((JobError, ValueError)):
                cursor_rows(src, {"sql": sql})
            assert (
                fast.value.code == "QUERY_FAILED" and "outside years 1-9999" in fast.value.message
            )
    finally:
        src.close()


def test_names_that_need_escaping_many_columns_and_parameters(pg_url: str) -> None:
    src = _source(pg_url)
    try:
        sql = 'SELECT 1 AS "a""b", \'x\' AS "c\'d", 2 AS "e\\f", 3 AS "é 😀", 4 AS "tab\tnl\n"'
        rows = assert_same(src, {"sql": sql})
        assert list(rows[0]) == ['a"b', "c'd", "e\\f", "é 😀", "tab\tnl\n"]
        wide = ", ".join(f"{i} AS c{i}" for i in range(120))  # past concat()'s 100 arguments
        [row] = assert_same(src, {"sql": f"SELECT {wide}"})
        assert row["c119"] == 119
        value = 'it\'s 100% \\ "odd" :x'
        rows = assert_same(src, {"sql": "SELECT s AS v, length(s) AS n FROM (SELECT CAST(:v AS text) AS s) q "
                                        "WHERE s LIKE '%odd%'", "params": {"v": value}})  # fmt: skip
        assert rows == [{"v": value, "n": len(value)}]
        assert assert_same(src, {"sql": "SELECT '50%' AS pct, '%%' AS two"}) == [
            {"pct": "50%", "two": "%%"}
        ]
    finally:
        src.close()


def test_what_the_fast_path_leaves_to_the_cursor_path(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _source(pg_url)
    try:
        for sql in ("SELECT 1 AS a, 2 AS a", "SELECT ARRAY['{}'::jsonb] AS j",
                    "SELECT ARRAY[1.5] AS a", "SHOW server_version", "SELECT '12:00+01'::timetz AS t"):  # fmt: skip
            stream = src.prepare({"sql": sql})
            stream.start()
            assert stream.copy is None and stream.payloads is None, sql
            assert stream.fetch(10), sql
            stream.close()
        off = _source(pg_url, copy_fast_path="false")
        stream = off.prepare({"sql": "SELECT 1 AS a"})
        stream.start()
        assert stream.copy is None and not stream.copy_wanted
        stream.close()
        off.close()
        # A wrap PostgreSQL refuses: back to the cursor path, still read-only, same answer.
        monkeypatch.setattr(
            pgcopy, "describe_sql", lambda inner: f"SELECT * FROM ({inner}) AS AS q"
        )
        stream = src.prepare({"sql": "SELECT current_setting('transaction_read_only') AS ro"})
        stream.start()
        assert stream.copy is None and stream.fetch(10) == [("on",)]
        stream.close()
        monkeypatch.undo()
        # A query that fails: the cursor path reports its own error.
        with pytest.raises(JobError) as info:
            src.query({"sql": "SELECT x FROM no_such_table_here"})
        assert info.value.code == "QUERY_FAILED" and "no_such_table_here" in info.value.message
        # Unbalanced parentheses never reach the wrap (they could close it early).
        assert not pgcopy.wrappable("SELECT 1) AS q(c1)) TO STDOUT --")
        assert not pgcopy.wrappable("SELECT (1")
        assert pgcopy.wrappable('SELECT \')\' AS p, "(" FROM (SELECT 1 AS "(") q -- )')
    finally:
        src.close()


def test_fast_path_is_read_only_and_fetch_still_works(pg_url: str) -> None:
    src = _source(pg_url)
    try:
        _, rows = fast_rows(src, {"sql": "SELECT current_setting('transaction_read_only') AS ro"})
        assert rows == [{"ro": "on"}]
        # A reader that fetches instead of pumping gets the cursor path, same rows.
        cols, batches = src.query({"sql": "SELECT g AS n FROM generate_series(1, 450) g"}, 100)
        assert cols == [{"name": "n", "type": "integer"}]
        got = [r[0] for b in batches for r in b]
        assert got == list(range(1, 451))
    finally:
        src.close()


def test_timeout_on_the_fast_path(pg_url: str) -> None:
    src = _source(pg_url)
    try:
        stream = src.prepare({"sql": "SELECT pg_sleep(10) IS NULL AS slept"}, timeout=0.3)
        stream.start()
        assert stream.copy is not None
        started = time.monotonic()
        with pytest.raises(JobError) as info:
            stream.payloads(lambda p, n: True)
        stream.close()
        assert info.value.code == "TIMEOUT" and time.monotonic() - started < scaled(5)
    finally:
        src.close()


def _running(src: SqlSource, marker: str) -> int:
    stream = src.prepare({"sql": "SELECT count(*) AS n FROM pg_stat_activity WHERE query LIKE :m "
                                 "AND query NOT LIKE '%pg_stat_activity%'", "params": {"m": f"%{marker}%"}})  # fmt: skip
    stream.copy_wanted = False
    try:
        stream.start()
        return stream.fetch(1)[0][0]
    finally:
        stream.close()


def test_cancel_stops_the_copy_at_the_database(pg_url: str) -> None:
    src = _source(pg_url)
    marker = "mc_copy_cancel_" + uuid.uuid4().hex[:8]
    try:
        stream = src.prepare({"sql": f"SELECT pg_sleep(60) IS NULL AS {marker}"})
        stream.start()
        assert stream.copy is not None
        errors: list[BaseException] = []

        def pump() -> None:
            try:
                stream.payloads(lambda p, n: True)
            except BaseException as exc:
                errors.append(exc)

        worker = threading.Thread(target=pump)
        started = time.monotonic()
        worker.start()
        wait_until(lambda: _running(src, marker) == 1, 10, what="the COPY running")
        stream.cancel()
        worker.join(scaled(10))
        assert not worker.is_alive() and time.monotonic() - started < scaled(10)
        assert isinstance(errors[0], JobError) and errors[0].code == "CANCELLED"
        stream.close()
        wait_until(
            lambda: _running(src, marker) == 0, 10, what="the backend gone from pg_stat_activity"
        )
    finally:
        src.close()


def _produce(
    src: SqlSource, request: dict[str, Any], *, max_rows: int | None, max_chunk_bytes: int
) -> tuple[list[Any], list[Any], Any]:
    """Run a real Producer (the runner's reader: start, then Batches) and collect its items."""

    def read() -> tuple[list[dict[str, str]], Any]:
        stream = src.prepare(request)
        streams.append(stream)
        stream.start()
        return stream.columns, Batches(stream, 200)

    streams: list[Any] = []

    async def main() -> tuple[list[Any], list[Any], Any]:
        producer = Producer(loop=asyncio.get_running_loop(), job_id="job_" + "1" * 32, attempt=1, read=read,
                            max_rows=max_rows, max_chunk_bytes=max_chunk_bytes, compress=False)  # fmt: skip
        producer.start()
        items, ahead = [], []
        while True:
            kind, value = await asyncio.wait_for(producer.queue.get(), scaled(30))
            items.append((kind, value))
            # Back-pressure: the thread is never more than the queue (and the chunk it is
            # putting) ahead of what was taken.
            ahead.append(producer._seq - sum(1 for k, _ in items if k == "chunk"))
            if kind in ("end", "error"):
                assert producer.finished.wait(scaled(10))
                assert streams[0].copy is not None, "the COPY fast path was not taken"
                streams[0].truncated = producer.truncated  # what the job's done will say
                return items, ahead, streams[0]

    return asyncio.run(main())


def test_producer_with_the_fast_path_max_rows_chunk_limit_and_back_pressure(pg_url: str) -> None:
    src = _source(pg_url)
    try:
        sql = {
            "sql": "SELECT g AS id, repeat('x', 50) || g AS s, g * interval '1 day 1.5 sec' AS iv "
                   "FROM generate_series(1, 3000) g ORDER BY g"
        }  # interval: the sub-select (PREPARED) under the LIMIT
        items, ahead, _ = _produce(src, sql, max_rows=None, max_chunk_bytes=4096)
        chunks = [v for k, v in items if k == "chunk"]
        assert items[0][0] == "columns" and items[-1] == ("end", None)
        assert all(c.payload_bytes <= 4096 for c in chunks) and len(chunks) > 30
        assert max(ahead) <= QUEUE_DEPTH + 1
        lines = [orjson.loads(line) for c in chunks for line in _payload(c.frame).splitlines()]
        assert [r["id"] for r in lines] == list(range(1, 3001))
        assert lines[0]["iv"] == "P1DT0H0M1.5S" and lines[-1]["iv"] == "P3000DT1H15M0S"
        assert sum(c.rows for c in chunks) == 3000
        items, _, stream = _produce(src, sql, max_rows=1234, max_chunk_bytes=65536)
        chunks = [v for k, v in items if k == "chunk"]
        assert sum(c.rows for c in chunks) == 1234 and items[-1] == ("end", None)
        assert (
            "LIMIT 1235" in stream.copy.sql(1235) and stream._copy_state == "done"
        )  # pool keeps it
        assert stream.truncated  # PostgreSQL had a 1235th row: seen, not sent
        # At exactly the row count, or above it, nothing was cut; one below, it was.
        for max_rows, cut in ((3000, False), (5000, False), (2999, True), (1, True)):
            items, _, stream = _produce(src, sql, max_rows=max_rows, max_chunk_bytes=65536)
            chunks = [v for k, v in items if k == "chunk"]
            assert sum(c.rows for c in chunks) == min(max_rows, 3000), max_rows
            assert stream.truncated is cut, max_rows
        items, _, _ = _produce(src, sql, max_rows=0, max_chunk_bytes=65536)
        assert [k for k, _ in items] == ["columns", "end"]
        items, _, _ = _produce(
            src, {"sql": "SELECT repeat('y', 5000) AS big"}, max_rows=None, max_chunk_bytes=4096
        )
        assert items[-1][0] == "error" and items[-1][1].code == "RESULT_TOO_LARGE"
    finally:
        src.close()


def _payload(frame: bytes) -> bytes:
    from shared.protocol import decode_chunk

    return decode_chunk(frame).payload


ARRAYS = [
    ("ab", "boolean[]", ["ARRAY[true,false,NULL]", "'{}'"]),
    ("a2", "int2[]", ["ARRAY[-32768,32767]", "'{{1,2},{3,NULL}}'"]),
    ("a4", "int4[]", ["'[2:3]={1,2}'", "ARRAY[[[1]],[[2]]]", "'{NULL}'"]),
    ("a8", "int8[]", ["ARRAY[-9223372036854775808,9223372036854775807]", "'{}'"]),
    ("at", "text[]", [f"ARRAY[{', '.join(chr(39) + x.replace(chr(39), chr(39) * 2) + chr(39) for x in STRINGS)}]",
                      "ARRAY['NULL', NULL, '{}', '\"', ',', 'a b']", "'{{a,b},{c,d}}'"]),
    ("av", "varchar(10)[]", ["ARRAY['x', '', NULL]"]),
]  # fmt: skip


@pytest.mark.parametrize("zone", ["UTC", "Asia/Kolkata"])
def test_arrays_on_the_list_match_the_cursor_path(pg_url: str, zone: str) -> None:
    schema = "mc_copy_a_" + uuid.uuid4().hex[:10]
    cols = ", ".join(f"{n} {t}" for n, t, _ in ARRAYS)
    depth = max(len(v) for _, _, v in ARRAYS)
    inserts = [
        f"INSERT INTO {schema}.arr (id, {', '.join(n for n, _, v in ARRAYS if k < len(v))}) "
        f"VALUES ({k}, {', '.join(v[k] for _, _, v in ARRAYS if k < len(v))})"
        for k in range(depth)
    ]
    _exec(pg_url, f"CREATE SCHEMA {schema}", f"CREATE TABLE {schema}.arr (id int, {cols})", *inserts,
          f"INSERT INTO {schema}.arr (id) VALUES ({depth})")  # fmt: skip
    src = _source(pg_url, options=f"-c TimeZone={zone}")
    try:
        rows = assert_same(src, {"sql": f"SELECT * FROM {schema}.arr ORDER BY id"})
        assert rows[0]["a4"] == [1, 2] and rows[1]["a2"] == [[1, 2], [3, None]]
        assert rows[0]["at"] == STRINGS and rows[0]["ab"] == [True, False, None]
        assert rows[depth] == {"id": depth, **{n: None for n, _, _ in ARRAYS}}
    finally:
        src.close()
        _exec(pg_url, f"DROP SCHEMA {schema} CASCADE")


def test_float8_rule_follows_the_server_version() -> None:
    """float8's ".0" rule is read from the value only where the server writes shortest
    text (PostgreSQL 12+); older servers keep the rule on the text."""
    desc = [("f", 701), ("r", 700)]
    new = pgcopy.plan_for("SELECT 1.5::float8 AS f, 1.5::float4 AS r", desc, "UTC", 150004)
    old = pgcopy.plan_for("SELECT 1.5::float8 AS f, 1.5::float4 AS r", desc, "UTC", 110022)
    assert new is not None and old is not None
    assert new.sql().count("trunc(") == 1 and "trunc(" not in old.sql()
