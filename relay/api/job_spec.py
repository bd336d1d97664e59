"""Validation of a ``POST /jobs`` body: every field checked, 422 naming the field.

Returns a normalised spec with every option filled in, so the rest of the relay never
meets a missing or mistyped value. A ``sealedQuery`` is decoded from base64 and kept
opaque; a clear ``query`` is checked for the shape its operation needs.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Final

from shared.errors import ValidationError
from shared.protocol import MAX_TEXT_FRAME, OPERATIONS

TOP_LEVEL: Final = {"connectorId", "source", "operation", "query", "sealedQuery", "options"}

# option -> (kind, lo, hi, default, nullable)
OPTIONS: Final[dict[str, tuple[str, float, float, Any, bool]]] = {
    "timeoutSeconds": ("int", 1, 86_400, 300, False),
    "maxRows": ("int", 1, 1_000_000_000_000, None, True),
    "retryLimit": ("int", 0, 100, 2, False),
    "retryDelaySeconds": ("num", 0, 86_400, 5, False),
    "ttlSeconds": ("int", 1, 30 * 86_400, 14_400, False),
    "priority": ("int", -1000, 1000, 0, False),
}
MAX_SEALED_BYTES: Final = MAX_TEXT_FRAME // 2  # it must fit a job.assign.v1 frame as base64


def _number(value: Any, kind: str) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return kind == "num" or isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def _options(raw: Any) -> dict[str, Any]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValidationError("options must be an object", field="options")
    out: dict[str, Any] = {}
    for name in raw:
        if name not in OPTIONS and name != "jobKey":
            raise ValidationError(f"options.{name} is not a known option", field=f"options.{name}")
    for name, (kind, lo, hi, default, nullable) in OPTIONS.items():
        value = raw.get(name, default)
        if value is None:
            if not nullable:
                raise ValidationError(f"options.{name} must not be null", field=f"options.{name}")
            out[name] = None
            continue
        if not _number(value, kind) or not lo <= value <= hi:
            word = "an integer" if kind == "int" else "a number"
            raise ValidationError(f"options.{name} must be {word} from {lo:g} to {hi:g}",
                                  field=f"options.{name}")  # fmt: skip
        out[name] = int(value) if kind == "int" else value
    key = raw.get("jobKey")
    if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= 200):
        raise ValidationError("options.jobKey must be a string of 1 to 200 characters",
                              field="options.jobKey")  # fmt: skip
    out["jobKey"] = key
    return out


def _string(body: dict[str, Any], name: str, hi: int) -> str:
    value = body.get(name)
    if value is None:
        raise ValidationError(f"{name} is required", field=name)
    if not isinstance(value, str) or not 1 <= len(value) <= hi or not value.strip():
        raise ValidationError(f"{name} must be a string of 1 to {hi} characters", field=name)
    return value


def _query(query: Any, operation: str) -> dict[str, Any] | None:
    if query is None:
        if operation == "query":
            raise ValidationError("query (or sealedQuery) is required for a query job", field="query")
        return None
    if not isinstance(query, dict):
        raise ValidationError("query must be an object", field="query")
    if operation != "query":
        return query
    if "sql" in query:
        sql = query["sql"]
        if not isinstance(sql, str) or not sql.strip():
            raise ValidationError("query.sql must be a non-empty string", field="query.sql")
        if len(sql) > 256 * 1024:
            raise ValidationError("query.sql is longer than 256 KiB", field="query.sql")
        params = query.get("params")
        if params is not None and not isinstance(params, dict):
            raise ValidationError("query.params must be an object of named parameters",
                                  field="query.params")  # fmt: skip
    elif "entity" in query:
        if not isinstance(query["entity"], str) or not query["entity"]:
            raise ValidationError("query.entity must be a non-empty string", field="query.entity")
    elif "collection" in query:
        if not isinstance(query["collection"], str) or not query["collection"]:
            raise ValidationError("query.collection must be a non-empty string",
                                  field="query.collection")  # fmt: skip
    else:
        raise ValidationError(
            "query needs 'sql' (SQL sources), 'entity' (sap_b1) or 'collection' (tally)",
            field="query",
        )
    return query


def parse_job(body: dict[str, Any]) -> dict[str, Any]:
    for name in body:
        if name not in TOP_LEVEL:
            raise ValidationError(f"{name} is not a field of a job", field=name)
    connector_id = _string(body, "connectorId", 64)
    source = _string(body, "source", 200)
    operation = body.get("operation", "query")
    if operation not in OPERATIONS:
        raise ValidationError(f"operation must be one of {', '.join(OPERATIONS)}", field="operation")
    sealed_raw = body.get("sealedQuery")
    sealed: bytes | None = None
    if sealed_raw is not None:
        if body.get("query") is not None:
            raise ValidationError("send either query or sealedQuery, not both", field="sealedQuery")
        if not isinstance(sealed_raw, str):
            raise ValidationError("sealedQuery must be a base64 string", field="sealedQuery")
        try:
            sealed = base64.b64decode(sealed_raw, validate=True)
        except (binascii.Error, ValueError):
            raise ValidationError("sealedQuery is not valid base64", field="sealedQuery") from None
        if not sealed or len(sealed) > MAX_SEALED_BYTES:
            raise ValidationError("sealedQuery is empty or too large", field="sealedQuery")
        query = None
    else:
        query = _query(body.get("query"), operation)
    return {
        "connectorId": connector_id,
        "source": source,
        "operation": operation,
        "query": query,
        "sealedQuery": sealed,
        "options": _options(body.get("options")),
    }
