"""Results as an outside client meets them: HEAD, HTTP/1.0, a client that hangs up,
concurrent readers, bad parameters, awkward CSV cells, jobs that did not succeed, and a
chunk crafted past intake's cheap row count.

Hang-up tests run the app the way ``mini-relay serve`` does (``EnvelopeAppRunner`` on a
TCP site): aiohttp's test server cancels a handler when its client disconnects, the
production server does not, so only this shows what a real relay does with a reader
that left."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from relay.app import create_app
from relay.config import RelayConfig
from relay.context import RELAY, Relay
from relay.web.httpserver import EnvelopeAppRunner
from shared import protocol
from shared.rows import encode_objects
from tests.relay.conftest import TIMEOUT, Api, FakeAgent, relay_of, wait_until


async def _running_job(api: Api, agent: FakeAgent, columns: list[str]) -> tuple[str, protocol.Message]:
    job_id = await api.submit(agent.connector_id or "")
    assign = await agent.expect("job.assign.v1", jobId=job_id)
    await agent.start(assign, columns)
    return job_id, assign


async def _raw_request(host: str, port: int, lines: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(lines.encode())
    await writer.drain()
    return reader, writer


def _request(method: str, path: str, api: Api) -> str:
    headers = "".join(f"{k}: {v}\r\n" for k, v in api.headers().items())
    return f"{method} /api/v1{path} HTTP/1.1\r\nHost: relay\r\n{headers}\r\n"


async def _watched_by(relay: Relay, job_id: str, present: bool) -> bool:
    return (job_id in relay.notifier.watched()) == present


# ---------------------------------------------------------------- HEAD


async def test_head_answers_the_headers_alone_and_leaves_the_connection_usable(
    api: Api, agent: FakeAgent, client: Any
) -> None:
    """HEAD of a running job's results answers its headers at once and nothing else: no
    row follows on the connection (the next response on it starts with its status line)
    and nothing keeps following the job. Once it sent the rows after the headers, so the
    next response on a keep-alive connection began with ``{"n":1}``."""
    relay = relay_of(client)
    job_id, assign = await _running_job(api, agent, ["n"])
    reader, writer = await _raw_request(client.host, client.port, _request("HEAD", f"/jobs/{job_id}/results", api))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert head.startswith(b"HTTP/1.1 200") and b"application/x-ndjson" in head
    assert b"Transfer-Encoding" not in head
    await wait_until(lambda: _watched_by(relay, job_id, False), what="HEAD stopped following the job")
    await agent.chunk(assign, 0, [[1]])
    await agent.done(assign, 1, 1)
    writer.write(_request("GET", f"/jobs/{job_id}", api).encode())
    await writer.drain()
    nxt = await asyncio.wait_for(reader.readuntil(b"\r\n"), TIMEOUT)
    assert nxt.startswith(b"HTTP/1.1 200"), nxt
    writer.close()


async def test_head_does_not_wait_for_a_job_that_has_not_started(api: Api, agent: FakeAgent, client: Any) -> None:
    """HEAD of a job the agent has not started answers at once (a GET waits for the
    columns); roles and tenants are checked as for GET."""
    job_id = await api.submit(agent.connector_id or "")
    await agent.expect("job.assign.v1", jobId=job_id)
    url = f"/api/v1/jobs/{job_id}/results"
    resp = await asyncio.wait_for(client.head(url, headers=api.headers()), TIMEOUT)
    assert resp.status == 200 and resp.content_type == "application/x-ndjson"
    assert "X-Result-Truncated" not in resp.headers
    resp = await client.head(url + "?format=csv", headers=api.as_("service").headers())
    assert resp.status == 200 and resp.content_type == "text/csv"
    assert (await client.head(url, headers=api.as_("support").headers())).status == 403
    assert (await client.head(url, headers=api.as_("admin", "t2").headers())).status == 404
    assert (await client.head(url + "?offset=x", headers=api.as_("service").headers())).status == 422


async def test_an_http10_request_gets_a_clear_400_not_a_500(
    api: Api, agent: FakeAgent, client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Rows stream chunked, which HTTP/1.0 (nginx's default proxy_http_version) lacks: the
    answer is 400 BAD_REQUEST saying so, not a 500 with a RuntimeError logged."""
    job_id, assign = await _running_job(api, agent, ["n"])
    await agent.chunk(assign, 0, [[1]])
    await agent.done(assign, 1, 1)
    caplog.set_level(logging.WARNING)
    request = _request("GET", f"/jobs/{job_id}/results", api).replace("HTTP/1.1", "HTTP/1.0", 1)
    reader, writer = await _raw_request(client.host, client.port, request)
    answer = await asyncio.wait_for(reader.read(), TIMEOUT)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 400"), answer
    error = json.loads(body)["error"]
    assert error["code"] == "BAD_REQUEST" and "HTTP/1.1" in error["message"]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


