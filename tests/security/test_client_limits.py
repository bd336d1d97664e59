"""Limits by client address (issue 13, API hygiene), through the real relay app in
process: requests failing authentication are counted per address, agent handshakes per
address and key id, and X-Forwarded-For is believed only from configured proxies."""

from __future__ import annotations

import ipaddress
from typing import Any

import aiohttp
import pytest

from relay.config import ConfigError, RelayConfig
from relay.web.auth import make_token
from relay.web.clientaddr import parse_networks, resolve
from shared import keys
from tests.relay.conftest import SECRET, Api, wait_until

CONNECT = "/api/v1/agent/connect"


async def _list(client: Any, token: str, **headers: str) -> aiohttp.ClientResponse:
    return await client.get("/api/v1/connectors",
                            headers={"Authorization": f"Bearer {token}", "X-Tenant-ID": "t1", **headers})  # fmt: skip


def _made_up(n: int) -> str:
    return make_token("not-the-relay-secret-000000000000", "t1", "admin", 600, sub=f"x{n}")


# --------------------------------------------------------------- failed authentication


async def test_made_up_tokens_are_limited_per_address(start_relay: Any) -> None:
    """Ten requests with ten different made-up tokens (and one with none) use up the
    address's budget: the next is 429 with Retry-After and details.retryAfter, and is not
    even verified. Before, each made-up token had a bucket of its own."""
    client = await start_relay()
    for n in range(9):
        resp = await _list(client, _made_up(n))
        assert resp.status == 401
        assert resp.headers["X-RateLimit-Limit"] == "10"
        assert resp.headers["X-RateLimit-Remaining"] == str(10 - n - 1)
    resp = await client.get("/api/v1/connectors", headers={"X-Tenant-ID": "t1"})  # no token at all
    assert resp.status == 401 and resp.headers["X-RateLimit-Remaining"] == "0"
    for token in (_made_up(99), "garbage", ""):
        resp = await _list(client, token)
        body = await resp.json()
        assert resp.status == 429, body
        assert body["error"]["code"] == "RATE_LIMITED"
        assert int(resp.headers["Retry-After"]) >= 1
        assert body["error"]["details"]["retryAfter"] == int(resp.headers["Retry-After"])


async def test_known_good_tokens_pass_while_their_address_is_limited(start_relay: Any) -> None:
    """Decision (docs/SECURITY.md): a token this relay has verified before keeps working
    from an address others have used up; a token never seen before waits like any guess."""
    client = await start_relay(auth_failure_limit=3)
    api = Api(client)
    await api.call("GET", "/connectors", expect=200)
    for n in range(3):
        assert (await _list(client, _made_up(n))).status == 401
    assert (await _list(client, _made_up(3))).status == 429
    _, _, resp = await api.call("GET", "/connectors", expect=200)
    assert resp.headers["X-RateLimit-Limit"] == "100"  # its own (admin) token budget
    fresh = make_token(SECRET, "t1", "admin", 600, sub="fresh")
    resp = await _list(client, fresh)
    assert resp.status == 429
    # The token budget is per token, not per address: the failures did not use it.
    _, _, resp = await api.call("GET", "/connectors", expect=200)
    assert int(resp.headers["X-RateLimit-Remaining"]) == 100 - 3


async def test_events_socket_tokens_count_too(start_relay: Any) -> None:
    client = await start_relay(auth_failure_limit=2)
    for n in range(2):
        resp = await client.get(f"/api/v1/events?token={_made_up(n)}")
        assert resp.status == 401
    resp = await client.get(f"/api/v1/events?token={_made_up(5)}")
    assert resp.status == 429


async def test_failures_counted_per_forwarded_client_behind_a_trusted_proxy(start_relay: Any) -> None:
    """Behind a configured proxy each forwarded client has its own budget; a client cannot
    escape its own by writing addresses to the left of the proxy's entry."""
    client = await start_relay(auth_failure_limit=2, trusted_proxies="127.0.0.0/8, ::1")
    a = {"X-Forwarded-For": "203.0.113.5"}
    for n in range(2):
        assert (await _list(client, _made_up(n), **a)).status == 401
    assert (await _list(client, _made_up(2), **a)).status == 429
    spoofed = {"X-Forwarded-For": "198.51.100.1, 203.0.113.5"}
    assert (await _list(client, _made_up(3), **spoofed)).status == 429
    b = {"X-Forwarded-For": "203.0.113.6"}
    assert (await _list(client, _made_up(4), **b)).status == 401


async def test_forwarded_for_ignored_without_trusted_proxies(start_relay: Any) -> None:
    client = await start_relay(auth_failure_limit=2)
    for n in range(2):
        assert (await _list(client, _made_up(n), **{"X-Forwarded-For": f"203.0.113.{n}"})).status == 401
    assert (await _list(client, _made_up(9), **{"X-Forwarded-For": "203.0.113.99"})).status == 429


