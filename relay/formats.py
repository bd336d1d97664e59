"""How the relay writes identifiers and times (docs/ARCHITECTURE.md: Identifiers).

Connectors ``con_<20 hex>``, jobs ``job_<32 hex>``, request ids ``req_<16 hex>``; times
in the API are ISO 8601 UTC with milliseconds and ``Z``; inside, epoch seconds.
"""

from __future__ import annotations

import datetime as dt
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
    if ts is None:
        return None
    d = dt.datetime.fromtimestamp(ts, tz=dt.UTC)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> float:
    """ISO 8601 (a trailing Z allowed; naive means UTC) to epoch seconds; ValueError if bad."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    d = dt.datetime.fromisoformat(value)
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.UTC)
    return d.timestamp()
