"""Request limits per token and per tenant, by role (issue 14, item 3; the contract's
"Rate limits"): on the relay's defaults the platform (``service``) carries the benchmarked
dispatch load, a person's token (``admin``/``support``) gets 100 a minute, admins of one
tenant share a tenant budget, and another tenant, or another role, is unaffected.

The limiter's window is one wall-clock minute; tests that count to the edge of a bucket
freeze its clock (the real ``RequestLimits`` with the relay's configured limits), so a
minute boundary passing mid-test cannot refill it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from relay.config import DEFAULT_RATE_LIMITS, ConfigError, RelayConfig
from relay.web.ratelimit import RequestLimits
from tests.relay.conftest import Api, relay_of

DEFAULTS: dict[str, Any] = {"rate_limit_per_minute": None}  # make_config's raise removed: the shipped defaults


class FrozenClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def _frozen(client: Any) -> FrozenClock:
    relay = relay_of(client)
    clock = FrozenClock()
    relay.limiter = RequestLimits(relay.config.rate_limits(), relay.config.public_rate_limit, clock)
    return clock


async def _burst(api: Api, n: int, path: str = "/connectors?limit=1", width: int = 50) -> list[Any]:
    """``n`` requests, ``width`` at a time; their responses."""
    out: list[Any] = []
    for start in range(0, n, width):
        calls = [api.call("GET", path) for _ in range(min(width, n - start))]
        out.extend(r for _, _, r in await asyncio.gather(*calls))
    return out


async def test_a_service_token_carries_the_benchmarked_load_on_defaults(start_relay: Any) -> None:
    """2,000 requests from one platform token in well under a minute: none is 429; the
    headers count down from the service default (120,000 a minute)."""
    client = await start_relay(**DEFAULTS)
    await _frozen(client)  # no refill while the burst runs (a loaded machine took ~0.3 s: +650)
    platform = Api(client, role="service")
    responses = await _burst(platform, 2000)
    statuses = {r.status for r in responses}
    assert statuses == {200}, statuses
    assert {r.headers["X-RateLimit-Limit"] for r in responses} == {"120000"}
    assert min(int(r.headers["X-RateLimit-Remaining"]) for r in responses) == 120_000 - 2000


async def test_an_admin_token_is_429_after_100_with_the_headers(start_relay: Any) -> None:
    """A person's token: 100 a minute, the headers count down, the 101st is 429
    RATE_LIMITED with Retry-After and details.retryAfter; a new window serves it again."""
    client = await start_relay(**DEFAULTS)
    clock = await _frozen(client)
    admin = Api(client, role="admin")
    remaining = []
    for _ in range(100):
        _, _, resp = await admin.call("GET", "/connectors", expect=200)
        assert resp.headers["X-RateLimit-Limit"] == "100"
        remaining.append(int(resp.headers["X-RateLimit-Remaining"]))
    assert remaining == list(range(99, -1, -1))
    status, body, resp = await admin.call("GET", "/connectors")
    assert status == 429 and body["error"]["code"] == "RATE_LIMITED", body
    retry = int(resp.headers["Retry-After"])
    assert 1 <= retry <= 60 and body["error"]["details"]["retryAfter"] == retry
    assert resp.headers["X-RateLimit-Remaining"] == "0" and resp.headers["X-RateLimit-Limit"] == "100"
    assert int(resp.headers["X-RateLimit-Reset"]) >= int(clock.now)
    assert "this token" in body["error"]["message"]
    clock.now += 60
    await admin.call("GET", "/connectors", expect=200)


async def test_admin_tokens_of_one_tenant_share_its_limit(start_relay: Any) -> None:
    """Two admin tokens of tenant t1 share t1's 100: after 60 from one, the other sees the
    tenant's remaining (the tighter bucket) and is refused after 40. Tenant t2's admin and
    t1's platform token are untouched."""
    client = await start_relay(**DEFAULTS)
    await _frozen(client)
    first, second = Api(client, role="admin"), Api(client, role="admin")
    assert first.token != second.token
    for _ in range(60):
        await first.call("GET", "/connectors", expect=200)
    _, _, resp = await second.call("GET", "/connectors", expect=200)
    assert resp.headers["X-RateLimit-Remaining"] == "39"  # the tenant's, not this token's 99
    for _ in range(39):
        await second.call("GET", "/connectors", expect=200)
    status, body, resp = await second.call("GET", "/connectors")
    assert status == 429 and "tenant" in body["error"]["message"], body
    assert body["error"]["details"]["retryAfter"] == int(resp.headers["Retry-After"])
    status, _, _ = await first.call("GET", "/connectors")
    assert status == 429
    other_tenant = Api(client, tenant="t2", role="admin")
    _, _, resp = await other_tenant.call("GET", "/connectors", expect=200)
    assert resp.headers["X-RateLimit-Remaining"] == "99"
    _, _, resp = await first.as_("service").call("GET", "/connectors", expect=200)
    assert resp.headers["X-RateLimit-Limit"] == "120000"


