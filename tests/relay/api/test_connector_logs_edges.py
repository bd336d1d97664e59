"""Connector logs at their edges: characters a store cannot hold, retention, paging."""

from __future__ import annotations

from typing import Any

from tests.relay.conftest import Api, FakeAgent, wait_until


async def test_a_nul_character_in_a_line_loses_no_line_on_postgresql(start_relay: Any, pg_database: str) -> None:
    """PostgreSQL's text cannot hold U+0000: a line carrying one (a driver's error text, a
    binary value in a message) is stored with it replaced, and the lines shipped with it in
    the same batch are stored too, not lost with the batch."""
    client = await start_relay(database_url=pg_database)
    api = Api(client)
    con = await api.new_connector()
    agent = await FakeAgent(client, con["apiKey"]).connect()
    try:
        at = "2026-12-04T10:00:00.000Z"
        await agent.send("agent.logs.v1", lines=[
            {"timestamp": at, "level": "INFO", "message": "before", "id": 1},
            {"timestamp": at, "level": "ERROR", "message": "bad \x00 byte", "logger": "agent.\x00x", "id": 2},
            {"timestamp": at, "level": "INFO", "message": "after", "id": 3},
        ])  # fmt: skip

        async def stored() -> list[dict[str, Any]]:
            _, body, _ = await api.call("GET", f"/connectors/{con['id']}/logs", expect=200)
            return body["data"]["logs"] if len(body["data"]["logs"]) == 3 else []

        logs = await wait_until(stored, what="three lines stored", interval=0.1)
        assert [x["message"] for x in logs] == ["before", "bad \ufffd byte", "after"]
        assert logs[1]["logger"] == "agent.\ufffdx"
    finally:
        await agent.close()


async def test_log_query_times_every_spelling(api: Api, agent: FakeAgent) -> None:
    """``since``/``until`` are RFC 3339 with an offset (``Z``, ``z``, ``+05:30`` encoded
    as ``%2B``, ``-00:00``), ``until`` before ``since`` matching nothing; a date alone, no
    offset, epoch seconds, an impossible date, too many fraction digits are 422 naming the
    field, and an unencoded ``+`` (a space) is named in the message."""
    cid = agent.connector_id
    await agent.send("agent.logs.v1", lines=[
        {"timestamp": "2026-12-04T10:00:00.000Z", "level": "INFO", "message": "at ten", "id": 1}])

    async def stored() -> bool:
        _, body, _ = await api.call("GET", f"/connectors/{cid}/logs", expect=200)
        return bool(body["data"]["logs"])

    await wait_until(stored, what="the line stored", interval=0.1)
    for q, n in [("since=2026-12-04T10:00:00Z", 1), ("since=2026-12-04t10:00:00.001z", 0),
                 ("since=2026-12-04T15:30:00%2B05:30", 1), ("since=2026-12-04T10:00:00-00:00", 1),
                 ("until=2026-12-04T09:59:59.999Z", 0),
                 ("since=2026-12-04T10:00:00Z&until=2026-12-04T10:00:00Z", 1),
                 ("since=2026-12-04T10:00:00Z&until=2026-12-04T09:00:00Z", 0)]:  # fmt: skip
        _, body, _ = await api.call("GET", f"/connectors/{cid}/logs?{q}", expect=200)
        assert len(body["data"]["logs"]) == n, q
    for q, field in [("since=2026-12-04", "since"), ("since=2026-12-04T10:00:00", "since"),
                     ("until=1733306400", "until"), ("since=2026-02-30T10:00:00Z", "since"),
                     ("since=2026-12-04T10:00:00.1234567890Z", "since"), ("until=soon", "until")]:  # fmt: skip
        status, body, _ = await api.call("GET", f"/connectors/{cid}/logs?{q}")
        assert status == 422, (q, body)
        assert body["error"]["code"] == "VALIDATION_ERROR" and body["error"]["details"]["field"] == field, q
    # an offset's "+" left unencoded arrives as a space: the error says so
    status, body, _ = await api.call("GET", f"/connectors/{cid}/logs?since=2026-12-04T15:30:00+05:30")
    assert status == 422 and "%2B" in body["error"]["message"]


