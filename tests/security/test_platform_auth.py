"""Platform access: RS256 tokens with a configured public key, failed agent handshakes
limited per address (and logged without the key), the roles table as documented, hostile
HTTP bodies."""

from __future__ import annotations

import logging
import re
import secrets
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from relay.config import RelayConfig
from relay.web.auth import ROUTE_ROLES
from shared import keys
from tests.relay.conftest import SECRET, Api, FakeAgent, wait_until

DOCS = Path(__file__).resolve().parents[2] / "docs" / "SECURITY.md"


def _rsa() -> tuple[rsa.RSAPrivateKey, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    return key, pem


def _rs256(key: rsa.RSAPrivateKey, tenant: str = "t1", role: str = "admin", **extra: Any) -> str:
    now = int(time.time())
    claims = {"sub": "platform", "tenantId": tenant, "role": role, "iat": now, "exp": now + 300,
              "jti": secrets.token_hex(8), **extra}
    return jwt.encode(claims, key, algorithm="RS256")


async def _get(client: Any, token: str, tenant: str = "t1") -> int:
    resp = await client.get("/api/v1/connectors",
                            headers={"Authorization": f"Bearer {token}", "X-Tenant-ID": tenant})
    return resp.status


async def test_rs256_tokens_with_the_configured_public_key(start_relay: Any) -> None:
    """RS256 tokens signed by the platform's key pass; another key, an HS256 token forged
    with the public key as secret (algorithm confusion) and an expired one are 401."""
    key, pem = _rsa()
    other, _ = _rsa()
    client = await start_relay(jwt_secret=None, jwt_public_key=pem)
    assert await _get(client, _rs256(key)) == 200
    assert await _get(client, _rs256(other)) == 401
    forged = jwt.encode({"sub": "x", "tenantId": "t1", "role": "admin", "exp": int(time.time()) + 60,
                         "jti": "j"}, SECRET, algorithm="HS256")
    assert await _get(client, forged) == 401  # no HS256 secret configured: refused
    assert await _get(client, _rs256(key, exp=int(time.time()) - 60)) == 401
    assert await _get(client, _rs256(key, tenant="t2"), tenant="t1") == 403


def test_rs256_public_key_from_env_or_file(tmp_path: Path) -> None:
    """MC_RELAY_JWT_PUBLIC_KEY or MC_RELAY_JWT_PUBLIC_KEY_FILE configures RS256 without a secret."""
    _, pem = _rsa()
    (tmp_path / "pub.pem").write_text(pem)
    for env in ({"MC_RELAY_JWT_PUBLIC_KEY": pem},
                {"MC_RELAY_JWT_PUBLIC_KEY_FILE": str(tmp_path / "pub.pem")}):
        cfg = RelayConfig.from_env(env, database_url=f"sqlite:///{tmp_path}/r.db")
        assert cfg.jwt_public_key == pem
        cfg.check()  # no JWT secret needed


async def test_failed_handshakes_are_limited_per_address_and_logged_without_key(
    start_relay: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """After N bad tries of one key from one address the relay answers 429 + Retry-After
    before looking anything up; the log names the address and the reason, never the key."""
    client = await start_relay(handshake_failure_limit=5)
    api = Api(client)
    con = await api.new_connector()
    bad = keys.generate_key()  # well formed, unknown
    caplog.set_level(logging.WARNING, logger="relay.handshake")
    statuses = []
    for _ in range(7):
        resp = await client.get("/api/v1/agent/connect", headers={"Authorization": f"Bearer {bad}"})
        statuses.append(resp.status)
        if resp.status == 429:
            assert int(resp.headers["Retry-After"]) >= 1
            assert (await resp.json())["error"]["code"] == "RATE_LIMITED"
    assert statuses[:5] == [401] * 5 and statuses[5:] == [429, 429], statuses
    # The limit is per address AND key id: a good key (another id) from that address still
    # connects (docs/SECURITY.md, API hygiene; tests/security/test_api_hygiene.py).
    ws = await client.ws_connect("/api/v1/agent/connect", headers={"Authorization": f"Bearer {con['apiKey']}"})
    await ws.close()
    text = caplog.text
    assert "agent handshake refused from" in text
    assert bad not in text and bad[4:20] not in text and keys.key_prefix(bad) not in text


async def test_rotated_key_works_until_previous_key_expires(api: Api, client: Any) -> None:
    """rotate-key with a short grace: the old key connects at once, and is refused (401)
    once previousKeyExpiresAt has passed; the new key keeps working."""
    con = await api.new_connector()
    _, out, _ = await api.call("POST", f"/connectors/{con['id']}/rotate-key",
                               json={"gracePeriodSeconds": 1.5}, expect=200)
    new = out["data"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", new["previousKeyExpiresAt"])
    old = await FakeAgent(client, con["apiKey"]).connect()
    await old.close()

    async def old_refused() -> bool:
        try:
            ws = await client.ws_connect("/api/v1/agent/connect",
                                         headers={"Authorization": f"Bearer {con['apiKey']}"})
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status == 401
        await ws.close()
        return False

    # Upgrades are limited per key (100 a minute, as any unauthenticated route): poll at an
    # agent's pace, not every 10 ms, or the answer would be 429 instead of the 401 sought.
    await wait_until(old_refused, timeout=10, what="the old key to be refused after expiry", interval=0.2)
    agent = await FakeAgent(client, new["apiKey"]).connect()
    assert agent.connector_id == con["id"]
    await agent.close()


async def test_duplicate_connection_is_refused_plainly(api: Api, client: Any) -> None:
    """A second machine (another key pair) presenting a connected key gets
    relay.error.v1 DUPLICATE_CONNECTION and close 4009; the first stays connected."""
    con = await api.new_connector()
    first = await FakeAgent(client, con["apiKey"]).connect()
    second = FakeAgent(client, con["apiKey"])
    await second.connect(hello=False)
    await second.send("agent.hello.v1", protocolVersion=1, agentVersion="0.1.0", hostname="other",
                      os="linux", publicKey=second.public_key, capacity=1, sources=[])
    err = await second.expect("relay.error.v1")
    assert err["code"] == "DUPLICATE_CONNECTION" and "already connected" in err["message"]
    assert await second.wait_closed() == 4009
    assert (await api.connector(con["id"]))["status"] == "online"
    await first.close()


def _documented_roles() -> dict[str, set[str]]:
    table: dict[str, set[str]] = {}
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        m = re.match(r"\|\s*`([a-z_.]+)`\s*\|[^|]*\|([^|]*)\|([^|]*)\|([^|]*)\|", line)
        if m:
            cells = [c.strip() for c in m.groups()[1:]]
            table[m.group(1)] = {r for r, c in zip(("admin", "service", "support"), cells, strict=True)
                                 if c.lower().startswith("yes")}
    return table


def test_documented_roles_table_is_the_enforced_one() -> None:
    """docs/SECURITY.md's roles table and relay.web.auth.ROUTE_ROLES say the same thing."""
    assert _documented_roles() == {route: set(roles) for route, roles in ROUTE_ROLES.items()}


@pytest.mark.parametrize("route", sorted(ROUTE_ROLES))
async def test_roles_table_walked_route_by_route(client: Any, route: str) -> None:
    """Every role against every route: allowed roles never get 403, others always do."""
    method, path = _ROUTE_CALLS[route]
    for role in ("admin", "service", "support"):
        api = Api(client, "walk", role)
        status, body, _ = await api.call(method, path, json={} if method in ("POST", "PATCH") else None)
        if role in ROUTE_ROLES[route]:
            assert status != 403, (route, role, body)
        else:
            assert status == 403 and body["error"]["code"] == "FORBIDDEN", (route, role, body)


_ROUTE_CALLS = {
    "connectors.create": ("POST", "/connectors"),
    "connectors.list": ("GET", "/connectors"),
    "connectors.get": ("GET", "/connectors/con_00000000000000000000"),
    "connectors.update": ("PATCH", "/connectors/con_00000000000000000000"),
    "connectors.delete": ("DELETE", "/connectors/con_00000000000000000000"),
    "connectors.rotate_key": ("POST", "/connectors/con_00000000000000000000/rotate-key"),
    "connectors.logs": ("GET", "/connectors/con_00000000000000000000/logs"),
    "connectors.metrics": ("GET", "/connectors/con_00000000000000000000/metrics"),
    "jobs.create": ("POST", "/jobs"),
    "jobs.list": ("GET", "/jobs"),
    "jobs.get": ("GET", "/jobs/job_00000000000000000000000000000000"),
    "jobs.cancel": ("POST", "/jobs/job_00000000000000000000000000000000/cancel"),
    "jobs.results": ("GET", "/jobs/job_00000000000000000000000000000000/results"),
    "events": ("GET", "/events"),
}


def _nested(depth: int) -> bytes:
    return b'{"name": ' + b"[" * depth + b"1" + b"]" * depth + b', "os": "linux"}'


@pytest.mark.parametrize("body,allowed", [
    (b"x" * (2 << 20), {413}),
    (b'{"name": "' + b"a" * (2 << 20) + b'", "os": "linux"}', {413}),
    (_nested(100_000), {400, 413, 422}),
    (_nested(5_000), {400, 422}),
    (b'{"name": {"a": {"b": {"c": {"d": 1}}}}, "os": "linux"}', {400, 422}),
    (b"\xff\xfe\x00garbage", {400}),
    (b"[" * 50_000, {400, 422}),
])  # fmt: skip
async def test_hostile_bodies_never_500(api: Api, client: Any, body: bytes, allowed: set[int]) -> None:
    """Oversized bodies are 413, deeply nested or broken JSON 400/422, never 500."""
    for path in ("/connectors", "/jobs"):
        resp = await client.post("/api/v1" + path, data=body,
                                 headers={**api.headers(), "Content-Type": "application/json"})
        assert resp.status in allowed, (path, resp.status, (await resp.text())[:300])
        assert (await resp.json())["success"] is False
