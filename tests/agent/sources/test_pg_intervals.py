"""Intervals on both paths (agent/sources/pgcopy.py's interval expressions, pgconn's
interval loader): the same text or both fail, anywhere in PostgreSQL's range. The edge
intervals are rows of test_pg_copy.py's edge table."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import JobError
from tests.agent.sources.test_pg_copy import _canon, _source, cursor_rows, fast_rows

pytestmark = pytest.mark.postgres

_months = st.integers(-(2**31) + 1, 2**31 - 1)
_intervals = st.tuples(
    st.one_of(_months, st.integers(-40, 40)),
    st.one_of(st.integers(-(2**31), 2**31 - 1), st.integers(-400, 400)),
    st.one_of(st.integers(-(2**63) + 1, 2**63 - 1), st.integers(-(10**11), 10**11)),
)


def test_generated_intervals_match_the_cursor_path_or_fail_on_both(pg_url: str) -> None:
    """Months, days and microseconds anywhere in PostgreSQL's range: the same text on both
    paths, or both fail (past the 999999999 days a timedelta holds)."""
    src = _source(pg_url)

    def outcome(read: Any, sql: str) -> Any:
        try:
            return read(src, {"sql": sql})[1]
        except JobError as exc:
            return ("failed", exc.code)

    @given(values=st.lists(_intervals, min_size=1, max_size=8))
    @settings(max_examples=60, deadline=None)
    def check(values: list[tuple[int, int, int]]) -> None:
        rows = " UNION ALL ".join(
            f"SELECT {k} AS k, CAST('{m} mons {d} days {us} microseconds' AS interval) AS iv"
            for k, (m, d, us) in enumerate(values)
        )
        sql = f"SELECT iv FROM ({rows}) AS t ORDER BY k"
        fast, slow = outcome(fast_rows, sql), outcome(cursor_rows, sql)
        assert _canon(fast) == _canon(slow), (values, fast, slow)

    try:
        check()
    finally:
        src.close()


def test_intervals_the_driver_cannot_hold_fail_on_both_paths(pg_url: str) -> None:
    src = _source(pg_url)
    try:
        for value in ("2739726 years 9 mons 24 days", "-2739726 years -9 mons -24 days", "178000000 years",
                      "-999999999 days -00:00:00.000001", "1000000000 days", "1099999999 days",
                      "-1100000000 days -00:00:01", "3055555 years -1000 days", "-3055555 years 1000 days",
                      "-2147483648 days -2562047788:00:54.775807"):  # fmt: skip
            sql = f"SELECT interval '{value}' AS i"
            with pytest.raises(JobError) as fast:
                fast_rows(src, {"sql": sql})
            with pytest.raises(JobError):
                cursor_rows(src, {"sql": sql})
            assert fast.value.code == "QUERY_FAILED" and "longer than 999999999 days" in fast.value.message
    finally:
        src.close()


def test_interval_texts_the_c_loader_reads_wrong_are_read_exactly_or_refused(pg_url: str) -> None:
    """psycopg's C loader sums days in 32 bits (178000000 years came out as 545490560
    days) and reads PostgreSQL 17's infinity as 0; the agent's loader does neither.
    (PostgreSQL here is older than 17: the infinity text is given to the loader.)"""
    from psycopg.errors import DataError

    from agent.sources import pgconn

    with pgconn.connect_for_test(pg_url) as conn:
        loader = conn.adapters.get_loader(1186, 0)(1186, conn)
        assert loader.load(b"1 year 2 mons 3 days -04:05:06.5") == dt.timedelta(days=428, hours=-4, minutes=-5, seconds=-6.5)
        assert loader.load(b"2739727 years -1000 days") == dt.timedelta(days=999_999_355)
        for text in (b"178000000 years", b"-178000000 years", b"3000000 years 1100000000 days", b"infinity", b"-infinity"):
            with pytest.raises(DataError):
                loader.load(text)
        [(value,)] = conn.execute("SELECT interval '5883516 years -2147483000 days'").fetchall()
        assert value == dt.timedelta(days=5883516 * 365 - 2147483000)
