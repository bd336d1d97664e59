"""JSON that keeps integers exact: orjson's speed and strictness, ``json``'s big integers.

orjson reads an integer past 64 bits as a float (``123456789012345678901234567890`` as
``1.2345678901234568e+29``, silently) and refuses to write one. A job parameter is where
that matters: a NUMERIC(30) key sent as a JSON integer bound as a rounded float matches
other rows, or none. Here a text orjson accepts (so it is strict JSON: no ``NaN``, no
``1e400``, no lone surrogate) and that holds 19 digits in a row is read again by
``json.loads``, which gives the same values with every integer exact; writing falls back
to ``json.dumps`` only when orjson refuses an integer's size.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

JSONDecodeError = orjson.JSONDecodeError

_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
_NINETEEN = b"0" * 19  # the shortest run that can be an integer orjson reads as a float


def may_hold_big_int(raw: bytes) -> bool:
    """False when ``raw`` cannot hold an integer past 64 bits (no 19 digits in a row);
    ~4x cheaper than a regex."""
    return _NINETEEN in raw.translate(_DIGITS_TO_ZERO)


def loads(raw: bytes | str) -> Any:
    """``orjson.loads`` (its errors too), with integers past 64 bits exact."""
    value = orjson.loads(raw)
    data = raw.encode("utf-8") if isinstance(raw, str) else bytes(raw)
    return json.loads(data) if may_hold_big_int(data) else value


def dumps(value: Any) -> bytes:
    """``orjson.dumps``, or compact ``json.dumps`` when a value holds an integer past 64
    bits (the only ``TypeError`` retried: anything else orjson cannot write still raises)."""
    try:
        return orjson.dumps(value)
    except TypeError as exc:
        if "64-bit" not in str(exc):
            raise
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
