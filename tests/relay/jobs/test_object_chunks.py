"""Object-line chunks through a real relay: served verbatim as NDJSON, parsed for CSV,
offset inside a chunk, mixed with array chunks, malformed ones refused at intake."""

from __future__ import annotations

import csv
import io
import json
import math
from decimal import Decimal
from typing import Any

import orjson
import pytest

from relay import atrest
from relay.store import chunks as chunk_store
from shared import protocol, zstdframes
from shared.rows import encode_objects, encode_rows
from tests.relay.conftest import Api, FakeAgent, relay_of

NAMES = ["id", "name", "amount", "meta", "score"]
ROWS: list[list[Any]] = [
    [1, "a,b", Decimal("1.50"), {"k": [1]}, 1.5],
    [2, None, Decimal("12345678901234567890.000001"), [{"id": 9}, {"id": 10}], float("nan")],
    [3, 'say "hi"\n\\ é 漢字 😀', Decimal("-0.10"), '},{"id":', float("inf")],
    [4, "\t\r\x01", Decimal("NaN"), {"id": {"id": 1}}, 2.0],
]
# What a platform reader must see for ROWS: one object per row, keys in column order.
EXPECTED = [
    {"id": 1, "name": "a,b", "amount": "1.50", "meta": {"k": [1]}, "score": 1.5},
    {
        "id": 2,
        "name": None,
        "amount": "12345678901234567890.000001",
        "meta": [{"id": 9}, {"id": 10}],
        "score": None,
    },
    {
        "id": 3,
        "name": 'say "hi"\n\\ é 漢字 😀',
        "amount": "-0.10",
        "meta": '},{"id":',
        "score": None,
    },
    {"id": 4, "name": "\t\r\x01", "amount": None, "meta": {"id": {"id": 1}}, "score": 2.0},
]


async def _send(agent: FakeAgent, assign: protocol.Message, seq: int, payload: bytes, rows: int, *,
                ack: bool = True) -> None:  # fmt: skip
    frame = protocol.encode_chunk(
        protocol.Chunk(assign["jobId"], assign["attempt"], seq, rows, payload)
    )
    await agent.send_raw(frame)
    if ack:
        await agent.expect("job.chunk.ack.v1", jobId=assign["jobId"], seq=seq)


async def _job(api: Api, agent: FakeAgent, names: list[str]) -> protocol.Message:
    job_id = await api.submit(agent.connector_id or "")
    assign = await agent.expect("job.assign.v1", jobId=job_id)
    await agent.start(assign, names)
    return assign


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


async def test_object_lines_served_verbatim_and_as_csv(api: Api, agent: FakeAgent) -> None:
    """Object-line chunks come back byte for byte as NDJSON; CSV parses them in column order."""
    assign = await _job(api, agent, NAMES)
    first, second = encode_objects(NAMES, ROWS[:3]), encode_objects(NAMES, ROWS[3:])
    assert first.startswith(b'{"id":1,') and first.count(b"\n") == 3
    await _send(agent, assign, 0, first, 3)
    await _send(agent, assign, 1, second, 1)
    await agent.done(assign, 2, 4)
    job_id = assign["jobId"]
    status, text, _ = await api.call("GET", f"/jobs/{job_id}/results")
    assert status == 200 and text.encode() == first + second
    got = _lines(text)
    assert [list(r) for r in got] == [NAMES] * 4
    assert got[:1] + got[2:] == EXPECTED[:1] + EXPECTED[2:]
    assert got[1]["score"] is None and got[1]["amount"] == EXPECTED[1]["amount"]
    _, text, _ = await api.call("GET", f"/jobs/{job_id}/results?offset=2")  # inside chunk 0
    assert _lines(text) == EXPECTED[2:]
    _, text, _ = await api.call("GET", f"/jobs/{job_id}/results?offset=3")  # chunk 1 exactly
    assert _lines(text) == EXPECTED[3:]
    _, text, _ = await api.call("GET", f"/jobs/{job_id}/results?offset=4")
    assert text == ""
    # Raw cells (columns typed string here: neutralised "-0.10" would read "'-0.10").
    status, text, resp = await api.call("GET", f"/jobs/{job_id}/results?format=csv&offset=1&csvFormulas=raw")
    assert status == 200 and resp.content_type == "text/csv"
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == NAMES
    assert rows[1] == ["2", "", "12345678901234567890.000001", '[{"id":9},{"id":10}]', ""]
    assert rows[2] == ["3", 'say "hi"\n\\ é 漢字 😀', "-0.10", '},{"id":', ""]
    assert rows[3] == ["4", "\t\r\x01", "", '{"id":{"id":1}}', "2.0"]