async def test_service_tokens_share_a_tenant_limit_too(start_relay: Any) -> None:
    """The tenant-wide service limit binds across tokens (here configured small)."""
    client = await start_relay(**DEFAULTS, rate_limit_service=5, tenant_rate_limit_service=8)
    await _frozen(client)
    a, b = Api(client, role="service"), Api(client, role="service")
    for _ in range(5):
        await a.call("GET", "/connectors", expect=200)
    status, body, _ = await a.call("GET", "/connectors")
    assert status == 429 and "this token" in body["error"]["message"]
    for _ in range(3):
        await b.call("GET", "/connectors", expect=200)
    status, body, _ = await b.call("GET", "/connectors")
    assert status == 429 and "tenant" in body["error"]["message"]


def test_limits_are_configured_per_role_and_tenant() -> None:
    """Defaults, the per-role and per-tenant variables, and the old single knob."""
    cfg = RelayConfig.from_env({})
    assert cfg.rate_limits() == {"admin": (100, 100), "support": (100, 100), "service": (120_000, 240_000)}
    assert cfg.public_rate_limit == DEFAULT_RATE_LIMITS["admin"]
    cfg = RelayConfig.from_env({
        "MC_RELAY_RATE_LIMIT_ADMIN": "50", "MC_RELAY_RATE_LIMIT_SUPPORT": "60",
        "MC_RELAY_RATE_LIMIT_SERVICE": "1000", "MC_RELAY_TENANT_RATE_LIMIT_ADMIN": "200",
        "MC_RELAY_TENANT_RATE_LIMIT_SUPPORT": "70", "MC_RELAY_TENANT_RATE_LIMIT_SERVICE": "5000",
    })  # fmt: skip
    assert cfg.rate_limits() == {"admin": (50, 200), "support": (60, 70), "service": (1000, 5000)}
    # The old knob: every role's per-token limit not set on its own (tenant: times the factor).
    cfg = RelayConfig.from_env({"MC_RELAY_RATE_LIMIT": "7", "MC_RELAY_RATE_LIMIT_SERVICE": "9"})
    assert cfg.rate_limits() == {"admin": (7, 7), "support": (7, 7), "service": (9, 18)}
    assert cfg.public_rate_limit == 7
    for bad in ({"MC_RELAY_RATE_LIMIT_SERVICE": "0"}, {"MC_RELAY_TENANT_RATE_LIMIT_ADMIN": "-1"}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            RelayConfig.from_env(bad, jwt_secret="x" * 32).check()
    with pytest.raises(ConfigError):
        RelayConfig.from_env({"MC_RELAY_RATE_LIMIT_ADMIN": "lots"})


async def test_streamed_responses_carry_the_headers_too(api: Api, agent: Any) -> None:
    """"Every response carries X-RateLimit-*": also the results, which are streamed (their
    headers leave before the middleware sees the response; they had only X-Request-ID),
    in NDJSON and in CSV."""
    job = await api.submit(agent.connector_id)
    assign = await agent.expect("job.assign.v1", jobId=job)
    await agent.start(assign, ["n"])
    await agent.chunk(assign, 0, [[1]])
    await agent.done(assign, 1, 1)
    remaining = []
    for query in ("", "?format=csv"):
        resp = await api.client.get(f"/api/v1/jobs/{job}/results{query}", headers=api.headers())
        assert resp.status == 200 and await resp.read()
        assert resp.headers["X-RateLimit-Limit"] and int(resp.headers["X-RateLimit-Reset"]) > time.time() - 1
        assert resp.headers["X-Request-ID"].startswith("req_")
        remaining.append(int(resp.headers["X-RateLimit-Remaining"]))
    assert remaining[1] == remaining[0] - 1


async def test_the_event_stream_counts_the_token_it_authenticates(start_relay: Any) -> None:
    """``/events`` authenticates the ``?token=``; its per-token count must be that token's
    too. Before, a request with an Authorization header as well was counted against the
    header's token: a made-up header per request gave the query token fresh budgets."""
    client = await start_relay(rate_limit_per_minute=2, tenant_rate_limit_admin=1000)
    api = Api(client)
    statuses = []
    for n in range(3):
        resp = await client.get(f"/api/v1/events?token={api.token}", headers={"Authorization": f"Bearer decoy-{n}"})
        statuses.append(resp.status)
        resp.release()
    assert statuses[2] == 429, statuses
