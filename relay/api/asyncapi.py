"""``GET /api/v1/asyncapi.json``: the AsyncAPI 3.0 document of the two WebSocket routes.

The events stream (``/api/v1/events``) and the agent protocol (``/api/v1/agent/connect``)
are built here from the tables the code validates with: ``relay.events.EVENTS`` (which
``EventBus.publish`` checks every event against) and ``shared.protocol.MESSAGES`` (which
both ends parse every text frame with). A message added to either table appears here
without an edit; tests/relay/api/test_asyncapi.py validates the document against the
AsyncAPI 3.0 JSON Schema and real traffic against its payloads.

The document describes the relay: it *sends* events and ``relay.*``/``job.assign``-style
messages and *receives* what agents send.
"""

from __future__ import annotations

import functools
from typing import Any, Final

import orjson
from aiohttp import web

from shared import protocol
from shared.protocol import AGENT, CHUNK_HEADER, CLOSE_REASONS, MESSAGES
from shared.protocol_schema import fields_schema, message_schema

from ..events import EVENTS
from .common import relay_of

S = dict[str, Any]
EVENTS_CHANNEL: Final = "events"
AGENT_CHANNEL: Final = "agent"


def _event_payload(type_: str) -> S:
    return {"type": "object", "required": ["type", "data", "timestamp"], "properties": {
        "type": {"const": type_},
        "data": fields_schema(EVENTS[type_]),
        "timestamp": {"type": "string", "format": "date-time", "description": "when the relay published it"},
    }}  # fmt: skip


_CHUNK_DESCRIPTION = (
    "A binary frame of result rows, agent to relay: byte 0 is the frame kind (1), byte 1 "
    "the flags (bit 0 zlib, bit 1 zstd when the welcome offered zstdChunks), bytes 2-3 the "
    "header length H (big-endian), then H bytes of JSON header (the ChunkHeader schema, at "
    f"most {protocol.MAX_CHUNK_HEADER} bytes), then the payload: object lines (NDJSON keyed by "
    "the job's column names) or a JSON array of rows, compressed as the flags say. The "
    "relay answers each with job.chunk.ack.v1."
)


def _messages() -> S:
    out: S = {}
    for type_ in EVENTS:
        out[type_] = {"name": type_, "title": type_.replace("_", " "), "contentType": "application/json",
                            "payload": _event_payload(type_)}  # fmt: skip
    for type_, (sender, _) in MESSAGES.items():
        out[type_] = {
            "name": type_, "contentType": "application/json",
            "summary": f"{'agent to relay' if sender == AGENT else 'relay to agent'}, one JSON text frame",
            "payload": message_schema(type_),
        }  # fmt: skip
    out["job.chunk"] = {"name": "job.chunk", "contentType": "application/octet-stream",
                        "summary": "agent to relay, one binary frame", "description": _CHUNK_DESCRIPTION,
                        "payload": {"type": "string", "format": "binary"}}  # fmt: skip
    return out


def _refs(channel: str, names: list[str]) -> list[S]:
    return [{"$ref": f"#/channels/{channel}/messages/{n}"} for n in names]


def document(version: str) -> S:
    agent_sends = [t for t, (who, _) in MESSAGES.items() if who == AGENT] + ["job.chunk"]
    relay_sends = [t for t, (who, _) in MESSAGES.items() if who != AGENT]
    close = "; ".join(f"{code} {name}" for code, (name, _, _) in CLOSE_REASONS.items())
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "mini-relay WebSockets", "version": version,
            "description": "The relay's two WebSocket routes, seen from the relay. The HTTP API is "
                           "in /api/v1/openapi.json; docs/API.md (Events) and docs/ARCHITECTURE.md "
                           "(the agent protocol) tell the story. Built from the tables the relay "
                           "validates with (relay/events.py EVENTS, shared/protocol.py MESSAGES).",
        },
        "defaultContentType": "application/json",
        "servers": {
            "relay": {"host": "relay.example.com", "protocol": "wss",
                      "description": "the relay's own host and port (ws on a loopback or development relay)"},
        },
        "channels": {
            EVENTS_CHANNEL: {
                "address": "/api/v1/events",
                "title": "Tenant events",
                "description": "Text frames, one event each, for the token's tenant. The bearer token "
                               "goes in Authorization or in ?token= (browsers); X-Tenant-ID, when "
                               "sent, must match it. Clients send nothing; events are not stored.",
                "messages": {t: {"$ref": f"#/components/messages/{t}"} for t in EVENTS},
                "bindings": {"ws": {"method": "GET", "query": {"type": "object", "properties": {
                    "token": {"type": "string", "description": "the bearer token"}}}}},
            },
            AGENT_CHANNEL: {
                "address": "/api/v1/agent/connect",
                "title": "Agent protocol",
                "description": "Authorization: Bearer <the connector's API key>. The upgrade is "
                               "refused in the HTTP envelope with 401 (unknown or revoked key), 429 "
                               "(too many handshakes; Retry-After) or 503 (the relay is shutting down; "
                               "Retry-After). The agent sends "
                               "agent.hello.v1 first; the relay answers relay.welcome.v1. Text frames "
                               f"are JSON (at most {protocol.MAX_TEXT_FRAME} bytes), binary frames are "
                               f"chunks (at most {protocol.MAX_BINARY_FRAME} bytes). Close codes: {close}.",
                "messages": {t: {"$ref": f"#/components/messages/{t}"}
                             for t in [*agent_sends, *relay_sends]},
                "bindings": {"ws": {"method": "GET", "headers": {"type": "object", "required": ["Authorization"],
                                    "properties": {"Authorization": {"type": "string",
                                                                     "description": "Bearer <API key>"}}}}},
            },
        },
        "operations": {
            "sendEvents": {"action": "send", "channel": {"$ref": f"#/channels/{EVENTS_CHANNEL}"},
                           "summary": "the relay sends the tenant's events",
                           "security": [{"$ref": "#/components/securitySchemes/bearer"}],
                           "messages": _refs(EVENTS_CHANNEL, list(EVENTS))},
            "receiveFromAgent": {"action": "receive", "channel": {"$ref": f"#/channels/{AGENT_CHANNEL}"},
                                 "summary": "what an agent sends",
                                 "security": [{"$ref": "#/components/securitySchemes/apiKey"}],
                                 "messages": _refs(AGENT_CHANNEL, agent_sends)},
            "sendToAgent": {"action": "send", "channel": {"$ref": f"#/channels/{AGENT_CHANNEL}"},
                            "summary": "what the relay sends an agent",
                            "security": [{"$ref": "#/components/securitySchemes/apiKey"}],
                            "messages": _refs(AGENT_CHANNEL, relay_sends)},
        },
        "components": {
            "messages": _messages(),
            "schemas": {"ChunkHeader": fields_schema(CHUNK_HEADER)},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                           "description": "the platform's token, as for the HTTP API"},
                "apiKey": {"type": "http", "scheme": "bearer", "description": "the connector's API key"},
            },
        },
    }


@functools.cache
def _served(version: str) -> bytes:
    """The document as served: built once per version (the route is public and not
    counted against any limit, so it must cost next to nothing)."""
    return orjson.dumps(document(version))


async def get(request: web.Request) -> web.Response:
    return web.Response(body=_served(relay_of(request).config.version), content_type="application/json")
