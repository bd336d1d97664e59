"""The served OpenAPI document and the relay's validation agree, differentially.

A body the document calls valid must pass ``job_spec.parse_job`` and one it calls invalid
must fail it: schemathesis generates both from the document itself (the same generator
`make fuzz-api` runs against a live relay, here without one, so many more examples)."""

from __future__ import annotations

import re
import sys
import unicodedata
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from jsonschema import Draft202012Validator
from schemathesis import GenerationMode

from relay.api.common import VISIBLE
from relay.api.job_spec import parse_job
from relay.api.openapi import NOT_BLANK, document
from relay.api.telemetry import RFC3339
from shared.errors import ValidationError

SCHEMA = schemathesis.openapi.from_dict(document("0.1.0"))
CREATE_JOB = SCHEMA["/api/v1/jobs"]["POST"]
SETTINGS = settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
_DOC = document("0.1.0")
NEW_JOB = Draft202012Validator({"$ref": "#/components/schemas/NewJob", "components": _DOC["components"]},
                               format_checker=Draft202012Validator.FORMAT_CHECKER)  # fmt: skip


def _verdict(body: object) -> str | None:
    try:
        parse_job(body)  # type: ignore[arg-type]
    except ValidationError as exc:
        return exc.message
    return None


def _agree(body: object) -> None:
    if not isinstance(body, dict):
        return  # read_json refuses a body that is not an object, before parse_job
    valid = NEW_JOB.is_valid(body)
    refused = _verdict(body)
    assert valid == (refused is None), (body, refused)


@SETTINGS
@given(CREATE_JOB.as_strategy(generation_mode=GenerationMode.POSITIVE))
def test_every_job_the_document_allows_is_accepted(case: schemathesis.Case) -> None:
    assert NEW_JOB.is_valid(case.body)
    _agree(case.body)


@SETTINGS
@given(CREATE_JOB.as_strategy(generation_mode=GenerationMode.NEGATIVE))
def test_every_job_the_document_forbids_is_refused(case: schemathesis.Case) -> None:
    _agree(case.body)


def test_a_visible_character_is_neither_blank_nor_an_invisible_format_one() -> None:
    """Connector names need one (relay/api/common.py and the document share the pattern)."""
    pattern = re.compile(VISIBLE)
    wrong = [hex(c) for c in range(sys.maxunicode + 1)
             if (pattern.search(chr(c)) is None) != (chr(c).isspace() or unicodedata.category(chr(c)) == "Cf")]
    assert wrong == []


def test_not_blank_is_exactly_what_strip_keeps() -> None:
    pattern = re.compile(NOT_BLANK)
    wrong = [hex(c) for c in range(sys.maxunicode + 1) if (pattern.search(chr(c)) is None) != chr(c).isspace()]
    assert wrong == []


@pytest.mark.parametrize("text", ["2026-12-04T03:00:00Z", "2026-12-04t03:00:00.123456+05:30", "0001-01-01T00:00:00-23:59"])
def test_rfc3339_times_are_taken(text: str) -> None:
    assert RFC3339.fullmatch(text)


@pytest.mark.parametrize("text", ["2026-12-04", "2026-12-04T03:00:00", "20261204T030000Z", "2026-12-04 03:00:00Z",
                                  "2026-12-04T03:00Z", "2026-12-04T03:00:00Z\n", "\uff12\uff10\uff12\uff16-12-04T03:00:00Z"])
def test_other_iso_forms_are_not(text: str) -> None:
    assert not RFC3339.fullmatch(text)


def _params(op: dict) -> list[dict]:
    shared = _DOC["components"]["parameters"]
    return [shared[p["$ref"].rsplit("/", 1)[1]] if "$ref" in p else p for p in op.get("parameters", [])]


def test_every_parameter_says_what_it_is() -> None:
    bare = [(path, method, p["name"]) for path, ops in _DOC["paths"].items() for method, op in ops.items()
            for p in _params(op) if not p.get("description")]  # fmt: skip
    assert bare == []


