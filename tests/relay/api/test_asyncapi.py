"""The AsyncAPI document of the two WebSocket routes: valid AsyncAPI 3.0, served, and
unable to drift from the tables the code validates with.

* The document is checked against the AsyncAPI 3.0.0 JSON Schema from the
  ``@asyncapi/specs`` package (`make test` unpacks it into ``.cache/asyncapi-specs`` when npm is there; set
  ``MC_ASYNCAPI_SCHEMA`` to use another copy).
* Differentially: arbitrary JSON objects built from each message's field names are
  accepted by ``shared.protocol.validate_text`` exactly when the document's payload schema
  says they are valid, and the same for each event's ``data`` and ``EventBus.publish``.
* Real traffic: the events and relay messages of a job run through a real relay and a
  protocol-speaking agent all match their payload schemas.
"""

from __future__ import annotations

import copy
import os
import pathlib
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft7Validator

from relay.api.asyncapi import document
from relay.events import EVENTS, EventBus
from relay.web.auth import make_token
from shared import protocol
from shared.errors import ProtocolError

from ..conftest import SECRET, Api, FakeAgent, wait_until

ROOT = pathlib.Path(__file__).resolve().parents[3]
SPEC_SCHEMA = pathlib.Path(os.environ.get(
    "MC_ASYNCAPI_SCHEMA", ROOT / ".cache/asyncapi-specs/package/schemas/3.0.0-without-$id.json"))  # fmt: skip
DOC = document("0.1.0")
MESSAGES = DOC["components"]["messages"]


def _payload(name: str) -> Draft7Validator:
    return Draft7Validator(MESSAGES[name]["payload"])


def _spec_validator() -> Draft7Validator:
    if not SPEC_SCHEMA.is_file():
        if os.environ.get("MC_REQUIRE_SERVICES") == "1":
            pytest.fail(f"the AsyncAPI 3.0.0 JSON Schema is not at {SPEC_SCHEMA} (`make test` unpacks it when npm is there)")
        pytest.skip(f"no AsyncAPI 3.0.0 JSON Schema at {SPEC_SCHEMA} (`make test` unpacks @asyncapi/specs there; npm was not found)")
    return Draft7Validator(orjson.loads(SPEC_SCHEMA.read_bytes()))


def test_the_document_is_valid_asyncapi_3() -> None:
    validator = _spec_validator()
    assert [e.message for e in validator.iter_errors(DOC)] == []
    broken = copy.deepcopy(DOC)  # the validator can fail: an operation on a channel that is not there
    broken["operations"]["sendEvents"]["action"] = "publish"  # AsyncAPI 2's word, not 3's
    assert list(validator.iter_errors(broken)) != []


def test_every_message_and_event_is_described() -> None:
    channels = DOC["channels"]
    assert set(channels["events"]["messages"]) == set(EVENTS)
    assert set(channels["agent"]["messages"]) == {*protocol.MESSAGES, "job.chunk"}
    sent = {ref["$ref"].rsplit("/", 1)[1] for ref in DOC["operations"]["receiveFromAgent"]["messages"]}
    assert sent == {t for t, (who, _) in protocol.MESSAGES.items() if who == protocol.AGENT} | {"job.chunk"}
    assert {c["address"] for c in channels.values()} == {"/api/v1/events", "/api/v1/agent/connect"}


async def test_the_relay_serves_it(client: Any) -> None:
    resp = await client.get("/api/v1/asyncapi.json")
    assert resp.status == 200 and resp.content_type == "application/json"
    served = await resp.json()
    assert served["asyncapi"] == "3.0.0" and served["channels"] == orjson.loads(orjson.dumps(DOC["channels"]))


# ------------------------------------------------------------ differential
_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.sampled_from([0, 1, 256, 257, 1_000_000]),
    st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer()),
    st.text(max_size=8), st.sampled_from(["x" * 64, "x" * 65, "succeeded", "failed", "INFO", "query"]),
)
_JSON = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["name", "type", "jobId", "attempt", "code",
                                                                  "message", "retryable", "x"]), inner, max_size=4)),
    max_leaves=8)  # fmt: skip


def _valid(spec: protocol.F) -> st.SearchStrategy[Any]:
    """Values ``spec`` accepts, edges included."""
    if spec.choices:
        base: st.SearchStrategy[Any] = st.sampled_from(spec.choices)
    elif spec.kind == "str":
        top = spec.max_len if spec.max_len is not None else 20
        base = st.one_of(st.text(max_size=min(top, 12)), st.just("x" * top))
    elif spec.kind in ("int", "num"):
        lo = int(spec.lo) if spec.lo is not None else -(2**40)
        hi = int(spec.hi) if spec.hi is not None else 2**40
        base = st.one_of(st.integers(lo, hi), st.sampled_from([lo, hi]))
        if spec.kind == "num":
            base = st.one_of(base, st.floats(float(lo), float(hi)))
    elif spec.kind == "bool":
        base = st.booleans()
    elif spec.kind == "list":
        item = spec.item
        items = (_object(item.fields) if isinstance(item, protocol.ObjectOf) else
                 _valid(item.spec) if isinstance(item, protocol.ItemOf) else _JSON)  # fmt: skip
        base = st.lists(items, max_size=min(spec.max_len or 3, 3))
    elif spec.kind == "obj":
        base = _object(protocol.JOB_ERROR)  # the one free object (job.done's error) has this shape
    else:
        base = _JSON
    return st.one_of(base, st.none()) if spec.nullable else base


