"""JSON-safe values and row batches (shared/rows.py), per contract §2's value rules."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import math
import re
import uuid
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared import rows

D = decimal.Decimal
UTC = dt.UTC
IST = dt.timezone(dt.timedelta(hours=5, minutes=30))

CASES: list[tuple[Any, Any]] = [
    (None, None),
    (True, True),
    (42, 42),
    (-(2**63), -(2**63)),
    (1.5, 1.5),
    ("Zoë 日本 🚀", "Zoë 日本 🚀"),
    (D("12345678901234567890.123456789"), "12345678901234567890.123456789"),
    (D("0.10"), "0.10"),
    (D("-0.000001"), "-0.000001"),
    (D("1E+3"), "1000"),
    (D("NaN"), None),
    (float("nan"), None),
    (float("inf"), None),
    (dt.date(2026, 2, 28), "2026-02-28"),
    (dt.datetime(2026, 11, 24, 10, 0, 0, 123000), "2026-11-24T10:00:00.123000"),
    (dt.datetime(2026, 11, 24, 10, 0, tzinfo=UTC), "2026-11-24T10:00:00+00:00"),
    (dt.datetime(2026, 11, 24, 10, 0, tzinfo=IST), "2026-11-24T10:00:00+05:30"),
    (dt.time(23, 59, 58, 5), "23:59:58.000005"),
    (dt.time(8, 30, tzinfo=IST), "08:30:00+05:30"),
    (dt.timedelta(days=1, hours=2, minutes=3, seconds=4.5), "P1DT2H3M4.5S"),
    (dt.timedelta(seconds=-90), "-P0DT0H1M30S"),
    (b"\x00\xffbin", base64.b64encode(b"\x00\xffbin").decode()),
    (memoryview(b"mv"), "bXY="),
    (uuid.UUID("12345678-1234-5678-1234-567812345678"), "12345678-1234-5678-1234-567812345678"),
    ({"a": [1, D("2.5")], "b": {"c": None}}, {"a": [1, "2.5"], "b": {"c": None}}),
    ([1, "x", None], [1, "x", None]),
]


@pytest.mark.parametrize(("value", "expected"), CASES, ids=lambda v: type(v).__name__)
def test_json_safe_values(value: Any, expected: Any) -> None:
    """Each value type gets the contract's JSON form."""
    assert rows.json_safe(value) == expected


@pytest.mark.parametrize(("value", "expected"), CASES, ids=lambda v: type(v).__name__)
def test_encode_rows_agrees_with_json_safe(value: Any, expected: Any) -> None:
    """The fast batch encoder gives the same JSON as the careful per-value path."""
    decoded = orjson.loads(rows.encode_rows([[value, 1]]))
    assert decoded == [[expected, 1]]


def test_decimals_stay_exact_through_a_batch() -> None:
    """Money survives: decimals come back as strings equal to the source values."""
    values = [D(f"{i}.{i % 100:02d}") * D("1.0001") for i in range(1, 500)]
    back = rows.decode_rows(rows.encode_rows([[v] for v in values]))
    assert [D(r[0]) for r in back] == values


def test_huge_integers_do_not_crash_the_encoder() -> None:
    """Integers beyond 64 bits (e.g. MySQL arithmetic) are kept exact, as strings."""
    big = 2**70 + 1
    back = rows.decode_rows(rows.encode_rows([[big, 1], [-big, 2]]))
    assert back == [[str(big), 1], [str(-big), 2]]
    assert rows.decode_rows(rows.encode_rows([[2**64 - 1]])) == [[2**64 - 1]]


def test_non_string_dict_keys_and_sets() -> None:
    back = rows.decode_rows(rows.encode_rows([[{1: "a"}, frozenset([3])]]))
    assert back == [[{"1": "a"}, [3]]]


def test_decode_rows_rejects_non_arrays() -> None:
    with pytest.raises(ValueError):
        rows.decode_rows(b'{"a": 1}')


def test_batched_splits_and_keeps_order() -> None:
    out = list(rows.batched(([i] for i in range(10)), 4))
    assert [len(b) for b in out] == [4, 4, 2]
    assert [r[0] for b in out for r in b] == list(range(10))
    assert list(rows.batched([], 3)) == []


_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**80), 2**80),
    st.floats(),
    st.text(),
    st.binary(max_size=30),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.dates(),
    st.datetimes(timezones=st.none() | st.just(UTC)),
    st.times(),
    st.timedeltas(),
    st.uuids(),
)


@given(st.lists(st.lists(_VALUE, min_size=1, max_size=6), max_size=20))
def test_any_batch_encodes_to_parsable_json(batch: list[list[Any]]) -> None:
    """Every batch of supported values encodes, and parses back to a list of rows."""
    back = rows.decode_rows(rows.encode_rows(batch))
    assert len(back) == len(batch)
    for src, row in zip(batch, back, strict=True):
        assert len(row) == len(src)
        for value, out in zip(src, row, strict=True):
            if isinstance(value, float) and not math.isfinite(value):
                assert out is None
            if isinstance(value, decimal.Decimal) and value.is_finite():
                assert D(out) == value


@pytest.mark.parametrize(
    ("value", "name"),
    [(True, "boolean"), (1, "integer"), (1.0, "number"), (D(1), "decimal"), ("s", "string"),
     (dt.datetime.now(), "datetime"), (dt.date.today(), "date"), (dt.time(), "time"),
     (dt.timedelta(), "interval"), (b"", "bytes"), (uuid.uuid4(), "uuid"), ({}, "json"),
     ([], "array"), (object(), "unknown")],
)
def test_type_names_are_in_the_vocabulary(value: Any, name: str) -> None:
    assert rows.type_name_for_python(value) == name
    assert name in rows.COLUMN_TYPES


