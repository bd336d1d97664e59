"""Platform tokens and roles.

Tokens are JWTs: HS256 with the relay's secret, or RS256 with a configured public key,
carrying ``sub``, ``tenantId``, ``role``, ``exp`` and ``jti``. ``X-Tenant-ID`` must name
the token's tenant. What each role may do is ONE table, ``ROUTE_ROLES``, keyed by the
route names the app registers; a route missing from it is open to admins only.
"""

from __future__ import annotations

import collections
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Final

import jwt

from shared.errors import Forbidden, Unauthorized

LEEWAY: Final = 5  # seconds of clock skew accepted on exp
ROLES: Final = ("admin", "service", "support")
ADMIN, SERVICE, SUPPORT = ROLES

_ALL = frozenset(ROLES)
_READERS = frozenset({ADMIN, SERVICE, SUPPORT})
_WORKERS = frozenset({ADMIN, SERVICE})
_ADMIN = frozenset({ADMIN})

# route name -> roles allowed. The contract's roles section, as data.
ROUTE_ROLES: Final[dict[str, frozenset[str]]] = {
    "connectors.create": _ADMIN,
    "connectors.list": _READERS,
    "connectors.get": _READERS,
    "connectors.update": _ADMIN,
    "connectors.delete": _ADMIN,
    "connectors.rotate_key": _ADMIN,
    "connectors.logs": _ALL - {SERVICE},
    "connectors.metrics": _ALL - {SERVICE},
    "jobs.create": _WORKERS,
    "jobs.list": _READERS,
    "jobs.get": _READERS,
    "jobs.cancel": _WORKERS,
    "jobs.results": _WORKERS,
    "events": _READERS,
}

# Narrow exceptions to the table: a role may call a route it is not listed for, changing
# only these fields (the handler calls ``check_fields``). The one case: support raises an
# agent's shipped log level for a while to debug it (docs/SECURITY.md, docs/OPERATIONS.md);
# it is the only write support may make.
FIELD_GRANTS: Final[dict[str, dict[str, frozenset[str]]]] = {
    "connectors.update": {SUPPORT: frozenset({"logLevel", "logLevelMinutes"})},
}


@dataclass(frozen=True)
class Principal:
    sub: str
    tenant_id: str
    role: str
    jti: str
    exp: float = field(default=math.inf, compare=False)  # the token's expiry (epoch s)


class TokenVerifier:
    """Checks tokens with the configured secret and/or public key."""

    CACHE_SIZE = 1024  # distinct tokens remembered (a platform reuses its token)

    def __init__(self, secret: str | None, public_key: str | None = None, audience: str | None = None) -> None:
        self._secret = secret
        self._public_key = public_key
        # MC_RELAY_JWT_AUDIENCE (comma-separated): the ``aud`` a token must name. Unset, a
        # token that names one is refused: it was minted for some other service.
        self._audience = [a.strip() for a in audience.split(",") if a.strip()] if audience else None
        # token -> (principal, exp): a verified token is not verified again until it
        # expires. Verifying (signature + JSON) was ~4 % of the relay on small jobs.
        self._verified: collections.OrderedDict[str, tuple[Principal, float]] = collections.OrderedDict()

    def verify(self, token: str) -> Principal:
        hit = self._verified.get(token)
        if hit is not None:
            if time.time() <= hit[1] + LEEWAY:
                self._verified.move_to_end(token)
                return hit[0]
            del self._verified[token]  # expired: verify it again, which says so
        principal, exp = self._verify(token)
        self._verified[token] = (principal, exp)
        if len(self._verified) > self.CACHE_SIZE:
            self._verified.popitem(last=False)
        return principal

    def known(self, token: str) -> bool:
        """Was ``token`` verified before and is it still unexpired? (No verification here:
        an address over its failed-authentication limit still lets such tokens through.)"""
        hit = self._verified.get(token)
        return hit is not None and time.time() <= hit[1] + LEEWAY

    def _verify(self, token: str) -> tuple[Principal, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthorized("the bearer token is not a valid JWT") from exc
        alg = header.get("alg")
        if alg == "HS256" and self._secret:
            key: str = self._secret
        elif alg == "RS256" and self._public_key:
            key = self._public_key
        else:
            raise Unauthorized("the bearer token's signing algorithm is not accepted")
        try:
            claims = jwt.decode(
                token, key, algorithms=[alg], audience=self._audience,
                options={"require": ["sub", "exp", "jti"]}, leeway=LEEWAY,
            )  # fmt: skip
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("the bearer token has expired") from exc
        except (jwt.InvalidAudienceError, jwt.MissingRequiredClaimError) as exc:
            if self._audience is None:
                raise Unauthorized("the bearer token names an audience (aud) and this relay expects none: "
                                   "set MC_RELAY_JWT_AUDIENCE to the audience its tokens carry") from exc
            if isinstance(exc, jwt.MissingRequiredClaimError) and exc.claim != "aud":
                raise Unauthorized("the bearer token is not valid") from exc
            raise Unauthorized("the bearer token's audience (aud) is not this relay's "
                               "(MC_RELAY_JWT_AUDIENCE)") from exc
        except jwt.InvalidSignatureError as exc:
            raise Unauthorized("the bearer token's signature is not valid") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized("the bearer token is not valid") from exc
        tenant, role = claims.get("tenantId"), claims.get("role")
        if not isinstance(tenant, str) or not tenant or len(tenant) > 200:
            raise Unauthorized("the bearer token has no tenantId claim")
        if role not in ROLES:
            raise Unauthorized("the bearer token's role is not one of admin, service, support")
        try:
            exp = float(claims["exp"])
        except OverflowError:  # an integer past a float's range (10**400): no time at all
            raise Unauthorized("the bearer token is not valid") from None
        return Principal(str(claims["sub"]), tenant, role, str(claims["jti"]), exp), exp


def bearer(header: str | None) -> str:
    if not header:
        raise Unauthorized("an Authorization: Bearer token is required")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <token>'")
    return token.strip()


def check_tenant(principal: Principal, header_tenant: str | None) -> None:
    if not header_tenant:
        raise Unauthorized("the X-Tenant-ID header is required")
    if header_tenant != principal.tenant_id:
        raise Forbidden("X-Tenant-ID does not match the token's tenant")


def check_role(principal: Principal, route_name: str) -> None:
    allowed = ROUTE_ROLES.get(route_name, _ADMIN)
    if principal.role not in allowed and principal.role not in FIELD_GRANTS.get(route_name, {}):
        raise Forbidden(f"the {principal.role} role may not do this")


def check_fields(principal: Principal, route_name: str, fields: set[str]) -> None:
    """A role admitted by ``FIELD_GRANTS`` only: 403 unless every field is granted to it."""
    if principal.role in ROUTE_ROLES.get(route_name, _ADMIN):
        return
    granted = FIELD_GRANTS.get(route_name, {}).get(principal.role, frozenset())
    if not fields or fields - granted:
        raise Forbidden(f"the {principal.role} role may only change {' and '.join(sorted(granted))} here")


def make_token(
    secret: str, tenant: str, role: str, ttl: float = 3600, *, sub: str | None = None
) -> str:
    """An HS256 platform token (what ``mini-relay token`` prints)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    issued = int(time.time())
    claims = {
        "sub": sub or f"{role}@{tenant}",
        "tenantId": tenant,
        "role": role,
        "iat": issued,
        "exp": issued + int(ttl),
        "jti": secrets.token_hex(12),
    }
    return jwt.encode(claims, secret, algorithm="HS256")
