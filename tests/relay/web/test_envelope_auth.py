"""The envelope, authentication, roles and rate limits, for every route."""

from __future__ import annotations

import time

import jwt
import pytest

from relay.web.auth import ROUTE_ROLES
from tests.relay.conftest import SECRET, Api, relay_of

# One example request per named route (path ids need not exist: 404 still proves access).
ROUTES = {
    "connectors.create": ("POST", "/connectors", {"name": "n", "os": "linux"}),
    "connectors.list": ("GET", "/connectors", None),
    "connectors.get": ("GET", "/connectors/con_x", None),
    "connectors.update": ("PATCH", "/connectors/con_x", {"name": "n"}),
    "connectors.delete": ("DELETE", "/connectors/con_x", None),
    "connectors.rotate_key": ("POST", "/connectors/con_x/rotate-key", None),
    "connectors.logs": ("GET", "/connectors/con_x/logs", None),
    "connectors.metrics": ("GET", "/connectors/con_x/metrics", None),
    "jobs.create": ("POST", "/jobs", {"connectorId": "con_x", "source": "s", "query": {"sql": "SELECT 1"}}),
    "jobs.list": ("GET", "/jobs", None),
    "jobs.get": ("GET", "/jobs/job_x", None),
    "jobs.cancel": ("POST", "/jobs/job_x/cancel", None),
    "jobs.results": ("GET", "/jobs/job_x/results", None),
}


def _token(**claims: object) -> str:
    base = {"sub": "u", "tenantId": "t1", "role": "admin", "exp": int(time.time()) + 60, "jti": "j"}
    base.update(claims)
    return jwt.encode({k: v for k, v in base.items() if v is not None}, SECRET, algorithm="HS256")


@pytest.mark.parametrize(
    "auth",
    [None, "Token abc", "Bearer", "Bearer not.a.jwt", f"Bearer {_token(exp=int(time.time()) - 60)}",
     "Bearer " + jwt.encode({"sub": "u", "tenantId": "t1", "role": "admin", "exp": int(time.time()) + 60, "jti": "j"},
                            "another-secret-of-the-same-length-123456", algorithm="HS256"),
     f"Bearer {_token(role='root')}", f"Bearer {_token(tenantId=None)}", f"Bearer {_token(jti=None)}",
     f"Bearer {_token(exp=10**400)}"],  # signed, but its exp is past a float's range: was a 500
)
async def test_missing_malformed_expired_or_forged_tokens_are_401(client: object, auth: str | None) -> None:
    """Every token problem is a 401 in the envelope, with a request id and rate-limit headers."""
    headers = {"X-Tenant-ID": "t1"}
    if auth:
        headers["Authorization"] = auth
    resp = await client.get("/api/v1/connectors", headers=headers)
    body = await resp.json()
    assert resp.status == 401
    assert body["success"] is False and body["error"]["code"] == "UNAUTHORIZED"
    assert body["error"]["requestId"].startswith("req_") and isinstance(body["error"]["details"], dict)
    for h in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"):
        assert h in resp.headers


async def test_a_tokens_audience_must_be_the_one_configured(start_relay: object) -> None:
    """An identity provider's tokens name an audience (``aud``). Without
    ``MC_RELAY_JWT_AUDIENCE`` such a token is refused, the message naming the variable (it
    was minted for some service; PyJWT's bare refusal said only "not valid"); with it, a
    token must name one of the configured audiences."""

    async def status(client: object, token: str) -> tuple[int, str]:
        resp = await client.get("/api/v1/connectors", headers={"Authorization": f"Bearer {token}", "X-Tenant-ID": "t1"})
        return resp.status, (await resp.json()).get("error", {}).get("message", "")

    plain = await start_relay()
    assert (await status(plain, _token()))[0] == 200
    code, message = await status(plain, _token(aud="mini-relay"))
    assert code == 401 and "MC_RELAY_JWT_AUDIENCE" in message
    strict = await start_relay(jwt_audience="mini-relay, relay.example")
    for token, expected in ((_token(aud="mini-relay"), 200), (_token(aud=["x", "relay.example"]), 200),
                            (_token(aud="other-api"), 401), (_token(), 401)):  # fmt: skip
        code, message = await status(strict, token)
        assert code == expected, (token, message)
        assert code == 200 or "aud" in message


