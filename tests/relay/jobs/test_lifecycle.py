"""The job lifecycle as a pure table (relay/jobs/lifecycle.py): no store, no I/O."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay import metrics
from relay.jobs import lifecycle as lc
from shared.errors import ValidationError


@pytest.mark.parametrize("status", lc.STATUSES)
@pytest.mark.parametrize("event", sorted(lc.EVENTS))
def test_every_pair_is_in_the_table_or_raises(status: str, event: str) -> None:
    expected = lc.TRANSITIONS.get((status, event))
    if expected is None:
        with pytest.raises(lc.IllegalTransition) as err:
            lc.step("job_1", status, event)
        assert err.value.status_now == status and err.value.details["event"] == event
    else:
        assert lc.step("job_1", status, event) == expected == lc.next_status(status, event)


def test_the_table_is_closed_and_every_status_reachable() -> None:
    assert {s for s, _ in lc.TRANSITIONS} | set(lc.TRANSITIONS.values()) <= set(lc.STATUSES)
    assert not any(s in lc.FINAL for s, _ in lc.TRANSITIONS), "a final status has a way out"
    seen, todo = {lc.QUEUED}, [lc.QUEUED]
    while todo:
        here = todo.pop()
        for (s, _), t in lc.TRANSITIONS.items():
            if s == here and t not in seen:
                seen.add(t)
                todo.append(t)
    assert seen == set(lc.STATUSES)
    assert set(lc.IN_FLIGHT) | lc.FINAL | {lc.QUEUED} == set(lc.STATUSES)


def test_an_agents_done_status_is_the_event_that_reaches_it() -> None:
    for status, event in lc.DONE_EVENTS.items():
        assert lc.step("j", lc.RUNNING, event) == status == lc.step("j", lc.DISPATCHED, event)


def test_one_step_needs_every_status_to_agree() -> None:
    assert lc.one_step("succeed", lc.IN_FLIGHT) == lc.SUCCEEDED
    assert lc.one_step("start", (lc.DISPATCHED,)) == lc.RUNNING
    with pytest.raises(ValueError):
        lc.one_step("start", lc.IN_FLIGHT)  # running cannot start
    with pytest.raises(ValueError):
        lc.one_step("dispatch", ())


def test_metrics_count_the_lifecycles_statuses() -> None:
    assert metrics.JOB_STATES is lc.STATUSES


def test_retry_policy_counts_retries_after_the_first_attempt() -> None:
    assert lc.should_retry(1, 2) and lc.should_retry(2, 2) and not lc.should_retry(3, 2)
    assert not lc.should_retry(1, 0)


def test_ttl_and_lease() -> None:
    opts = lc.JobOptions.parse({"ttlSeconds": 10})
    assert not lc.expired(100.0, opts, 110.0) and lc.expired(100.0, opts, 110.5)
    assert lc.lease_expiry(5.0, 60) == 65.0


def test_defaults_come_from_the_one_table() -> None:
    opts = lc.JobOptions.parse(None)
    api = opts.as_api()
    assert {k: api[k] for k in lc.OPTIONS} == {k: v[3] for k, v in lc.OPTIONS.items()}
    assert lc.JobOptions() == opts == lc.JobOptions.from_json("{}") == lc.JobOptions.from_json(None)
    assert opts.for_agent() == {"timeoutSeconds": 300, "maxRows": None}


def test_a_row_written_before_a_field_existed_reads_with_its_default() -> None:
    old = lc.JobOptions.from_json('{"timeoutSeconds": 30, "maxRows": 5, "jobKey": "k"}')
    assert (old.timeout_seconds, old.max_rows, old.job_key) == (30, 5, "k")
    assert (old.retry_limit, old.retry_delay_seconds, old.ttl_seconds) == (2, 5, 14_400)


def _valid(name: str) -> st.SearchStrategy[Any]:
    kind, lo, hi, _, nullable = lc.OPTIONS[name]
    base: st.SearchStrategy[Any] = (
        st.integers(int(lo), int(hi)) if kind == "int"
        else st.floats(lo, hi, allow_nan=False) | st.integers(int(lo), int(hi))
    )  # fmt: skip
    return base | st.none() if nullable else base


@given(st.fixed_dictionaries({}, optional={n: _valid(n) for n in lc.OPTIONS}),
       st.none() | st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                         min_size=1, max_size=200))  # fmt: skip
def test_options_survive_the_store(raw: dict[str, Any], key: str | None) -> None:
    body = {**raw, **({"jobKey": key} if key is not None else {})}
    opts = lc.JobOptions.parse(body)
    assert lc.JobOptions.from_json(opts.to_json()) == opts
    assert orjson.loads(opts.to_json())["jobKey"] == key
    for name, value in raw.items():
        assert opts.as_api()[name] == value


@pytest.mark.parametrize(("body", "field"), [
    ([], "options"),
    ({"timeout": 1}, "options.timeout"),
    ({"timeoutSeconds": True}, "options.timeoutSeconds"),
    ({"timeoutSeconds": 0}, "options.timeoutSeconds"),
    ({"timeoutSeconds": 1.5}, "options.timeoutSeconds"),
    ({"timeoutSeconds": "10"}, "options.timeoutSeconds"),
    ({"retryLimit": None}, "options.retryLimit"),
    ({"retryLimit": 101}, "options.retryLimit"),
    ({"retryDelaySeconds": -0.1}, "options.retryDelaySeconds"),
    ({"priority": 1001}, "options.priority"),
    ({"jobKey": ""}, "options.jobKey"),
    ({"jobKey": "k" * 201}, "options.jobKey"),
    ({"jobKey": 7}, "options.jobKey"),
    ({"jobKey": "k\x00"}, "options.jobKey"),
])  # fmt: skip
def test_a_bad_option_names_its_field(body: Any, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        lc.JobOptions.parse(body)
    assert err.value.details.get("field") == field