# --------------------------------------------------------------- agent handshakes


async def _handshake(client: Any, key: str, **headers: str) -> int:
    try:
        ws = await client.ws_connect(CONNECT, headers={"Authorization": f"Bearer {key}", **headers})
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status
    await ws.close()
    return 101


async def test_bad_keys_do_not_lock_out_another_key_id_from_the_same_address(start_relay: Any) -> None:
    """One agent with a wrong key behind the load balancer locks out only its own key id:
    a good key (never connected before) and another bad key still get their answers."""
    client = await start_relay(handshake_failure_limit=3)
    con = await Api(client).new_connector()
    stale = keys.generate_key()
    assert [await _handshake(client, stale) for _ in range(4)] == [401, 401, 401, 429]
    assert await _handshake(client, con["apiKey"]) == 101
    assert await _handshake(client, keys.generate_key()) == 401  # another id: its own count
    assert await _handshake(client, stale) == 429


async def test_random_keys_are_capped_per_address_but_working_agents_pass(start_relay: Any) -> None:
    """Random keys (each its own id) are capped per address over all ids; a key that has
    connected before is exempt from that cap, a never-seen one waits."""
    client = await start_relay(handshake_failure_limit=100, handshake_address_failure_limit=4)
    api = Api(client)
    working, fresh = await api.new_connector("working"), await api.new_connector("fresh")
    assert await _handshake(client, working["apiKey"]) == 101
    assert [await _handshake(client, keys.generate_key()) for _ in range(4)] == [401] * 4
    assert await _handshake(client, keys.generate_key()) == 429
    assert await _handshake(client, "not-a-key") == 429
    assert await _handshake(client, working["apiKey"]) == 101
    assert await _handshake(client, fresh["apiKey"]) == 429


async def test_handshake_forwarded_for_only_from_trusted_proxies(start_relay: Any) -> None:
    """Untrusted peer: X-Forwarded-For is ignored, so varying it does not reset the count.
    Trusted peer: the forwarded client is counted, so one client's lockout is its own."""
    stale = keys.generate_key()
    client = await start_relay(handshake_failure_limit=2)
    statuses = [await _handshake(client, stale, **{"X-Forwarded-For": f"203.0.113.{n}"}) for n in range(3)]
    assert statuses == [401, 401, 429]

    proxied = await start_relay(handshake_failure_limit=2, trusted_proxies="127.0.0.1")
    a, b = {"X-Forwarded-For": "203.0.113.5"}, {"X-Forwarded-For": "203.0.113.6"}
    assert [await _handshake(proxied, stale, **a) for _ in range(3)] == [401, 401, 429]
    assert await _handshake(proxied, stale, **b) == 401
    assert await _handshake(proxied, stale, **{"X-Forwarded-For": "203.0.113.6, 203.0.113.5"}) == 429


# --------------------------------------------------------------- the address itself

NETS = parse_networks("10.0.0.0/8, 127.0.0.1, fd00::/8")


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("198.51.100.7", ["203.0.113.5"], "198.51.100.7"),  # untrusted peer: header ignored
        ("127.0.0.1", [], "127.0.0.1"),  # trusted peer, no header
        ("127.0.0.1", ["203.0.113.5"], "203.0.113.5"),
        ("127.0.0.1", ["1.1.1.1, 203.0.113.5"], "203.0.113.5"),  # left of it: client-written
        ("127.0.0.1", ["203.0.113.5, 10.1.2.3"], "203.0.113.5"),  # two trusted hops
        ("127.0.0.1", ["203.0.113.5", "10.1.2.3"], "203.0.113.5"),  # header repeated
        ("127.0.0.1", ["junk, 10.1.2.3"], "10.1.2.3"),  # garbage: stop at the last proxy
        ("127.0.0.1", ["203.0.113.5:4711"], "203.0.113.5"),
        ("127.0.0.1", ["[2001:db8::1]:443"], "2001:db8::1"),
        ("fd00::1", ["2001:db8::2"], "2001:db8::2"),
        ("::ffff:127.0.0.1", ["203.0.113.9"], "203.0.113.9"),  # v4-mapped peer
        ("127.0.0.1", ["10.0.0.1, 10.0.0.2"], "10.0.0.1"),  # all trusted: the left-most
    ],
)
def test_client_address_resolution(peer: str, forwarded: list[str], expected: str) -> None:
    assert resolve(peer, forwarded, NETS) == expected
    assert ipaddress.ip_address(resolve(peer, forwarded, ()))  # always a real address


