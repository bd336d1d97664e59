"""The protocol's tables (``shared.protocol``) as JSON Schema.

The AsyncAPI document (relay/api/asyncapi.py) builds its payloads from these, so the
document and the validation cannot differ; tests/relay/api/test_asyncapi.py checks the
two agree on generated input.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from .protocol import JOB_ERROR, MESSAGES, F, ItemOf, ObjectOf

_JSON_TYPES: Final = {"str": "string", "int": "integer", "num": "number", "bool": "boolean",
                      "list": "array", "obj": "object"}  # fmt: skip


def json_schema(spec: F) -> dict[str, Any]:
    """The JSON Schema of what ``protocol`` accepts for ``spec``."""
    out: dict[str, Any] = {}
    if spec.kind in _JSON_TYPES:
        kind = _JSON_TYPES[spec.kind]
        out["type"] = [kind, "null"] if spec.nullable else kind
    if spec.max_len is not None:
        out["maxItems" if spec.kind == "list" else "maxLength"] = spec.max_len
    if spec.lo is not None:
        out["minimum"] = spec.lo
    if spec.hi is not None:
        out["maximum"] = spec.hi
    if spec.choices is not None:
        out["enum"] = [*spec.choices, *([None] if spec.nullable else [])]
    if isinstance(spec.item, ObjectOf):
        out["items"] = fields_schema(spec.item.fields)
    elif isinstance(spec.item, ItemOf):
        out["items"] = json_schema(spec.item.spec)
    return out


def fields_schema(fields: Mapping[str, F]) -> dict[str, Any]:
    """An object with these fields: required ones listed, unknown ones allowed (and
    ignored, as ``validate_fields`` ignores them)."""
    return {"type": "object", "required": [n for n, f in fields.items() if f.required],
            "properties": {n: json_schema(f) for n, f in fields.items()}}  # fmt: skip


def message_schema(type_: str) -> dict[str, Any]:
    """A text message's JSON Schema: ``type`` and its fields."""
    _, fields = MESSAGES[type_]
    schema = fields_schema(fields)
    schema["required"] = ["type", *schema["required"]]
    schema["properties"] = {"type": {"const": type_}, **schema["properties"]}
    if type_ == "job.done.v1":  # what _check_done adds to the table
        schema["properties"]["error"] = {"anyOf": [fields_schema(JOB_ERROR), {"type": "null"}]}
        schema["if"] = {"properties": {"status": {"not": {"const": "succeeded"}}}}
        schema["then"] = {"required": ["error"], "properties": {"error": {"type": "object"}}}
    return schema