async def test_a_line_stamped_before_the_year_1000_reads_back_as_rfc_3339(api: Api, agent: FakeAgent) -> None:
    """An agent's clock is its own (the relay clamps only the future): a line stamped in
    the year 500 reads back with a four-digit year, as RFC 3339 (and the spec's
    ``format: date-time``) requires, and a ``since`` that old finds it."""
    cid = agent.connector_id
    await agent.send("agent.logs.v1", lines=[
        {"timestamp": "0500-01-02T03:04:05.678Z", "level": "INFO", "message": "old clock", "id": 1}])

    async def stored() -> list[dict[str, Any]]:
        _, body, _ = await api.call("GET", f"/connectors/{cid}/logs?since=0500-01-01T00:00:00Z", expect=200)
        return body["data"]["logs"]

    [line] = await wait_until(stored, what="the line stored", interval=0.1)
    assert line["timestamp"] == "0500-01-02T03:04:05.678Z"


def test_a_log_retention_below_one_line_is_refused_at_start() -> None:
    """``MC_RELAY_LOG_RETENTION`` is how many lines a connector keeps: a negative count made
    every log batch fail in the store (a negative OFFSET), 0 kept nothing; both are a
    configuration error named at start, like the relay's other bad values."""
    import pytest

    from relay.config import ConfigError, RelayConfig

    assert RelayConfig.from_env({"MC_RELAY_LOG_RETENTION": "1"}).log_retention_lines == 1
    for raw in ("-5", "0"):
        with pytest.raises(ConfigError, match="MC_RELAY_LOG_RETENTION"):
            RelayConfig.from_env({"MC_RELAY_LOG_RETENTION": raw})


async def test_a_nul_in_an_id_or_job_filter_is_a_clear_error_on_postgresql(start_relay: Any, pg_database: str) -> None:
    """PostgreSQL refuses U+0000 in a query parameter: a connector id or ``jobId`` carrying
    one must be answered as any other id that cannot exist (404, 422 for the filter), not
    reach the store and come back as a 500."""
    client = await start_relay(database_url=pg_database)
    api = Api(client)
    con = await api.new_connector()
    for path in ("/connectors/con_%00x/logs", "/connectors/con_%00x/metrics"):
        status, body, _ = await api.call("GET", path)
        assert status == 404 and body["error"]["code"] == "NOT_FOUND", (path, body)
    _, body, _ = await api.call("GET", f"/connectors/{con['id']}/logs?jobId=job_%00x", expect=200)
    assert body["data"]["logs"] == [] and body["data"]["nextCursor"] is None
    # every other route with an id, and the jobs filter (these were 500s too)
    for method, path in (("GET", "/connectors/con_%00x"), ("PATCH", "/connectors/con_%00x"),
                         ("DELETE", "/connectors/con_%00x"), ("POST", "/connectors/con_%00x/rotate-key"),
                         ("GET", "/jobs/job_%00x"), ("GET", "/jobs/job_%00x/results"),
                         ("POST", "/jobs/job_%00x/cancel")):  # fmt: skip
        status, body, _ = await api.call(method, path, json={"name": "x"} if method == "PATCH" else None)
        assert status == 404 and body["error"]["code"] == "NOT_FOUND", (method, path, body)
    _, body, _ = await api.call("GET", "/jobs?connectorId=con_%00x", expect=200)
    assert body["data"] == [] and body["meta"]["total"] == 0
    # ... and in a job's body: the connector and source as ones that do not exist, the jobKey 422
    job = {"connectorId": con["id"], "source": "erp", "query": {"sql": "SELECT 1"}}
    for change, status, code in (({"connectorId": "con_\x00x"}, 404, "NOT_FOUND"),
                                 ({"source": "erp\x00"}, 422, "SOURCE_NOT_FOUND"),
                                 ({"options": {"jobKey": "k\x00"}}, 422, "VALIDATION_ERROR")):  # fmt: skip
        got, body, _ = await api.call("POST", "/jobs", json={**job, **change})
        assert (got, body["error"]["code"]) == (status, code), (change, body)
