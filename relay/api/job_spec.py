"""Validation of a ``POST /jobs`` body: every field checked, 422 naming the field.

Returns a normalised spec with every option filled in (a ``JobOptions``, validated
once here by relay/jobs/lifecycle.py), so the rest of the relay never
meets a missing or mistyped value. A ``sealedQuery`` is decoded from base64 and kept
opaque; a clear ``query`` is checked for the shape its operation needs.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Final

from shared.errors import ValidationError
from shared.protocol import MAX_TEXT_FRAME, OPERATIONS

from ..jobs.lifecycle import JobOptions

TOP_LEVEL: Final = {"connectorId", "source", "operation", "query", "sealedQuery", "options"}

MAX_SEALED_BYTES: Final = MAX_TEXT_FRAME // 2  # it must fit a job.assign.v1 frame as base64


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
        "options": JobOptions.parse(body.get("options")),
    }
