"""How the relay writes identifiers and times (docs/ARCHITECTURE.md: Identifiers).

Connectors ``con_<20 hex>``, jobs ``job_<32 hex>``, request ids ``req_<16 hex>``; times
in the API are ISO 8601 UTC with milliseconds and ``Z``; inside, epoch seconds.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import secrets
import time


def new_connector_id() -> str:
    return "con_" + secrets.token_hex(10)


def new_job_id() -> str:
    return "job_" + secrets.token_hex(16)


def new_request_id() -> str:
    return "req_" + secrets.token_hex(8)


def now() -> float:
    return time.time()


def iso(ts: float | None) -> str | None:
    """Epoch seconds as ``2026-01-02T03:04:05.678Z`` (UTC, milliseconds)."""
    if ts is None:
        return None
    frac, whole = math.modf(ts)  # rounded to the microsecond as datetime does
    us = round(frac * 1e6)
    if us >= 1_000_000:
        whole, us = whole + 1, us - 1_000_000
    elif us < 0:
        whole, us = whole - 1, us + 1_000_000
    return f"{_iso_second(int(whole))}.{us // 1000:03d}Z"


@functools.lru_cache(maxsize=64)
def _iso_second(whole: int) -> str:
    # Every event and API answer carries timestamps; most fall in the same few seconds.
    # isoformat, not strftime: glibc's %Y writes the year 500 as "500", not RFC 3339's "0500"
    return dt.datetime.fromtimestamp(whole, tz=dt.UTC).isoformat()[:19]


def parse_iso(text: str) -> float:
    """ISO 8601 (a trailing Z allowed; naive means UTC) to epoch seconds; ValueError if bad."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    d = dt.datetime.fromisoformat(value)
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.UTC)
    return d.timestamp()


# ---------------------------------------------------------------- CSV cells
