"""``GET /openapi.json``: the OpenAPI 3.1 document of every route, kept in this one module.

A test walks the app's router and fails if a route is missing here, and validates the
document with openapi-spec-validator.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from shared.protocol import LOG_LEVELS

from ..agents.connector_status import STATUSES as CONNECTOR_STATUSES
from ..jobs.lifecycle import MAX_JOB_KEY, OPTIONS
from ..jobs.lifecycle import STATUSES as JOB_STATUSES
from .common import relay_of

S = dict[str, Any]


def _ref(name: str) -> S:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(kind: str, **extra: Any) -> S:
    return {"type": [kind, "null"], **extra}


TIME = _nullable("string", format="date-time")


def _option(name: str) -> S:
    """A job option's schema, from the lifecycle's one table of options and defaults."""
    kind, lo, hi, default, nullable = OPTIONS[name]
    bounds = {"minimum": lo, "maximum": hi, "default": default}
    if nullable:
        return _nullable("integer" if kind == "int" else "number", **bounds)
    return {"type": "integer" if kind == "int" else "number", **bounds}
# Connector names: no control characters (C0, DEL, C1), line/paragraph separators or
# bidirectional formatting characters (relay/api/common.py, check_plain_text).
PLAIN_TEXT = r"^[^\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]*$"
NAME = {"type": "string", "minLength": 1, "maxLength": 100, "pattern": PLAIN_TEXT}
SCHEMAS: dict[str, S] = {
    "Error": {
        "type": "object", "required": ["success", "error"],
        "properties": {
            "success": {"const": False},
            "error": {
                "type": "object", "required": ["code", "message", "details", "requestId"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                               "details": {"type": "object"}, "requestId": {"type": "string"}},
            },
        },
    },
    "Meta": {"type": "object", "properties": {"page": {"type": "integer"},
             "limit": {"type": "integer"}, "total": {"type": "integer"}}},
    "NewConnector": {
        "type": "object", "required": ["name", "os"], "additionalProperties": False,
        "properties": {"name": NAME, "os": {"enum": ["linux", "windows"]}},
    },
    "ConnectorCreated": {
        "type": "object",
        "properties": {k: {"type": "string"} for k in
                       ("id", "name", "apiKey", "apiKeyPrefix", "downloadUrl", "setupInstructions")},
    },
    "Connector": {
        "type": "object",
        "properties": {
            "id": {"type": "string"}, "name": {"type": "string"},
            "status": {"enum": list(CONNECTOR_STATUSES)},
            "os": {"type": "string"}, "hostname": _nullable("string"),
            "ipAddress": _nullable("string"), "version": _nullable("string"),
            "lastSeen": TIME, "connectedSince": TIME,
            "cpuUsage": _nullable("number"), "memoryUsage": _nullable("number"),
            "activeJobs": {"type": "integer"}, "capacity": _nullable("integer"),
            "sources": {"type": "array", "items": {"type": "object", "properties": {
                "name": {"type": "string"}, "type": {"type": "string"}}}},
            "apiKeyPrefix": {"type": "string"},
            "previousKeys": {
                "type": "array", "description": "earlier API keys that still work, each until its "
                "expiresAt (rotate-key; gracePeriodSeconds 0 ends them all)",
                "items": {"type": "object", "required": ["apiKeyPrefix", "expiresAt"], "properties": {
                    "apiKeyPrefix": {"type": "string"}, "expiresAt": {"type": "string", "format": "date-time"}}}},
            "publicKey": _nullable("string"),
            "createdAt": {"type": "string", "format": "date-time"},
        },
    },
    "ConnectorPatch": {
        "type": "object", "additionalProperties": False, "minProperties": 1,
        "description": "Rename (admin), and/or raise the agent's shipped log level for a while "
                       "(admin or support: support may send only logLevel and logLevelMinutes). "
                       "The level reaches a connected agent at once (agent.config.v1), is re-sent "
                       "on every reconnect while it lasts, and goes back to INFO afterwards; "
                       "logLevel INFO ends a raise.",
        "properties": {
            "name": NAME,
            "logLevel": {"enum": list(LOG_LEVELS)},
            "logLevelMinutes": {"type": "number", "exclusiveMinimum": 0, "maximum": 1440, "default": 30,
                                "description": "how long the level lasts; fractions allowed"},
        },
        "dependentRequired": {"logLevelMinutes": ["logLevel"]},
    },
    "RotateKeyRequest": {"type": "object", "additionalProperties": False, "properties": {
        "gracePeriodSeconds": {"type": "number", "minimum": 0, "maximum": 2592000, "default": 86400,
                               "description": "how long every earlier key keeps working; "
                                              "0 ends all of them at once"}}},
    "RotatedKey": {"type": "object", "properties": {
        "apiKey": {"type": "string"}, "apiKeyPrefix": {"type": "string"},
        "previousKeyExpiresAt": {"type": "string", "format": "date-time"}}},
    "LogPage": {"type": "object", "properties": {
        "connectorId": {"type": "string"},
        "logs": {"type": "array", "items": {"type": "object", "properties": {
            "id": {"type": "string"}, "timestamp": {"type": "string", "format": "date-time"},
            "level": {"type": "string"}, "message": {"type": "string"},
            "logger": _nullable("string"), "jobId": _nullable("string"),
            "receivedAt": _nullable("string", format="date-time",
                                    description="when the relay received the line (its own clock; "
                                    "timestamp is the agent's, clamped to receivedAt + "
                                    "MC_RELAY_AGENT_CLOCK_SKEW)")}}},
        "nextCursor": _nullable("string")}},
    "MetricSample": {"type": "object", "properties": {
        "timestamp": {"type": "string", "format": "date-time"}, "cpuUsage": {"type": "number"},
        "memoryUsage": {"type": "number"}, "activeJobs": {"type": "integer"}}},
    "JobOptions": {"type": "object", "additionalProperties": False, "properties": {
        **{name: _option(name) for name in OPTIONS},
        "jobKey": _nullable("string", minLength=1, maxLength=MAX_JOB_KEY)}},
    "NewJob": {
        "type": "object", "required": ["connectorId", "source"], "additionalProperties": False,
        "properties": {
            "connectorId": {"type": "string"}, "source": {"type": "string"},
            "operation": {"enum": ["query", "discover", "test"]},
            "query": {"type": "object", "description": "SQL: {sql, params}; sap_b1: {entity, select, filter, orderBy, top}; tally: {collection, fields, company, fromDate, toDate, filter}"},
            "sealedQuery": {"type": "string", "contentEncoding": "base64"},
            "options": _ref("JobOptions"),
        },
    },
    "JobAccepted": {"type": "object", "properties": {
        "id": {"type": "string"}, "status": {"const": "queued"},
        "queuedAt": {"type": "string", "format": "date-time"}}},
    "JobError": {"type": ["object", "null"], "properties": {
        "code": {"type": "string"}, "message": {"type": "string"}, "retryable": {"type": "boolean"}}},
    "Job": {"type": "object", "properties": {
        "id": {"type": "string"}, "connectorId": {"type": "string"}, "source": {"type": "string"},
        "operation": {"type": "string"},
        "status": {"enum": list(JOB_STATUSES)},
        "attempts": {"type": "integer"}, "priority": {"type": "integer"},
        "queuedAt": TIME, "dispatchedAt": TIME, "startedAt": TIME, "completedAt": TIME,
        "durationMs": _nullable("integer"), "rowCount": _nullable("integer"),
        "byteCount": _nullable("integer"),
        "truncated": {"type": "boolean", "description": "maxRows cut the result: the source had more rows"},
        "columns": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "type": {"type": "string"}}}},
        "error": _ref("JobError"), "jobKey": _nullable("string")}},
    "JobCancelled": {"type": "object", "properties": {
        "id": {"type": "string"}, "status": {"const": "cancelled"},
        "cancelledAt": {"type": "string", "format": "date-time"}}},
    "Health": {"type": "object", "properties": {
        "success": {"type": "boolean"}, "status": {"enum": ["healthy", "unhealthy"]},
        "version": {"type": "string"},
        "checks": {"type": "object", "properties": {"database": {"type": "object", "properties": {
            "status": {"type": "string"}}}}},
        "connectedAgents": {"type": "integer"}}},
}  # fmt: skip


def _ok(schema: S, *, list_: bool = False) -> S:
    props: S = {"success": {"const": True}, "data": {"type": "array", "items": schema} if list_ else schema}
    if list_:
        props["meta"] = _ref("Meta")
    return {"type": "object", "required": ["success", "data"], "properties": props}


def _json(schema: S, description: str) -> S:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERR = {"$ref": "#/components/responses/Error"}
LIMITED = {"$ref": "#/components/responses/RateLimited"}
_ERRORS = {"400": ERR, "401": ERR, "403": ERR, "404": ERR, "422": ERR, "429": LIMITED, "500": ERR}
_INT_HEADER = {"schema": {"type": "integer"}}
RATE_LIMITED = {
    **_json(_ref("Error"), "RATE_LIMITED: over the token's or the tenant's requests a minute "
            "(by role), or too many failed authentications from this address; details.retryAfter "
            "is Retry-After"),
    "headers": {"Retry-After": {**_INT_HEADER, "description": "seconds until the window ends"},
                "X-RateLimit-Limit": _INT_HEADER, "X-RateLimit-Remaining": _INT_HEADER,
                "X-RateLimit-Reset": {**_INT_HEADER, "description": "epoch seconds"}},
}


def _op(op_id: str, summary: str, responses: S, *, params: list[S] | None = None,
        body: str | None = None, public: bool = False, tags: str = "relay") -> S:  # fmt: skip
    op: S = {"operationId": op_id, "summary": summary, "tags": [tags],
             "responses": {**responses, **({} if public else _ERRORS)}}  # fmt: skip
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(body)}}}
    if public:
        op["security"] = []
    else:
        op["parameters"] = [*op.get("parameters", []), {"$ref": "#/components/parameters/TenantId"}]
    return op


def _q(name: str, schema: S, description: str = "") -> S:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
PAGE = [_q("page", {"type": "integer", "minimum": 1}), _q("limit", {"type": "integer", "minimum": 1, "maximum": 100})]


def _health(op_id: str) -> S:
    return {"get": _op(op_id, "Relay health", {"200": _json(_ref("Health"), "healthy"),
                                               "503": _json(_ref("Health"), "unhealthy")}, public=True)}


def _spec(op_id: str) -> S:
    return {"get": _op(op_id, "This document", {"200": _json({"type": "object"}, "OpenAPI 3.1")}, public=True)}


WS_UPGRADE = {"101": {"description": "switching to WebSocket"}}

PATHS: dict[str, S] = {
    "/api/v1/health": _health("getHealth"),
    "/health": _health("getHealthRoot"),
    "/api/v1/openapi.json": _spec("getOpenApi"),
    "/openapi.json": _spec("getOpenApiRoot"),
    "/api/v1/connectors": {
        "post": _op("createConnector", "Register a connector (the API key is shown once)",
                    {"201": _json(_ok(_ref("ConnectorCreated")), "created")}, body="NewConnector"),
        "get": _op("listConnectors", "List connectors",
                   {"200": _json(_ok(_ref("Connector"), list_=True), "connectors")},
                   params=[_q("status", {"enum": list(CONNECTOR_STATUSES)}), *PAGE]),
    },
    "/api/v1/connectors/{id}": {
        "get": _op("getConnector", "A connector", {"200": _json(_ok(_ref("Connector")), "connector")}, params=[ID]),
        "patch": _op("updateConnector", "Rename a connector, or raise its shipped log level for a while",
                     {"200": _json(_ok(_ref("Connector")), "connector")}, params=[ID], body="ConnectorPatch"),
        "delete": _op("deleteConnector", "Revoke a connector and disconnect its agent",
                      {"204": {"description": "revoked (again: 204, no second event)"}}, params=[ID]),
    },
    "/api/v1/connectors/{id}/rotate-key": {
        "post": {**_op("rotateConnectorKey", "Issue a new API key; the old one works until it expires",
                       {"200": _json(_ok(_ref("RotatedKey")), "new key")}, params=[ID]),
                 "requestBody": {"required": False, "content": {"application/json": {
                     "schema": _ref("RotateKeyRequest")}}}},
    },
    "/api/v1/connectors/{id}/logs": {
        "get": _op("getConnectorLogs", "The agent's shipped log lines, oldest first",
                   {"200": _json(_ok(_ref("LogPage")), "log lines")},
                   params=[ID, _q("level", {"type": "string"}), _q("since", {"type": "string", "format": "date-time"}),
                           _q("until", {"type": "string", "format": "date-time"}), _q("jobId", {"type": "string"}),
                           _q("limit", {"type": "integer", "minimum": 1, "maximum": 1000}), _q("cursor", {"type": "string"})]),
    },
    "/api/v1/connectors/{id}/metrics": {
        "get": _op("getConnectorMetrics", "Heartbeat samples (kept 24 h)",
                   {"200": _json(_ok({"type": "array", "items": _ref("MetricSample")}), "samples")},
                   params=[ID, _q("since", {"type": "string", "format": "date-time"})]),
    },
    "/api/v1/jobs": {
        "post": _op("createJob", "Submit a job (sealed to the connector on receipt)",
                    {"202": _json(_ok(_ref("JobAccepted")), "queued"),
                     "200": _json(_ok(_ref("Job")), "the existing job with this jobKey"),
                     "409": ERR, "413": ERR,
                     "422": {**ERR, "description": "a field is invalid (VALIDATION_ERROR), or the "
                             "connector has reported its sources and this is not one (SOURCE_NOT_FOUND)"}},
                    body="NewJob"),
        "get": _op("listJobs", "List jobs", {"200": _json(_ok(_ref("Job"), list_=True), "jobs")},
                   params=[_q("connectorId", {"type": "string"}), _q("status", {"type": "string"}), *PAGE]),
    },
    "/api/v1/jobs/{id}": {
        "get": _op("getJob", "A job's metadata", {"200": _json(_ok(_ref("Job")), "job")}, params=[ID]),
    },
    "/api/v1/jobs/{id}/cancel": {
        "post": _op("cancelJob", "Cancel a job", {"200": _json(_ok(_ref("JobCancelled")), "cancelled"),
                                                  "409": ERR}, params=[ID]),
    },
    "/api/v1/jobs/{id}/results": {
        "get": _op("getJobResults", "Rows as NDJSON (default) or CSV, streamed while the job runs",
                   {"200": {"description": "rows", "content": {
                       "application/x-ndjson": {"schema": {"type": "string"}},
                       "text/csv": {"schema": {"type": "string"}}}},
                    "409": ERR, "410": ERR},
                   params=[ID, _q("format", {"enum": ["ndjson", "csv"]}), _q("offset", {"type": "integer", "minimum": 0}),
                           _q("csvFormulas", {"enum": ["escape", "raw"], "default": "escape"},
                              "CSV only: 'escape' (default) prefixes ' to text cells starting with = + - @ tab "
                              "or CR, so spreadsheets show them instead of running them (plain numbers in "
                              "integer/number/decimal columns stay as they are); 'raw' writes every cell as is")]),
    },
    "/api/v1/events": {
        "get": _op("events", "Tenant events over a WebSocket: connector_status_changed, job_started, job_completed",
                   WS_UPGRADE, params=[{"name": "token", "in": "query", "required": True, "schema": {"type": "string"}}]),
    },
    "/api/v1/agent/connect": {
        "get": _op("agentConnect", "Agent WebSocket (Authorization: Bearer <API key>)",
                   {**WS_UPGRADE, "401": ERR, "429": LIMITED,
                    "503": {**ERR, "description": "the relay is shutting down (Retry-After)"}},
                   public=True, tags="agent"),
    },
    "/metrics": {
        "get": {**_op("getMetrics", "Prometheus metrics (text format): connected agents, jobs by state, "
                      "dispatch latency, result bytes, failed handshakes. Needs Authorization: Bearer "
                      "<MC_RELAY_METRICS_TOKEN> when that is set, else open",
                      {"200": {"description": "Prometheus text exposition format",
                               "content": {"text/plain": {"schema": {"type": "string"}}}},
                       "401": ERR, "429": LIMITED}, public=True, tags="operations"),
                "security": [{}, {"metricsToken": []}]},
    },
    "/downloads/{name}": {
        "get": _op("getDownload", "An agent build from the relay's downloads folder (X-Checksum-SHA256 "
                   "header); <name>.sha256 is its checksum line, SHA256SUMS lists them all",
                   {"200": {"description": "the file, or a checksum text",
                            "headers": {"X-Checksum-SHA256": {"schema": {"type": "string"}}},
                            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                                        "text/plain": {"schema": {"type": "string"}}}},
                    "404": ERR, "429": LIMITED},
                   params=[{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
                   public=True, tags="operations"),
    },
}  # fmt: skip


def document(version: str) -> S:
    return {
        "openapi": "3.1.0",
        "info": {"title": "mini-relay", "version": version,
                 "description": "The Mini Connector relay's HTTP API (v1). Requests are limited "
                                "per token and per tenant by role (admin and support 100 a minute, "
                                "service 120,000 per token); every response carries X-RateLimit-Limit, "
                                "X-RateLimit-Remaining and X-RateLimit-Reset of the tighter limit."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                                "metricsToken": {"type": "http", "scheme": "bearer",
                                                 "description": "MC_RELAY_METRICS_TOKEN"}},
            "parameters": {"TenantId": {"name": "X-Tenant-ID", "in": "header", "required": True,
                                        "schema": {"type": "string"}}},
            "responses": {"Error": _json(_ref("Error"), "an error, in the envelope"),
                          "RateLimited": RATE_LIMITED},
        },
    }  # fmt: skip


async def get(request: web.Request) -> web.Response:
    return web.Response(body=orjson.dumps(document(relay_of(request).config.version)),
                        content_type="application/json")  # fmt: skip