def test_limits_and_defaults_are_stated() -> None:
    options = _DOC["components"]["schemas"]["JobOptions"]["properties"]
    assert (options["timeoutSeconds"]["minimum"], options["timeoutSeconds"]["maximum"]) == (1, 86400)
    assert "left out: 300" in options["timeoutSeconds"]["description"]
    assert "left out: None" in options["maxRows"]["description"]
    listing = {p["name"]: p["schema"] for p in _params(_DOC["paths"]["/api/v1/jobs"]["get"])}
    assert listing["page"]["maximum"] == 1_000_000 and listing["limit"]["maximum"] == 100
    assert listing["limit"]["default"] == 20 and "enum" in listing["status"]


def test_rotate_key_states_its_body_and_the_revoked_conflict() -> None:
    op = _DOC["paths"]["/api/v1/connectors/{id}/rotate-key"]["post"]
    assert op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("RotateKeyRequest")
    assert "409" in op["responses"] and "CONNECTOR_REVOKED" in op["responses"]["409"]["description"]


def _walk(schema: Any, seen: set[str] | None = None) -> Any:
    """Every subschema of ``schema``, following $refs into the components once."""
    seen = set() if seen is None else seen
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/") and ref not in seen:
            seen.add(ref)
            yield from _walk(_DOC["components"]["schemas"][ref.rsplit("/", 1)[1]], seen)
        yield schema
        for v in schema.values():
            yield from _walk(v, seen)
    elif isinstance(schema, list):
        for v in schema:
            yield from _walk(v, seen)


def _bodies() -> list[tuple[str, str, Any]]:
    return [(path, method, op["requestBody"]) for path, ops in _DOC["paths"].items()
            for method, op in ops.items() if "requestBody" in op]  # fmt: skip


def test_request_bodies_carry_no_defaults() -> None:
    """A generated client sends a default as a value (issue 18: logLevelMinutes' default
    made every rename a 422); what leaving a field out means is said in words."""
    with_default = [(path, method) for path, method, body in _bodies()
                    for sub in _walk(body) if isinstance(sub, dict) and "default" in sub]  # fmt: skip
    assert with_default == []
    assert len(_bodies()) >= 4


def test_every_operation_with_a_body_can_answer_413_and_415() -> None:
    assert [(path, method, status) for path, method, _ in _bodies() for status in ("413", "415")
            if status not in _DOC["paths"][path][method]["responses"]] == []  # fmt: skip


def test_response_objects_list_their_required_fields() -> None:
    """Every response object names what is always there, so a generated client types it
    as present (schemathesis's response conformance in `make fuzz-api` checks the relay
    keeps to it)."""
    loose = []
    for name, schema in _DOC["components"]["schemas"].items():
        for sub in _walk(schema, {"#/components/schemas/" + n for n in _DOC["components"]["schemas"]}):
            if (isinstance(sub, dict) and isinstance(sub.get("properties"), dict) and "required" not in sub
                    and sub.get("additionalProperties") is not True and not name.startswith(("New", "Job"))
                    and name not in {"ConnectorPatch", "RotateKeyRequest"}):  # fmt: skip
                loose.append(name)
    assert loose == []
    job = _DOC["components"]["schemas"]["Job"]
    assert set(job["required"]) == set(job["properties"])


def test_levels_have_one_spelling() -> None:
    logs = _DOC["paths"]["/api/v1/connectors/{id}/logs"]["get"]
    level = next(p for p in _params(logs) if p["name"] == "level")["schema"]["enum"]
    line = _DOC["components"]["schemas"]["LogPage"]["properties"]["logs"]["items"]["properties"]["level"]["enum"]
    patch = _DOC["components"]["schemas"]["ConnectorPatch"]["properties"]["logLevel"]["enum"]
    assert level == line == patch == ["debug", "info", "warning", "error", "critical"]


def test_websocket_routes_are_left_to_the_asyncapi_document() -> None:
    assert "/api/v1/events" not in _DOC["paths"] and "/api/v1/agent/connect" not in _DOC["paths"]


