"""An ``/events`` client that never reads, on the relay served as ``mini-relay serve`` serves
it, over real sockets (a raw socket with a 4 KB receive buffer): its queue stays at 1,000
events (the oldest dropped), the tenant's other sockets get every event at once, and the
relay cuts it (TCP reset) once it has taken no byte for ``MC_RELAY_SEND_TIMEOUT``, or when
its token expires, rather than waiting on it for ever (docs/API.md, "Events")."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from relay.app import create_app
from relay.config import ConfigError, RelayConfig
from relay.context import RELAY, Relay
from relay.events import QUEUE_SIZE
from relay.web.auth import make_token
from relay.web.httpserver import EnvelopeAppRunner
from tests.relay.conftest import SECRET, TIMEOUT, wait_until
from tests.system.slowclient import drain_until_closed, open_events

TENANT = "t1"
BIG_ID = "job_" + "x" * 1000  # ~1 KB events: a few thousand fill any socket buffer


@pytest.fixture
async def served(make_config: Callable[..., RelayConfig], request: pytest.FixtureRequest
                 ) -> AsyncIterator[tuple[Relay, aiohttp.ClientSession, int]]:  # fmt: skip
    app = create_app(make_config(send_timeout=getattr(request, "param", 1.0)))
    app[RELAY].events.strict = True
    runner = EnvelopeAppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    session = aiohttp.ClientSession(base_url=f"http://127.0.0.1:{runner.addresses[0][1]}")
    try:
        yield app[RELAY], session, runner.addresses[0][1]
    finally:
        await session.close()
        await runner.cleanup()


def _queues(relay: Relay) -> list[asyncio.Queue[Any]]:
    return list(relay.events._subs.get(TENANT, ()))


async def _publish_and_read(relay: Relay, good: aiohttp.ClientWebSocketResponse,
                            rounds: int) -> tuple[float, int]:  # fmt: skip
    """Publish ``rounds`` x 200 events; the good socket must get each round whole and in
    order. Returns the slowest round's delivery time and the longest queue seen."""
    slowest, longest = 0.0, 0
    for r in range(rounds):
        for i in range(200):
            relay.events.publish(TENANT, "job_started", {"jobId": f"{BIG_ID}{r}-{i}", "connectorId": "con_x"})
        t0 = time.monotonic()
        for i in range(200):
            event = await asyncio.wait_for(good.receive_json(), TIMEOUT)
            assert event["data"]["jobId"] == f"{BIG_ID}{r}-{i}"
        slowest = max(slowest, time.monotonic() - t0)
        longest = max([longest, *(q.qsize() for q in _queues(relay))])
    return slowest, longest


async def test_a_socket_that_never_reads_is_bounded_then_cut_and_others_keep_up(
    served: tuple[Relay, aiohttp.ClientSession, int], caplog: pytest.LogCaptureFixture
) -> None:
    relay, session, port = served
    token = make_token(SECRET, TENANT, "service", 600)
    stalled = await asyncio.to_thread(open_events, port, token)
    good = await session.ws_connect(f"/api/v1/events?token={token}")
    await wait_until(lambda: _ready(relay, 2), what="both sockets subscribed")
    caplog.set_level(logging.INFO, logger="relay.slow_clients")
    slowest, longest = await _publish_and_read(relay, good, 30)  # 6,000 events, ~6 MB each
    assert slowest < 1.0, slowest
    # The stalled socket held at most its 1,000 events (and a full send buffer), not 6 MB:
    # its queue filled and dropped the oldest.
    assert longest == QUEUE_SIZE, longest
    # Taking nothing for MC_RELAY_SEND_TIMEOUT (1 s here), it is cut; the good one stays.
    await wait_until(lambda: _ready(relay, 1), 5.0, what="the stalled socket cut")
    assert any("connection cut" in r.getMessage() for r in caplog.records)
    assert not any(r.levelno >= logging.ERROR for r in caplog.records)
    _, end = await asyncio.to_thread(drain_until_closed, stalled, 5.0)
    stalled.close()
    assert end == "reset"
    assert (await _publish_and_read(relay, good, 1))[0] < 1.0
    await good.close()


@pytest.mark.parametrize("served", [60.0], indirect=True)
async def test_a_stalled_socket_still_ends_when_its_token_expires(
    served: tuple[Relay, aiohttp.ClientSession, int],
) -> None:
    """Blocked on a client that does not read, the socket does not outlive its token
    (exp + the 5 s leeway), however long MC_RELAY_SEND_TIMEOUT is."""
    relay, _, port = served
    stalled = await asyncio.to_thread(open_events, port, make_token(SECRET, TENANT, "service", 1))
    await wait_until(lambda: _ready(relay, 1), what="the socket subscribed")
    for i in range(6000):  # ~6 MB, one at a time: more than the socket's buffers take
        relay.events.publish(TENANT, "job_started", {"jobId": f"{BIG_ID}{i}", "connectorId": "con_x"})
        await asyncio.sleep(0)  # the relay writes each while it can
    assert _queues(relay)[0].qsize() > 0  # it could not: the socket is stuck on its client
    await wait_until(lambda: _ready(relay, 0), 12.0, what="the socket ended at its token's expiry")
    _, end = await asyncio.to_thread(drain_until_closed, stalled, 5.0)
    stalled.close()
    assert end == "reset"


async def _ready(relay: Relay, n: int) -> bool:
    return relay.events.subscribers(TENANT) == n


def test_the_settings_are_read_and_checked() -> None:
    """``MC_RELAY_SEND_TIMEOUT`` is a positive number of seconds; ``MC_RELAY_RESULT_STREAMS``
    a count of at least 1 (docs/OPERATIONS.md)."""
    config = RelayConfig.from_env({"MC_RELAY_SEND_TIMEOUT": "2.5", "MC_RELAY_RESULT_STREAMS": "7"})
    assert (config.send_timeout, config.result_streams_per_tenant) == (2.5, 7)
    assert (RelayConfig().send_timeout, RelayConfig().result_streams_per_tenant) == (60.0, 200)
    for bad in ("0", "-1", "nan", "inf"):
        with pytest.raises(ConfigError, match="MC_RELAY_SEND_TIMEOUT"):
            RelayConfig.from_env({"MC_RELAY_SEND_TIMEOUT": bad}, jwt_secret=SECRET).check()
    for bad in ("0", "-3", "x"):
        with pytest.raises(ConfigError, match="MC_RELAY_RESULT_STREAMS"):
            RelayConfig.from_env({"MC_RELAY_RESULT_STREAMS": bad})