# ---------------------------------------------------------------- a client that hangs up


@pytest.fixture
async def served(make_config: Callable[..., RelayConfig]) -> AsyncIterator[tuple[Relay, aiohttp.ClientSession, int]]:
    """The relay app served as ``mini-relay serve`` serves it, and a client session."""
    app = create_app(make_config())
    app[RELAY].events.strict = True
    runner = EnvelopeAppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    session = aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}")
    try:
        yield app[RELAY], session, port
    finally:
        await session.close()
        await runner.cleanup()


async def test_a_reader_that_hangs_up_before_the_job_starts_is_dropped_quietly(
    served: tuple[Relay, aiohttp.ClientSession, int], caplog: pytest.LogCaptureFixture
) -> None:
    """A client waiting for a job that has not started, and giving up, is let go within a
    poll interval: the relay stops polling the store for it (once it did so until the
    job started, hours for an offline connector) and logs no error when the job starts
    (once an ERROR with a ClientConnectionResetError stack trace)."""
    relay, session, port = served
    api = Api(session)
    agent = await FakeAgent(session, (await api.new_connector())["apiKey"]).connect()
    job_id = await api.submit(agent.connector_id or "")
    assign = await agent.expect("job.assign.v1", jobId=job_id)
    caplog.set_level(logging.WARNING)
    _, writer = await _raw_request("127.0.0.1", port, _request("GET", f"/jobs/{job_id}/results", api))
    await wait_until(lambda: _watched_by(relay, job_id, True), what="the reader waiting for the job")
    writer.transport.abort()
    await wait_until(lambda: _watched_by(relay, job_id, False), what="the relay letting the reader go")
    await agent.start(assign, ["n"])
    await agent.chunk(assign, 0, [[1]])
    await agent.done(assign, 1, 1)
    _, text, _ = await api.call("GET", f"/jobs/{job_id}/results", expect=200)
    assert text == '{"n":1}\n'
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    await agent.close()


async def test_a_reader_that_hangs_up_mid_stream_is_let_go_before_the_next_chunk(
    served: tuple[Relay, aiohttp.ClientSession, int], caplog: pytest.LogCaptureFixture
) -> None:
    """A live reader that disconnects between chunks is let go while the job runs on
    (once only when the next chunk failed to reach it), and the job's next reader is
    served as usual."""
    relay, session, port = served
    api = Api(session)
    agent = await FakeAgent(session, (await api.new_connector())["apiKey"]).connect()
    job_id, assign = await _running_job(api, agent, ["n"])
    caplog.set_level(logging.WARNING)
    reader, writer = await _raw_request("127.0.0.1", port, _request("GET", f"/jobs/{job_id}/results", api))
    await agent.chunk(assign, 0, [[1]])
    await asyncio.wait_for(reader.readuntil(b'{"n":1}\n'), TIMEOUT)
    writer.transport.abort()
    await wait_until(lambda: _watched_by(relay, job_id, False), what="the relay letting the gone reader go")
    other = await session.get(f"/api/v1/jobs/{job_id}/results", headers=api.headers())
    assert json.loads(await asyncio.wait_for(other.content.readline(), TIMEOUT)) == {"n": 1}
    await agent.chunk(assign, 1, [[2]])
    await agent.done(assign, 2, 2)
    assert await asyncio.wait_for(other.content.read(), TIMEOUT) == b'{"n":2}\n'
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    await agent.close()


# ---------------------------------------------------------------- readers and offsets