async def test_tenant_header_must_match_the_token(client: object) -> None:
    """X-Tenant-ID different from the token's tenant is 403; missing is 401."""
    resp = await client.get("/api/v1/connectors", headers={"Authorization": f"Bearer {_token()}", "X-Tenant-ID": "t2"})
    assert resp.status == 403 and (await resp.json())["error"]["code"] == "FORBIDDEN"
    resp = await client.get("/api/v1/connectors", headers={"Authorization": f"Bearer {_token()}"})
    assert resp.status == 401


def test_every_authenticated_route_is_in_the_roles_table(client: object) -> None:
    """The role table and the router agree: no protected route falls through to a default."""
    from relay.web.middleware import PUBLIC_ROUTES

    names = {r.name for r in client.server.app.router.routes() if r.name}
    assert names - PUBLIC_ROUTES - {"events"} == set(ROUTES)
    assert set(ROUTE_ROLES) == set(ROUTES) | {"events"}


@pytest.mark.parametrize("route", sorted(ROUTES))
@pytest.mark.parametrize("role", ["admin", "service", "support"])
async def test_roles_table_is_enforced(api: Api, route: str, role: str) -> None:
    """Each role reaches exactly the routes the table allows (403 otherwise)."""
    method, path, body = ROUTES[route]
    status, out, _ = await api.as_(role).call(method, path, json=body)
    if role in ROUTE_ROLES[route]:
        assert status != 403, (route, role, out)
    else:
        assert status == 403 and out["error"]["code"] == "FORBIDDEN", (route, role, out)


def test_roles_match_the_contract() -> None:
    """support never writes nor reads results; service never writes connectors."""
    for name, roles in ROUTE_ROLES.items():
        method = ROUTES.get(name, ("GET",))[0]
        if method != "GET" or name == "jobs.results":
            assert "support" not in roles, name
        if name.startswith("connectors.") and method != "GET":
            assert roles == {"admin"}, name
    assert "service" in ROUTE_ROLES["jobs.results"] and "service" in ROUTE_ROLES["jobs.cancel"]


async def test_unknown_route_and_wrong_method_are_enveloped(api: Api, client: object) -> None:
    """Unknown routes are 404 and wrong methods 405, both in the envelope."""
    status, body, _ = await api.call("GET", "/nothing-here")
    assert status == 404 and body["error"]["code"] == "NOT_FOUND"
    resp = await client.put("/api/v1/jobs", headers=api.headers())
    body = await resp.json()
    assert resp.status == 405 and body["success"] is False


async def test_bad_json_is_400_and_big_body_is_413(api: Api, client: object) -> None:
    """Malformed JSON: 400 BAD_REQUEST; a body past the limit: 413 PAYLOAD_TOO_LARGE.
    (aiohttp labels bytes application/octet-stream, which is 415: tests/relay/api/test_request_bodies.py.)"""
    headers = api.headers(**{"Content-Type": "application/json"})
    resp = await client.post("/api/v1/connectors", data=b"{not json", headers=headers)
    body = await resp.json()
    assert resp.status == 400 and body["error"]["code"] == "BAD_REQUEST"
    resp = await client.post("/api/v1/connectors", data=b"[1, 2]", headers=headers)
    assert resp.status == 400
    big = b'{"name": "' + b"x" * (2 << 20) + b'", "os": "linux"}'
    resp = await client.post("/api/v1/jobs", data=big, headers=headers)
    body = await resp.json()
    assert resp.status == 413 and body["error"]["code"] == "PAYLOAD_TOO_LARGE"


async def test_rate_limit_headers_and_429(start_relay: object) -> None:
    """Every response carries the limit headers; past the limit: 429 RATE_LIMITED with Retry-After."""
    client = await start_relay(rate_limit_per_minute=3)
    api = Api(client)
    remaining = []
    for _ in range(3):
        _, _, resp = await api.call("GET", "/connectors", expect=200)
        assert resp.headers["X-RateLimit-Limit"] == "3"
        assert int(resp.headers["X-RateLimit-Reset"]) > time.time() - 1
        remaining.append(int(resp.headers["X-RateLimit-Remaining"]))
    assert remaining == [2, 1, 0]
    status, body, resp = await api.call("GET", "/connectors")
    assert status == 429 and body["error"]["code"] == "RATE_LIMITED"
    assert int(resp.headers["Retry-After"]) >= 1 and resp.headers["X-RateLimit-Remaining"] == "0"
    # Another token has its own budget.
    _, _, resp = await api.as_("service").call("GET", "/connectors", expect=200)
    assert resp.headers["X-RateLimit-Remaining"] == "2"


