"""shared.exactjson: orjson's strictness, with every integer exact (JSON job parameters)."""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared import exactjson

_scalars = (
    st.none() | st.booleans() | st.text()
    | st.integers() | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False)
)  # fmt: skip
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _same(a: Any, b: Any) -> bool:
    """Equal with the types kept (1 is not 1.0, True is not 1); -0.0 is 0.0's sign too."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return a == b


@given(_values)
def test_every_value_reads_back_exactly(value: Any) -> None:
    """What ``json.dumps`` or ``exactjson.dumps`` writes, ``loads`` reads back as it was:
    integers of any size stay integers (orjson alone made those past 64 bits floats)."""
    for text in (json.dumps(value).encode(), exactjson.dumps(value)):
        assert _same(exactjson.loads(text), value), text


@given(_values)
def test_the_same_values_as_orjson_where_orjson_is_exact(value: Any) -> None:
    """Below 64 bits nothing changes: the same values, and the same bytes written."""
    try:
        text = orjson.dumps(value)
    except TypeError:  # an integer orjson cannot write
        return
    assert exactjson.dumps(value) == text
    if not exactjson.may_hold_big_int(text):
        assert _same(exactjson.loads(text), orjson.loads(text))


@pytest.mark.parametrize("text", [
    b'[NaN, 12345678901234567890]', b'[Infinity, 12345678901234567890]',
    b'[1e400, 12345678901234567890]', b'["\\ud800", 12345678901234567890]',
    b'\xef\xbb\xbf[12345678901234567890]', b'[12345678901234567890,]', b"",
])  # fmt: skip
def test_what_orjson_refuses_stays_refused(text: bytes) -> None:
    """The re-read by ``json.loads`` (which takes NaN, 1e400 as inf, lone surrogates) runs
    only on a text orjson accepted, so a body with a big integer is held to strict JSON."""
    with pytest.raises(exactjson.JSONDecodeError):
        exactjson.loads(text)


def test_other_unwritable_values_still_raise() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        exactjson.dumps({"n": 10**30, "o": object()})