# --- issue 14: the cheaper encoders write the same bytes as the plain ones


_ISO_DURATION = re.compile(r"(-?)P(\d+)DT(\d+)H(\d+)M(\d+)(?:\.(\d{1,6}))?S")


def _read_duration(text: str) -> dt.timedelta:
    m = _ISO_DURATION.fullmatch(text)
    assert m is not None, text
    sign, d, h, mi, s, frac = m.groups()
    assert frac is None or not frac.endswith("0"), text
    assert int(h) < 24 and int(mi) < 60 and int(s) < 60, text
    magnitude = dt.timedelta(days=int(d), hours=int(h), minutes=int(mi), seconds=int(s),
                             microseconds=int((frac or "").ljust(6, "0")))  # fmt: skip
    assert not (sign and not magnitude), text  # no "-P0DT0H0M0S"
    return -magnitude if sign else magnitude


def _float_duration(value: dt.timedelta) -> str:
    """The text durations had before they were made exact (through total_seconds())."""
    total = value.total_seconds()
    sign = "-" if total < 0 else ""
    days, rem = divmod(abs(total), 86400)
    hours, rem = divmod(rem, 3600)
    minutes, seconds = divmod(rem, 60)
    sec = f"{seconds:.6f}".rstrip("0").rstrip(".")
    return f"{sign}P{int(days)}DT{int(hours)}H{int(minutes)}M{sec}S"


@given(st.timedeltas())
def test_duration_is_exact(value: dt.timedelta) -> None:
    """Every timedelta reads back from its text to the microsecond, the largest too (the
    float text lost the last digits past 2**32 seconds)."""
    assert _read_duration(rows._duration(value)) == value


@given(st.timedeltas(min_value=dt.timedelta(seconds=1 - 2**32), max_value=dt.timedelta(seconds=2**32 - 1)))
def test_duration_below_2_32_seconds_is_the_text_it_always_was(value: dt.timedelta) -> None:
    assert rows._duration(value) == _float_duration(value)


@pytest.mark.parametrize("seconds", [0, 1, 59, 60, 3599, 3600, 86399, 86400, (1 << 32) - 1, 1 << 32, 1 << 40])
@pytest.mark.parametrize("micro", [-1, 0, 1, 500_000, 999_999])
def test_duration_at_unit_edges(seconds: int, micro: int) -> None:
    base = dt.timedelta(seconds=seconds, microseconds=micro)
    for value in (base, -base):
        assert _read_duration(rows._duration(value)) == value
    for value in (dt.timedelta.max, dt.timedelta.min, dt.timedelta.resolution, -dt.timedelta.resolution):
        assert _read_duration(rows._duration(value)) == value
    assert rows._duration(dt.timedelta.max) == "P999999999DT23H59M59.999999S"
    assert rows._duration(dt.timedelta.min) == "-P999999999DT0H0M0S"
    assert rows._duration(dt.timedelta.min + dt.timedelta.resolution) == "-P999999998DT23H59M59.999999S"


def _plain_default(value: Any) -> Any:
    """``_default`` as it was before the type lookup."""
    if isinstance(value, decimal.Decimal):
        return rows._decimal(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dt.timedelta):
        return rows._duration(value)
    if isinstance(value, (set, frozenset)):
        return list(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    return str(value)


@given(st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**64 - 1), st.text(), st.decimals(allow_nan=False),
                          st.binary(), st.timedeltas(), st.floats()), min_size=1, max_size=20),
       st.integers(1, 4))  # fmt: skip
def test_encode_objects_same_bytes_as_one_dict_per_row(values: list[Any], width: int) -> None:
    names = [f"c{i}" for i in range(width)]
    batch = [tuple(values[(i + j) % len(values)] for j in range(width)) for i in range(len(values))]
    dicts = [dict(zip(names, row, strict=True)) for row in batch]
    try:
        expected = rows.object_lines(names, dicts, default=_plain_default, option=rows._ORJSON_OPTS)
    except TypeError:
        expected = rows.object_lines(names, [{k: rows.json_safe(v) for k, v in d.items()} for d in dicts])
    assert rows.encode_objects(names, batch) == expected


def test_strings_that_are_not_unicode_are_written_with_the_replacement_character() -> None:
    """A lone UTF-16 surrogate (a PostgreSQL json value can hold "\\ud800", SQL Server's
    nvarchar too) made orjson refuse the batch and the job fail; now it is U+FFFD, in keys
    as in values, and a pair held as two code points is its character."""
    row = ["a\ud800b", {"k\udfff": ["\ud83d\ude00", "\udc00\ud800"]}, "plain é"]
    assert rows.decode_rows(rows.encode_rows([row])) == [["a\ufffdb", {"k\ufffd": ["\U0001f600", "\ufffd\ufffd"]}, "plain é"]]
    line = rows.encode_objects(["j", "s"], [({"\ud800": "x\udbff"}, "\ud83d")])
    assert orjson.loads(line) == {"j": {"\ufffd": "x\ufffd"}, "s": "\ufffd"}
    assert rows.json_safe("ok é 😀") == "ok é 😀"


@given(st.text(alphabet=st.one_of(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, exclude_categories=()),
                                  st.characters()), max_size=20))  # surrogates often, alone and in pairs
def test_any_python_string_encodes_to_utf8_json(text: str) -> None:
    out = rows.encode_rows([[text, {text: text}]])
    out.decode("utf-8")  # valid UTF-8, whatever the string held
    [[value, obj]] = rows.decode_rows(out)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        assert "\ufffd" in value
    else:
        assert value == text and obj == {text: text}
