"""A live results reader while the store is out of reach (store/outage.py): kept waiting
through a short outage; past ``STORE_PATIENCE`` its stream ends in error, never with an
error envelope written into the middle of its body (was: 'HTTP/1.1 503 ...' inside the
chunked stream). The real-process version, a proxy cutting a PostgreSQL store under a
200,000-row job, is tests/system/test_store_outage.py."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from relay.jobs import results
from relay.store import chunks as chunk_store
from relay.store.outage import StoreUnavailable
from tests.relay.conftest import Api, FakeAgent


def _store_gone(monkeypatch: pytest.MonkeyPatch, calls: list[int], *, until: int | None) -> None:
    """``chunk_store.follow`` raises StoreUnavailable from now on (``until`` calls, or for ever)."""
    real = chunk_store.follow

    def follow(conn: Any, *args: Any) -> Any:
        calls.append(1)
        if until is None or len(calls) <= until:
            raise StoreUnavailable()
        return real(conn, *args)

    monkeypatch.setattr(chunk_store, "follow", follow)


async def _reading(api: Api, client: Any, agent: FakeAgent) -> tuple[dict[str, Any], Any]:
    job_id = await api.submit(agent.connector_id or "")
    assign = await agent.expect("job.assign.v1", jobId=job_id)
    await agent.start(assign, ["n"])
    await agent.chunk(assign, 0, [[1]])
    resp = await client.get(f"/api/v1/jobs/{job_id}/results", headers=api.headers())
    assert resp.status == 200
    assert json.loads(await asyncio.wait_for(resp.content.readline(), 5)) == {"n": 1}
    return assign, resp


async def test_a_reader_waits_through_a_short_outage_and_gets_every_row(
    api: Api, client: Any, agent: FakeAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    assign, resp = await _reading(api, client, agent)
    calls: list[int] = []
    _store_gone(monkeypatch, calls, until=3)
    await agent.chunk(assign, 1, [[2]])  # wakes the reader: its next look at the store fails
    assert json.loads(await asyncio.wait_for(resp.content.readline(), 10)) == {"n": 2}
    assert len(calls) > 3  # it did meet the outage, and looked again
    await agent.done(assign, 2, 2)
    assert await asyncio.wait_for(resp.content.read(), 5) == b""


async def test_past_its_patience_the_stream_ends_in_error_not_an_envelope(
    api: Api, client: Any, agent: FakeAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(results, "STORE_PATIENCE", 0.3)
    assign, resp = await _reading(api, client, agent)
    _store_gone(monkeypatch, [], until=None)
    await agent.chunk(assign, 1, [[2]])
    with pytest.raises(aiohttp.ClientPayloadError):
        rest = await asyncio.wait_for(resp.content.read(), 10)
        assert b"HTTP/1.1" not in rest, rest