def test_settings_from_the_environment() -> None:
    cfg = RelayConfig.from_env({"MC_RELAY_AUTH_FAILURES": "25", "MC_RELAY_TRUSTED_PROXIES": "10.0.0.0/8,::1",
                                "MC_RELAY_HANDSHAKE_ADDRESS_FAILURES": "300", "MC_RELAY_JWT_SECRET": "s"})
    cfg.check()
    assert (cfg.auth_failure_limit, cfg.handshake_address_failure_limit) == (25, 300)
    assert RelayConfig().auth_failure_limit == 10 and RelayConfig().trusted_proxies == ""
    with pytest.raises(ConfigError, match="MC_RELAY_TRUSTED_PROXIES"):
        RelayConfig.from_env({"MC_RELAY_TRUSTED_PROXIES": "10.0.0.0/8, proxy.local",
                              "MC_RELAY_JWT_SECRET": "s"}).check()


# --------------------------------------------------------------- previous keys


async def test_every_previous_key_works_until_its_own_expiry(api: Api, client: Any) -> None:
    """create, rotate (24 h), rotate again (1.5 s): the original key, the first rotated key
    and the newest all pass the handshake, and the connector lists both earlier keys with
    their expiries. Before, the second rotation cut the original key off at once. Then the
    1.5 s key lapses on its own while the original (24 h) keeps working."""
    con = await api.new_connector()
    cid = con["id"]
    _, out, _ = await api.call("POST", f"/connectors/{cid}/rotate-key", expect=200)
    first = out["data"]
    _, out, _ = await api.call("POST", f"/connectors/{cid}/rotate-key", json={"gracePeriodSeconds": 1.5},
                               expect=200)  # fmt: skip
    newest = out["data"]
    for key in (con["apiKey"], first["apiKey"], newest["apiKey"]):
        assert await _handshake(client, key) == 101
    view = await api.connector(cid)
    assert view["apiKeyPrefix"] == newest["apiKeyPrefix"]
    assert [p["apiKeyPrefix"] for p in view["previousKeys"]] == [first["apiKeyPrefix"], con["apiKeyPrefix"]]
    assert [p["expiresAt"] for p in view["previousKeys"]] == [newest["previousKeyExpiresAt"],
                                                              first["previousKeyExpiresAt"]]

    async def first_lapsed() -> bool:
        return await _handshake(client, first["apiKey"]) == 401

    # At an agent's pace: upgrades are limited per key (100 a minute), a 10 ms poll would see 429.
    await wait_until(first_lapsed, what="the 1.5 s key to stop working", interval=0.2)
    assert await _handshake(client, con["apiKey"]) == 101
    assert [p["apiKeyPrefix"] for p in (await api.connector(cid))["previousKeys"]] == [con["apiKeyPrefix"]]


async def test_grace_zero_cuts_every_previous_key(api: Api, client: Any) -> None:
    """Decision (docs/SECURITY.md): gracePeriodSeconds 0 is for a key thought stolen, and
    the thief may hold any earlier key, so every previous key stops at once."""
    con = await api.new_connector()
    cid = con["id"]
    _, first, _ = await api.call("POST", f"/connectors/{cid}/rotate-key", expect=200)
    _, second, _ = await api.call("POST", f"/connectors/{cid}/rotate-key", expect=200)
    _, last, _ = await api.call("POST", f"/connectors/{cid}/rotate-key", json={"gracePeriodSeconds": 0},
                                expect=200)  # fmt: skip
    for key in (con["apiKey"], first["data"]["apiKey"], second["data"]["apiKey"]):
        assert await _handshake(client, key) == 401
    assert await _handshake(client, last["data"]["apiKey"]) == 101
    assert (await api.connector(cid))["previousKeys"] == []
    _, listing, _ = await api.call("GET", "/connectors", expect=200)
    assert listing["data"][0]["previousKeys"] == []


async def test_revoking_ends_previous_keys_too(api: Api, client: Any) -> None:
    con = await api.new_connector()
    _, out, _ = await api.call("POST", f"/connectors/{con['id']}/rotate-key", expect=200)
    await api.call("DELETE", f"/connectors/{con['id']}", expect=204)
    for key in (con["apiKey"], out["data"]["apiKey"]):
        assert await _handshake(client, key) == 401
    # ... and the connector no longer lists the previous key as working until its expiry
    assert (await api.connector(con["id"]))["previousKeys"] == []


async def test_metrics_token_guesses_count_too(start_relay: Any) -> None:
    """/metrics checks its own token and is not rate limited, but its 401s count against
    the address like any failed authentication: its token cannot be guessed at speed."""
    client = await start_relay(auth_failure_limit=3, metrics_token="the-metrics-token")
    for n in range(3):
        resp = await client.get("/metrics", headers={"Authorization": f"Bearer guess-{n}"})
        assert resp.status == 401
    resp = await client.get("/metrics", headers={"Authorization": "Bearer the-metrics-token"})
    body = await resp.json()
    assert resp.status == 429 and body["error"]["details"]["retryAfter"] >= 1
    other = await start_relay(auth_failure_limit=3, metrics_token="the-metrics-token")
    resp = await other.get("/metrics", headers={"Authorization": "Bearer the-metrics-token"})
    assert resp.status == 200