def _wrong(spec: protocol.F) -> st.SearchStrategy[Any]:
    """Values just past ``spec``'s edges, or any JSON value at all."""
    edges: list[Any] = [None, True, "1", 1.5]
    if spec.max_len is not None:
        edges += ["x" * (spec.max_len + 1), [None] * (spec.max_len + 1)]
    if spec.lo is not None:
        edges.append(spec.lo - 1)
    if spec.hi is not None:
        edges.append(spec.hi + 1)
    return st.one_of(st.sampled_from(edges), _JSON)


@st.composite
def _object(draw: st.DrawFn, fields: Any, wrong: int = 0) -> dict[str, Any]:
    """An object with ``fields``: each valid, or (1 in ``wrong``) left out or wrong."""
    out: dict[str, Any] = {}
    for name, spec in fields.items():
        roll = draw(st.integers(0, wrong * 2)) if wrong else 1
        if roll == 0:
            continue  # left out
        out[name] = draw(_wrong(spec) if roll == 1 and wrong else _valid(spec))
    if draw(st.booleans()):
        out["somethingNew"] = draw(_JSON)  # unknown fields are ignored by both
    return out


def _near(fields: dict[str, protocol.F]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects for ``fields``: about half valid, the rest with a field missing or wrong."""
    return st.one_of(_object(fields), _object(fields, wrong=2 * len(fields)), _object(fields, wrong=3))


SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


def _agrees(objects: st.SearchStrategy[dict[str, Any]], schema: Draft7Validator,
            accept: Callable[[dict[str, Any]], object]) -> None:
    """``accept`` (the code's validation) passes an object exactly when ``schema`` calls
    it valid, and both outcomes were seen."""
    outcomes: set[bool] = set()

    @SETTINGS
    @given(objects)
    def check(obj: dict[str, Any]) -> None:
        try:
            accept(copy.deepcopy(obj))
            accepted = True
        except ProtocolError:
            accepted = False
        outcomes.add(accepted)
        assert accepted == schema.is_valid(obj), (obj, [e.message for e in schema.iter_errors(obj)])

    check()
    assert outcomes == {True, False}  # both sides of the line were tried


@pytest.mark.parametrize("type_", sorted(protocol.MESSAGES))
def test_a_message_is_valid_exactly_when_the_document_says(type_: str) -> None:
    sender, fields = protocol.MESSAGES[type_]
    frames = _near(fields).map(lambda body: {"type": type_, **body})
    _agrees(frames, _payload(type_), lambda frame: protocol.validate_text(frame, sender=sender))


@pytest.mark.parametrize("type_", sorted(EVENTS))
def test_an_event_is_published_exactly_when_the_document_says(type_: str) -> None:
    bus = EventBus(strict=True)
    # publish refuses fields the table lacks (that would be a bug of ours, not a client's)
    datas = _near(EVENTS[type_]).map(lambda d: {k: v for k, v in d.items() if k != "somethingNew"})
    _agrees(datas, Draft7Validator(MESSAGES[type_]["payload"]["properties"]["data"]),
            lambda data: bus.publish("t1", type_, data))


def test_an_event_off_its_schema_is_logged_and_still_sent(caplog: pytest.LogCaptureFixture) -> None:
    """Outside the tests the bus does not raise after the change an event announces was
    committed: the mismatch is logged at ERROR and the event still reaches subscribers."""
    bus = EventBus()
    q = bus.subscribe("t1")
    with caplog.at_level("ERROR", logger="relay.events"):
        bus.publish("t1", "job_started", {"jobId": "job_1", "connectorId": 7, "extra": 1})
    assert q.get_nowait()["data"] == {"jobId": "job_1", "connectorId": 7, "extra": 1}
    assert any("job_started does not match" in r.getMessage() for r in caplog.records)
    with pytest.raises(ProtocolError):
        EventBus(strict=True).publish("t1", "job_started", {"jobId": "job_1", "connectorId": 7})


# ------------------------------------------------------------ real traffic
async def test_a_job_run_matches_the_document(client: Any, api: Api) -> None:
    """Every event and every relay message of a job's run, as the relay sent them."""
    events_ws = await client.ws_connect(f"/api/v1/events?token={make_token(SECRET, 't1', 'service', 60)}")
    con = await api.new_connector()
    agent = await FakeAgent(client, con["apiKey"]).connect()
    seen: list[tuple[str, dict[str, Any]]] = []
    job_id = await api.submit(con["id"], "SELECT 1")
    assign = await agent.expect("job.assign.v1", jobId=job_id)
    await agent.start(assign, ["n"])
    await agent.chunk(assign, 0, [[1]])
    await agent.done(assign, chunks=1, rows=1)

    async def succeeded() -> bool:
        return (await api.job(job_id))["status"] == "succeeded"

    await wait_until(succeeded)
    doomed = await api.submit(con["id"], "SELECT 2")
    assign2 = await agent.expect("job.assign.v1", jobId=doomed)
    await api.call("POST", f"/jobs/{doomed}/cancel", expect=200)
    cancel = await agent.expect("job.cancel.v1", jobId=doomed)
    assert assign2 and cancel
    await agent.close()
    seen += [(frame["type"], frame) for frame in agent.frames]
    kinds: set[str] = set()
    while kinds != set(EVENTS):
        msg = await events_ws.receive_json(timeout=10)
        kinds.add(msg["type"])
        seen.append((msg["type"], msg))
    await events_ws.close()
    for name, frame in seen:
        errors = [e.message for e in _payload(name).iter_errors(frame)]
        assert errors == [], (name, frame, errors)
    assert {n for n, _ in seen} >= {"relay.welcome.v1", "job.assign.v1", "job.cancel.v1", *EVENTS}
