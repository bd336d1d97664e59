"""Connectors: register, list, read, rename, revoke, rotate the key."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from shared.errors import ValidationError
from shared.keys import key_prefix

from ..agents import connector_status as cs
from ..agents import loglevel, registration
from ..config import RelayConfig
from ..ids_and_times import iso, now
from ..store import connectors as con_store
from ..web.auth import check_fields
from ..web.clientaddr import public_scheme
from . import downloads
from .common import (
    check_fields_known,
    not_found,
    ok,
    paging,
    principal,
    query_choice,
    read_json,
    relay_of,
    string_field,
)
from .views import connector_view

CREATE_FIELDS = frozenset({"name", "os"})
ROTATE_FIELDS = frozenset({"gracePeriodSeconds"})
PATCH_FIELDS = frozenset({"name"}) | loglevel.FIELDS
OSES = ("linux", "windows")


def _download_url(config: RelayConfig, os_: str) -> str | None:
    """Where this connector's agent build is: a path on this relay when its downloads
    folder holds the build, ``MC_RELAY_DOWNLOADS_URL``'s own place when that is set
    (a CDN the relay cannot check), else None rather than a link that answers 404."""
    name = f"mini-connector-{'windows.exe' if os_ == 'windows' else 'linux'}"
    base = config.downloads_url_base.rstrip("/")
    if base != "/downloads":
        return f"{base}/{name}"
    return f"{base}/{name}" if downloads.serves(config.downloads_dir, name) else None


def _setup(request: web.Request, os_: str, api_key: str, download_url: str | None) -> str:
    # The agent's URL is the WebSocket one: wss:// behind TLS (a trusted proxy's
    # X-Forwarded-Proto counts), ws:// on a plain relay (which agents accept for localhost).
    relay_url = f"{'wss' if public_scheme(request) == 'https' else 'ws'}://{request.host}"
    cfg = f"mini-connector configure --relay-url {relay_url} --api-key {api_key}"
    get = ("Download the agent" if download_url else
           "This relay serves no agent build for this system yet: get it from your provider "
           "(docs/OPERATIONS.md, 'Where the agent comes from')")  # fmt: skip
    if os_ == "windows":
        return (f"{get}; run the installer, then in an administrator prompt: {cfg}; add a source with "
                "'mini-connector source add', then 'mini-connector service install'.")  # fmt: skip
    return (f"{get}, then run: {cfg}; add a source with 'mini-connector source add', "
            "then 'sudo mini-connector service install' (or 'mini-connector run').")  # fmt: skip


async def create(request: web.Request) -> web.Response:
    relay, who = relay_of(request), principal(request)
    body = await read_json(request)
    check_fields_known(body, CREATE_FIELDS)
    name = string_field(body, "name", hi=100, plain=True)
    os_ = body.get("os")
    if os_ not in OSES:
        raise ValidationError("os must be linux or windows", field="os")
    row, api_key = await registration.register_connector(relay.store, who.tenant_id, (name or "").strip(), os_)
    download_url = _download_url(relay.config, os_)
    data = {
        "id": row["id"],
        "name": row["name"],
        "apiKey": api_key,
        "apiKeyPrefix": row["api_key_prefix"],
        "downloadUrl": download_url,
        "setupInstructions": _setup(request, os_, api_key, download_url),
    }
    return ok(data, status=201)


async def list_(request: web.Request) -> web.Response:
    relay, who = relay_of(request), principal(request)
    status = query_choice(request, "status", cs.STATUSES)
    page, limit = paging(request)
    rows, total = await relay.store.run(con_store.list_page, who.tenant_id, status, page, limit)
    previous = await relay.store.run(con_store.previous_keys, [r["id"] for r in rows], now())
    data = [connector_view(r, relay.hub.sessions.get(r["id"]), previous.get(r["id"])) for r in rows]
    return ok(data, meta={"page": page, "limit": limit, "total": total})


async def _load(request: web.Request) -> dict[str, Any]:
    relay, who = relay_of(request), principal(request)
    cid = request.match_info["id"]
    row = await relay.store.run(con_store.get, who.tenant_id, cid)
    if row is None:
        raise not_found("connector", cid)
    return row


async def _view(request: web.Request, row: dict[str, Any]) -> dict[str, Any]:
    relay = relay_of(request)
    previous = await relay.store.run(con_store.previous_keys, [row["id"]], now())
    return connector_view(row, relay.hub.sessions.get(row["id"]), previous.get(row["id"]))


async def get(request: web.Request) -> web.Response:
    return ok(await _view(request, await _load(request)))


async def update(request: web.Request) -> web.Response:
    """Rename (admin), or raise the shipped log level for a while (admin or support:
    the one write support may make, so it can debug an agent; relay/agents/loglevel.py)."""
    relay, who = relay_of(request), principal(request)
    body = await read_json(request)
    check_fields(who, "connectors.update", set(body))
    check_fields_known(body, PATCH_FIELDS)
    if not body:
        raise ValidationError("nothing to change: send name, or logLevel and logLevelMinutes", field="name")
    name = string_field(body, "name", hi=100, plain=True) if "name" in body else None
    raise_to = loglevel.parse_patch(body)
    row = await _load(request)
    fields: dict[str, Any] = {}
    if "name" in body:
        fields["name"] = (name or "").strip()
    if raise_to is not None:
        fields.update(loglevel.store_fields(*raise_to, now()))
    await relay.store.run(con_store.set_fields, row["id"], fields)
    row = await _load(request)
    if raise_to is not None:
        level, until = loglevel.effective(row, now())
        relay.log_levels.note(row["id"], level, until)
        session = relay.hub.sessions.get(row["id"])
        if session is not None and not session.dead:
            await session.send("agent.config.v1", logLevel=level)
    return ok(await _view(request, row))


async def delete(request: web.Request) -> web.Response:
    relay, who = relay_of(request), principal(request)
    await registration.revoke_connector(relay, who.tenant_id, request.match_info["id"])
    return web.Response(status=204)


async def rotate_key(request: web.Request) -> web.Response:
    relay, who = relay_of(request), principal(request)
    grace = relay.config.rotate_grace_seconds
    if request.can_read_body:
        body = await read_json(request)
        check_fields_known(body, ROTATE_FIELDS)
        if "gracePeriodSeconds" in body:
            value = body["gracePeriodSeconds"]
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 30 * 86400:
                raise ValidationError("gracePeriodSeconds must be 0 to 2592000", field="gracePeriodSeconds")
            grace = float(value)
    key, expires = await registration.rotate_key(relay, who.tenant_id, request.match_info["id"], grace)
    return ok({"apiKey": key, "apiKeyPrefix": key_prefix(key), "previousKeyExpiresAt": iso(expires)})