async def test_internal_errors_have_no_stack_trace(api: Api, client: object) -> None:
    """An unexpected failure is 500 INTERNAL_ERROR without a trace in the body."""
    relay = relay_of(client)
    await relay.store.close()  # the store's pool is gone: store calls now raise
    status, body, _ = await api.call("GET", "/connectors")
    assert status == 500 and body["error"]["code"] == "INTERNAL_ERROR"
    assert "Traceback" not in str(body) and "File " not in str(body)


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("TRACE", "/api/v1/health", {"GET", "HEAD"}),
    ("PUT", "/api/v1/jobs", {"GET", "HEAD", "POST"}),
    ("DELETE", "/api/v1/jobs/job_x", {"GET", "HEAD"}),
    ("PATCH", "/openapi.json", {"GET", "HEAD"}),
])  # fmt: skip
async def test_a_method_the_route_does_not_take_is_405_with_allow(
    client: object, method: str, path: str, allowed: set[str]
) -> None:
    """405 in the envelope, with the Allow header RFC 9110 asks for (it was dropped when
    the error was wrapped), for public and authenticated routes alike."""
    resp = await client.request(method, path)  # type: ignore[attr-defined]
    assert resp.status == 405
    assert {m.strip() for m in resp.headers["Allow"].split(",")} == allowed
    assert (await resp.json())["error"]["code"] == "METHOD_NOT_ALLOWED"


async def test_a_forbidden_request_carries_the_tokens_rate_limit_headers(start_relay: object) -> None:
    """A 403 (a role without the right, or X-Tenant-ID not the token's tenant) is an
    authenticated request: it carries the rate-limit headers every response has, the
    second time as the first (once the token was known, they were missing), and it counts
    against the token, whose quota ends in 429 like any other request's."""
    client = await start_relay(rate_limit_per_minute=3)
    support = Api(client, role="support")
    seen = []
    for _ in range(3):
        status, body, resp = await support.call("POST", "/connectors", json={"name": "n", "os": "linux"})
        assert status == 403 and body["error"]["code"] == "FORBIDDEN", body
        assert resp.headers["X-RateLimit-Limit"] == "3", dict(resp.headers)
        assert int(resp.headers["X-RateLimit-Reset"]) > time.time() - 1
        seen.append(int(resp.headers["X-RateLimit-Remaining"]))
    assert seen == [2, 1, 0]
    status, body, resp = await support.call("POST", "/connectors", json={"name": "n", "os": "linux"})
    assert status == 429 and body["error"]["details"]["retryAfter"] == int(resp.headers["Retry-After"])
    admin = Api(client, role="admin")
    for expected in ("2", "1"):
        resp = await client.get("/api/v1/connectors", headers=admin.headers(**{"X-Tenant-ID": "t2"}))
        assert resp.status == 403 and resp.headers["X-RateLimit-Remaining"] == expected, dict(resp.headers)


async def test_a_body_that_does_not_match_its_content_encoding_is_400(api: Api, client: object) -> None:
    """``Content-Encoding: gzip`` on a body that is not gzip: 400 BAD_REQUEST in the
    envelope (it was a 500 INTERNAL_ERROR, logged with a stack), and the connection is
    not kept (the next request on this client works). A real gzip body is read; a gzip
    bomb past the body limit is 413."""
    import gzip

    headers = {**api.headers(), "Content-Encoding": "gzip", "Content-Type": "application/json"}
    resp = await client.post("/api/v1/connectors", data=b'{"name": "n", "os": "linux"}', headers=headers)
    body = await resp.json()
    assert resp.status == 400 and body["error"]["code"] == "BAD_REQUEST", body
    assert "Content-Encoding" in body["error"]["message"]
    assert resp.headers["Connection"] == "close"  # the rest of that body is unreadable: no reuse
    resp = await client.post("/api/v1/connectors", data=gzip.compress(b'{"name": "gz", "os": "linux"}'),
                             headers=headers)  # fmt: skip
    assert resp.status == 201 and (await resp.json())["data"]["name"] == "gz"
    bomb = gzip.compress(b'{"name": "' + b"x" * (8 << 20) + b'", "os": "linux"}')
    resp = await client.post("/api/v1/connectors", data=bomb, headers=headers)
    assert resp.status == 413 and (await resp.json())["error"]["code"] == "PAYLOAD_TOO_LARGE"