async def test_concurrent_readers_with_offsets_follow_a_running_job(
    api: Api, agent: FakeAgent, client: Any
) -> None:
    """Three readers of one running job (NDJSON from 0, NDJSON from an offset inside a
    later chunk, CSV from an offset) each get exactly their rows, once, as they arrive."""
    job_id, assign = await _running_job(api, agent, ["n"])
    url = f"/api/v1/jobs/{job_id}/results"
    whole = await client.get(url, headers=api.headers())
    late = await client.get(url + "?offset=3", headers=api.headers())
    as_csv = await client.get(url + "?format=csv&offset=2", headers=api.headers())
    await agent.chunk(assign, 0, [[1], [2]])
    assert json.loads(await asyncio.wait_for(whole.content.readline(), TIMEOUT)) == {"n": 1}
    await agent.chunk(assign, 1, [[3], [4]])
    await agent.chunk(assign, 2, [[5]])
    await agent.done(assign, 3, 5)
    rest = await asyncio.wait_for(whole.content.read(), TIMEOUT)
    assert [json.loads(x)["n"] for x in rest.splitlines()] == [2, 3, 4, 5]
    assert [json.loads(x)["n"] for x in (await asyncio.wait_for(late.read(), TIMEOUT)).splitlines()] == [4, 5]
    assert (await asyncio.wait_for(as_csv.read(), TIMEOUT)).decode() == "n\r\n3\r\n4\r\n5\r\n"
    _, text, _ = await api.call("GET", f"/jobs/{job_id}/results?offset=5", expect=200)
    assert text == ""
    _, text, _ = await api.call("GET", f"/jobs/{job_id}/results?format=csv&offset=1000000000000000", expect=200)
    assert text == "n\r\n"


@pytest.mark.parametrize(
    ("query", "field"),
    [("offset=abc", "offset"), ("offset=1e3", "offset"), ("offset=-1", "offset"), ("offset=1.0", "offset"),
     ("offset=%2B1", "offset"), ("offset=%EF%BC%91", "offset"), ("offset=99999999999999999999", "offset"),
     ("offset=1000000000000001", "offset"), ("offset=1&offset=2", "offset"), ("offset=", "offset"),
     ("format=xml", "format"), ("format=CSV", "format"), ("format=csv&format=ndjson", "format"),
     ("csvFormulas=RAW", "csvFormulas")],
)
async def test_a_bad_parameter_is_422_naming_it(api: Api, agent: FakeAgent, query: str, field: str) -> None:
    job_id, _ = await _running_job(api, agent, ["n"])
    status, body, _ = await api.call("GET", f"/jobs/{job_id}/results?{query}")
    assert status == 422, body
    assert body["error"]["code"] == "VALIDATION_ERROR" and body["error"]["details"]["field"] == field


# ---------------------------------------------------------------- CSV cells


@pytest.mark.parametrize("objects", [False, True], ids=["array-chunk", "object-lines"])
async def test_csv_cells_round_trip_and_formulas_are_neutralised(
    api: Api, agent: FakeAgent, client: Any, objects: bool
) -> None:
    """Whatever the chunk form: quotes, commas, newlines and astral characters survive a
    CSV reader; nested values are JSON; a formula start gets a leading ' but a plain
    number in text ("-1", "+1.5", "-1e5") does not; csvFormulas=raw leaves cells as sent."""
    cols = ["=name", "b", "c", "d"]
    rows = [["=1+1", "+1.5", "-1", "@SUM(A1)"], ["-", "line1\nline2", 'say "hi", twice', "\ttab"],
            ["😀𝄞", "", None, True], [[1, {"a": "=x"}], {"k": "v,w"}, -5, 1.5], ["-1e5", "-0x1A", "'x", False]]
    job_id = await api.submit(agent.connector_id or "")
    assign = await agent.expect("job.assign.v1", jobId=job_id)
    await agent.start(assign, cols)
    if objects:
        payload = encode_objects(cols, rows)
        await agent.send_raw(protocol.encode_chunk(protocol.Chunk(job_id, assign["attempt"], 0, len(rows), payload)))
        await agent.expect("job.chunk.ack.v1", jobId=job_id, seq=0)
    else:
        await agent.chunk(assign, 0, rows)
    await agent.done(assign, 1, len(rows))
    _, text, resp = await api.call("GET", f"/jobs/{job_id}/results?format=csv", expect=200)
    assert resp.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert list(csv.reader(io.StringIO(text, newline=""))) == [
        ["'=name", "b", "c", "d"],
        ["'=1+1", "+1.5", "-1", "'@SUM(A1)"],
        ["'-", "line1\nline2", 'say "hi", twice', "'\ttab"],
        ["😀𝄞", "", "", "true"],
        ['[1,{"a":"=x"}]', '{"k":"v,w"}', "-5", "1.5"],
        ["-1e5", "'-0x1A", "'x", "false"],
    ]
    _, raw, _ = await api.call("GET", f"/jobs/{job_id}/results?format=csv&csvFormulas=raw", expect=200)
    parsed = list(csv.reader(io.StringIO(raw, newline="")))
    assert parsed[0][0] == "=name" and parsed[1] == ["=1+1", "+1.5", "-1", "@SUM(A1)"]
    _, nd, _ = await api.call("GET", f"/jobs/{job_id}/results", expect=200)
    assert json.loads(nd.splitlines()[2]) == {"=name": "😀𝄞", "b": "", "c": None, "d": True}


