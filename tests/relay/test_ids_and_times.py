"""relay/ids_and_times.py: the timestamps every event and API answer carries."""

from __future__ import annotations

import datetime as dt
import random

import pytest

from relay.ids_and_times import iso, parse_iso


def _by_datetime(ts: float) -> str:
    d = dt.datetime.fromtimestamp(ts, tz=dt.UTC)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z"


@pytest.mark.parametrize("ts", [0.0, -0.5, -1.0000004, 1.9999994, 1.9999996, 1700000000.9999999, 4102444800.25])
def test_iso_is_datetime_to_the_millisecond_at_the_edges(ts: float) -> None:
    assert iso(ts) == _by_datetime(ts)


def test_iso_agrees_with_datetime_everywhere_and_parses_back() -> None:
    rng = random.Random(7)
    for _ in range(20_000):
        ts = rng.uniform(-1e9, 4e9)
        text = iso(ts)
        assert text == _by_datetime(ts)
        assert abs(parse_iso(text or "") - ts) < 0.0015
    assert iso(None) is None