async def test_array_and_object_chunks_of_one_job_read_the_same(api: Api, agent: FakeAgent) -> None:
    """An agent that sends arrays keeps working, even mixed with object lines in one job."""
    assign = await _job(api, agent, NAMES)
    await _send(agent, assign, 0, encode_rows(ROWS[:2]), 2)
    await _send(agent, assign, 1, encode_objects(NAMES, ROWS[2:]), 2)
    await _send(agent, assign, 2, b"", 0)  # an empty payload holds no rows
    await agent.done(assign, 3, 4)
    _, text, _ = await api.call("GET", f"/jobs/{assign['jobId']}/results")
    got = _lines(text)
    assert got[0] == EXPECTED[0] and got[2:] == EXPECTED[2:] and got[1]["score"] is None
    _, text, _ = await api.call("GET", f"/jobs/{assign['jobId']}/results?offset=1")
    assert [r["id"] for r in _lines(text)] == [2, 3, 4]
    _, csv_text, _ = await api.call("GET", f"/jobs/{assign['jobId']}/results?format=csv")
    assert [r[0] for r in csv.reader(io.StringIO(csv_text))] == ["id", "1", "2", "3", "4"]


async def test_duplicate_names_keep_arrays_and_todays_objects(api: Api, agent: FakeAgent) -> None:
    """``SELECT 1 AS a, 2 AS a``: the agent keeps arrays; the relay's answer is unchanged."""
    assign = await _job(api, agent, ["a", "a", "b"])
    await _send(agent, assign, 0, encode_rows([[1, 2, 3]]), 1)
    await agent.done(assign, 1, 1)
    _, text, _ = await api.call("GET", f"/jobs/{assign['jobId']}/results")
    assert text == '{"a":2,"b":3}\n'


@pytest.mark.parametrize(
    ("payload", "rows"),
    [
        (b'{"id":1}', 1),  # no final newline
        (b'{"id":1}\n{"id":2', 2),
        (b'{"id":1}\n\n', 2),  # an empty line
        (b'{"id":1}\n[2]\n', 2),  # a line that is not an object
        (b'{"id":1}\n"x"\n', 2),
        (b'{"id":1,}\n', 1),  # not JSON
        (b'{"id":[1\n2]},{"id":3}\n', 2),  # a newline inside a value, two objects on a line
        (b'{"id":1}{"id":2}\n', 1),
        (b'{"id":"a\n{"}\n', 2),  # a raw newline inside a string
        (b'{"id":"\xff"}\n', 1),  # not UTF-8
        (b'{"id":1}\n', 2),  # the header lies about the count
        (b'{"id":123456789012345678901234567890}\n', 1),  # past what the check's parser holds
        (b'{"id":' + b"[" * 1100 + b"]" * 1100 + b"}\n", 1),
    ],
)
async def test_malformed_object_lines_are_refused_at_intake(api: Api, client: Any, agent: FakeAgent,
                                                           payload: bytes, rows: int) -> None:  # fmt: skip
    """Nothing that is not N JSON object lines reaches the store (or a platform reader); the
    attempt ends at once, failed RESULT_REJECTED, and the agent is told to drop it (until
    2026-12-04 the job waited for a chunk that could never be stored, until its timeout)."""
    assign = await _job(api, agent, ["id"])
    await _send(agent, assign, 0, payload, rows, ack=False)
    err = await agent.expect("relay.error.v1")
    assert err["code"] == "PROTOCOL_ERROR" and err["message"].startswith("chunk 0")
    await agent.expect("job.cancel.v1", jobId=assign["jobId"], attempt=1, reason="SUPERSEDED")
    job = await api.job(assign["jobId"])
    assert job["status"] == "failed" and job["error"]["code"] == "RESULT_REJECTED"
    assert "chunk 0" in job["error"]["message"] and job["error"]["retryable"] is False
    stored = await relay_of(client).store.run(chunk_store.seqs, assign["jobId"], 1)
    assert stored == []
    await _send(agent, assign, 0, b'{"id":1}\n', 1, ack=False)  # a late resend: dropped quietly
    await agent.done(assign, 1, 1)
    assert (await api.job(assign["jobId"]))["status"] == "failed"


async def test_reader_refuses_object_lines_keyed_by_other_names(api: Api, agent: FakeAgent) -> None:
    """Valid object lines whose keys are not the job's columns are never served as its rows."""
    assign = await _job(api, agent, ["id"])
    await _send(agent, assign, 0, b'{"id":1}\n', 1)
    await _send(agent, assign, 1, b'{"nope":2}\n', 1)
    await agent.done(assign, 2, 2)
    import aiohttp

    resp = await api.client.get(f"/api/v1/jobs/{assign['jobId']}/results", headers=api.headers())
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()