# ---------------------------------------------------------------- jobs that did not succeed


async def test_a_cancelled_job_serves_its_rows_then_cuts_and_one_cancelled_unstarted_is_409(
    api: Api, agent: FakeAgent, client: Any
) -> None:
    """Read after a cancel, a job's stored rows come and then the response is cut (never a
    clean end that looks whole); a job cancelled before its first row is 409 CANCELLED,
    for HEAD too."""
    job_id, assign = await _running_job(api, agent, ["n"])
    await agent.chunk(assign, 0, [[1], [2]])
    await api.call("POST", f"/jobs/{job_id}/cancel", expect=200)
    resp = await client.get(f"/api/v1/jobs/{job_id}/results?offset=1", headers=api.headers())
    assert resp.status == 200
    assert json.loads(await asyncio.wait_for(resp.content.readline(), TIMEOUT)) == {"n": 2}
    with pytest.raises(aiohttp.ClientPayloadError):
        await asyncio.wait_for(resp.content.read(), TIMEOUT)

    queued = await api.submit(agent.connector_id or "")
    await agent.expect("job.assign.v1", jobId=queued)
    await api.call("POST", f"/jobs/{queued}/cancel", expect=200)
    status, body, _ = await api.call("GET", f"/jobs/{queued}/results")
    assert status == 409 and body["error"]["code"] == "CANCELLED"
    assert (await client.head(f"/api/v1/jobs/{queued}/results", headers=api.headers())).status == 409


async def _bad_chunk_cuts_every_reader(
    api: Api, agent: FakeAgent, client: Any, columns: list[str], payload: bytes, rows: int
) -> None:
    """A job whose one chunk is ``payload`` (declared ``rows`` rows, acked by intake): its
    NDJSON and CSV responses both begin 200 and are then cut."""
    job_id, assign = await _running_job(api, agent, columns)
    await agent.send_raw(protocol.encode_chunk(protocol.Chunk(job_id, assign["attempt"], 0, rows, payload)))
    await agent.expect("job.chunk.ack.v1", jobId=job_id, seq=0)
    await agent.done(assign, 1, rows)
    for query in ("", "?format=csv"):
        resp = await client.get(f"/api/v1/jobs/{job_id}/results{query}", headers=api.headers())
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(resp.read(), TIMEOUT)


async def test_a_chunk_whose_rows_are_not_arrays_is_cut_without_a_stack_trace(
    api: Api, agent: FakeAgent, client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A payload crafted to pass intake's cheap row count (``],[`` inside a string) with
    rows that are not arrays: every reader's response is cut as for any bad chunk (never
    a row zipped out of a string's characters, never a TypeError in the relay's log)."""
    caplog.set_level(logging.WARNING)
    # four "rows" by the separator count, and by len()
    await _bad_chunk_cuts_every_reader(api, agent, client, ["n"], b'[[1],5,"a],[b],[c],[d",[2]]', 4)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_a_chunk_whose_rows_have_the_wrong_width_is_cut(
    api: Api, agent: FakeAgent, client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Array rows with fewer or more values than the job has columns (a rogue agent): the
    responses are cut, never objects missing a column or CSV rows of another width."""
    caplog.set_level(logging.WARNING)
    for payload in (b'[[1,2],[3]]', b'[[1,2],[3,4,5]]'):
        await _bad_chunk_cuts_every_reader(api, agent, client, ["a", "b"], payload, 2)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
