"""Hostile API input: schemathesis generates requests for every operation in
``/api/v1/openapi.json`` and sends them, with valid tokens, to a real relay process with
its default limits. No response may be a 5xx, every response must match the spec
(status, content type, headers, body schema), and what the spec allows is accepted. Bounded: a fixed number of examples per operation. `make fuzz-api`
(scripts/fuzz_api.py, in CI) runs every check and phase, stateful included, with an agent."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from relay.api.openapi import document
from tests.harness import Relay, Stack

pytestmark = pytest.mark.system

EXAMPLES = int(os.environ.get("MC_SCHEMATHESIS_EXAMPLES", "25"))
schema = schemathesis.openapi.from_dict(document("0.1.0"))
# Every connector here is new and has reported no sources, so a job the document allows
# is accepted (no SOURCE_NOT_FOUND): positive_data_acceptance holds with no exception.
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance,
          positive_data_acceptance]  # fmt: skip
# (negative_data_rejection runs in `make fuzz-api`: here the fixed auth headers would be
# put back on a case whose negative part is a missing header.)


@pytest.fixture(scope="module")
def live_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Relay, dict[str, str]]]:
    # A fuzzer is not a person: it sends a few hundred admin requests a minute and needs
    # each route to answer, not 429, so the admin limits are raised for this relay only.
    # (429 itself, with its headers, is documented on every route and checked too.)
    fuzz = str(1000 * EXAMPLES)  # ~40 operations x EXAMPLES, with room
    stack = Stack(tmp_path_factory.mktemp("schemathesis"), tenant="fuzz",
                  extra_env={"MC_RELAY_RATE_LIMIT_ADMIN": fuzz, "MC_RELAY_TENANT_RATE_LIMIT_ADMIN": fuzz})
    try:
        relay = stack.start_relay()
        assert stack.api is not None
        stack.api.create_connector("target")  # something for list routes to show
        headers = {"Authorization": f"Bearer {stack.api.token}", "X-Tenant-ID": stack.tenant}
        yield relay, headers
    finally:
        stack.close()


# One test item per operation, named by it: schemathesis's own ``schema.parametrize()``
# gives every operation the same node id, and pytest-xdist (make test) keeps only one item
# of a set with one id, so 21 of the 22 operations went unfuzzed there.
OPERATIONS = [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("operation", OPERATIONS, ids=[op.label for op in OPERATIONS])
def test_every_operation_answers_within_the_spec(operation: Any, live_relay: tuple[Relay, dict[str, str]]) -> None:
    relay, headers = live_relay

    @hypothesis.given(case=operation.as_strategy())
    @hypothesis.settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                         suppress_health_check=list(hypothesis.HealthCheck))  # fmt: skip
    def answers_within_the_spec(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=relay.url, headers=headers, checks=CHECKS, timeout=30)

    answers_within_the_spec()