def test_encode_objects_values_match_encode_rows() -> None:
    """Per value, object lines carry exactly what the arrays carry (same default, fallback)."""
    for batch in (ROWS, [[2**70, "big int: the careful path"]], [[math.nan, -0.0, b"\x00\xff"]]):
        names = [f"c{i}" for i in range(len(batch[0]))]
        objects = [
            list(orjson.loads(line).values()) for line in encode_objects(names, batch).splitlines()
        ]
        assert objects == orjson.loads(encode_rows(batch))


@pytest.mark.parametrize("codec", ["zstd", "zlib"])
async def test_compressed_chunks_are_read_back_exactly(api: Api, agent: FakeAgent, codec: str) -> None:
    """The welcome says the relay takes zstd chunks; a zstd or zlib chunk (an agent off
    loopback, or an older one) is stored and served as the rows it holds."""
    assert agent.welcome is not None and agent.welcome["zstdChunks"] is True
    assign = await _job(api, agent, ["n", "name"])
    rows = [[i, f"customer {i} of a rather repetitive table"] for i in range(5000)]
    payload = encode_objects(["n", "name"], rows)
    chunk = protocol.Chunk(assign["jobId"], assign["attempt"], 0, len(rows), payload)
    frame = protocol.encode_chunk(chunk, compress=codec)
    if codec == "zstd":  # a frame the relay's own compressor would not make (level 3, checksum)
        import zstandard

        plain = protocol.encode_chunk(chunk)
        packed = zstandard.ZstdCompressor(level=3, write_checksum=True).compress(payload)
        frame = bytes([plain[0], protocol.FLAG_ZSTD]) + plain[2 : protocol.read_chunk_head(plain).offset] + packed
        assert packed != zstdframes.compress(payload)
    assert protocol.chunk_flags(frame) == (protocol.FLAG_ZSTD if codec == "zstd" else protocol.FLAG_ZLIB)
    await agent.send_raw(frame)
    await agent.expect("job.chunk.ack.v1", jobId=assign["jobId"], seq=0)
    await agent.done(assign, 1, len(rows))
    _, body, _ = await api.call("GET", f"/jobs/{assign['jobId']}/results", expect=200)
    assert body.encode() == payload
    # At rest: a zstd frame is kept as the agent sent it (not compressed again), a zlib one
    # is stored as zstd; both read back (from the store, not the recent chunks) exactly.
    relay = relay_of(api.client)
    stored = await relay.store.run(chunk_store.read, assign["jobId"], assign["attempt"], 0)
    aad = f"{assign['jobId']}:{assign['attempt']}:0".encode()
    clear = relay.cipher.decrypt(stored["key_id"], stored["data"], aad)
    assert clear[:4] == zstdframes.MAGIC
    assert (clear == frame[protocol.read_chunk_head(frame).offset :]) is (codec == "zstd")
    limit = protocol.MAX_DECOMPRESSED
    assert atrest.unseal(relay.cipher, stored["key_id"], stored["data"], aad, limit=limit) == payload


async def test_a_chunk_the_relay_fails_to_store_ends_the_attempt_as_retryable(
    api: Api, agent: FakeAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure of the relay's own on a chunk (here: its preparation raising once) ends the
    attempt as retryable INTERNAL_ERROR: the agent drops it, the job goes back to the
    queue and its second attempt runs to the end (before 2026-12-04 it waited, unstored,
    until its timeout)."""
    from relay.agents import guard

    real = guard.prepare
    calls = {"n": 0}

    def flaky(*args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("disk on fire")
        return real(*args)

    monkeypatch.setattr(guard, "prepare", flaky)
    job_id = await api.submit(agent.connector_id or "", retryDelaySeconds=0)
    first = await agent.expect("job.assign.v1", jobId=job_id)
    await agent.start(first, ["id"])
    await _send(agent, first, 0, b'{"id":1}\n', 1, ack=False)
    err = await agent.expect("relay.error.v1")
    assert err["code"] == "INTERNAL_ERROR" and "disk on fire" not in err["message"]
    await agent.expect("job.cancel.v1", jobId=job_id, attempt=1, reason="SUPERSEDED")
    second = await agent.expect("job.assign.v1", jobId=job_id)
    assert second["attempt"] == 2
    await agent.start(second, ["id"])
    await _send(agent, second, 0, b'{"id":1}\n', 1)
    await agent.done(second, 1, 1)
    await agent.expect("job.done.ack.v1", jobId=job_id, attempt=2)
    job = await api.job(job_id)
    assert job["status"] == "succeeded", job
    _, text, _ = await api.call("GET", f"/jobs/{job_id}/results")
    assert text == '{"id":1}\n'
