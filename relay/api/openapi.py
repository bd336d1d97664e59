"""``GET /openapi.json``: the OpenAPI 3.1 document of every route, kept in this one module.

A test walks the app's router and fails if a route is missing here, and validates the
document with openapi-spec-validator.
"""

from __future__ import annotations

from typing import Any, Final

import orjson
from aiohttp import web

from shared.protocol import LOG_LEVELS, OPERATIONS

from ..agents.connector_status import STATUSES as CONNECTOR_STATUSES
from ..jobs.lifecycle import MAX_JOB_KEY, OPTIONS
from ..jobs.lifecycle import STATUSES as JOB_STATUSES
from .common import relay_of
from .job_spec import MAX_SEALED_BYTES

S = dict[str, Any]


def _ref(name: str) -> S:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(kind: str, **extra: Any) -> S:
    return {"type": [kind, "null"], **extra}


TIME = _nullable("string", format="date-time")
DATE_TIME = {"type": "string", "format": "date-time", "description": "RFC 3339, e.g. 2026-12-04T03:00:00Z"}


def _option(name: str) -> S:
    """A job option's schema, from the lifecycle's one table of options and defaults."""
    kind, lo, hi, default, nullable = OPTIONS[name]
    bounds = {"minimum": lo, "maximum": hi, "default": default}
    if nullable:
        return _nullable("integer" if kind == "int" else "number", **bounds)
    return {"type": "integer" if kind == "int" else "number", **bounds}
# Connector names: no control characters (C0, DEL, C1), line/paragraph separators or
# bidirectional formatting characters (relay/api/common.py, check_plain_text).
# Some character that Python's str.strip() keeps (the relay's test of "blank"): spelled
# out, because \S differs between regex engines (\x1c-\x1f, \x85, \ufeff).
NOT_BLANK = r"[^\t\n\x0b\x0c\r \x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
PLAIN_TEXT = r"^[^\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]*$"
NAME = {"type": "string", "minLength": 1, "maxLength": 100,
        "allOf": [{"pattern": PLAIN_TEXT}, {"pattern": NOT_BLANK}]}
# An identifier or name: at least one character that is not white space.
TEXT_ID = {"type": "string", "minLength": 1, "maxLength": 64, "pattern": NOT_BLANK}
# Standard base64 with padding, at least one byte.
BASE64 = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{4})$"
# The shapes of a clear query, told apart by their first key in this order (job_spec.py).
QUERY_SHAPE = {"type": "object", "anyOf": [
    {"required": ["sql"], "properties": {
        "sql": {"type": "string", "minLength": 1, "maxLength": 256 * 1024, "pattern": NOT_BLANK},
        "params": {"type": ["object", "null"], "description": "named parameters"}}},
    {"required": ["entity"], "not": {"required": ["sql"]},
     "properties": {"entity": {"type": "string", "minLength": 1}}},
    {"required": ["collection"], "not": {"anyOf": [{"required": ["sql"]}, {"required": ["entity"]}]},
     "properties": {"collection": {"type": "string", "minLength": 1}}},
]}
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
        "properties": {
            **{k: {"type": "string"} for k in ("id", "name", "apiKey", "apiKeyPrefix", "setupInstructions")},
            "downloadUrl": _nullable("string", description="the agent build for this os: a path on this "
                                     "relay (/downloads/...), or under MC_RELAY_DOWNLOADS_URL; null when "
                                     "the relay serves none (docs/OPERATIONS.md)"),
        },
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
        "description": "A query job carries query (its shape by the source's type) or sealedQuery, "
                       "never both; discover and test take neither (one given is ignored).",
        "properties": {
            "connectorId": TEXT_ID, "source": {**TEXT_ID, "maxLength": 200},
            "operation": {"enum": list(OPERATIONS), "default": "query"},
            "query": {"type": ["object", "null"], "description": "SQL: {sql, params}; sap_b1: {entity, "
                      "select, filter, orderBy, top}; tally: {collection, fields, company, fromDate, "
                      "toDate, filter}. The relay checks the key that names the shape (sql, entity or "
                      "collection); the agent checks the rest against the source"},
            "sealedQuery": _nullable("string", pattern=BASE64, maxLength=4 * (MAX_SEALED_BYTES // 3 + 1),
                                     description="the query sealed to the connector's publicKey "
                                                 "(docs/API.md, Sealing a job), base64"),
            "options": {"anyOf": [_ref("JobOptions"), {"type": "null"}]},
        },
        "allOf": [
            # never both query and sealedQuery
            {"not": {"required": ["query", "sealedQuery"],
                     "properties": {"query": {"type": "object"}, "sealedQuery": {"type": "string"}}}},
            # a query job (operation left out means query) needs one of them, query in a known shape
            {"if": {"anyOf": [{"not": {"required": ["operation"]}},
                              {"required": ["operation"], "properties": {"operation": {"const": "query"}}}]},
             "then": {"anyOf": [
                 {"required": ["sealedQuery"], "properties": {"sealedQuery": {"type": "string"}}},
                 {"required": ["query"], "properties": {"query": QUERY_SHAPE}},
             ]}},
        ],
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


TENANT_HEADER: S = {"name": "X-Tenant-ID", "in": "header", "required": True, "schema": {"type": "string"},
                    "description": "the tenant; must match the token's tenantId"}


def _op(op_id: str, summary: str, responses: S, *, params: list[S] | None = None,
        body: str | None = None, public: bool = False, tags: str = "relay", events: bool = False) -> S:  # fmt: skip
    op: S = {"operationId": op_id, "summary": summary, "tags": [tags],
             "responses": {**responses, **({} if public else _ERRORS)}}  # fmt: skip
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(body)}}}
    if public:
        op["security"] = []
    elif events:  # the token names the tenant; X-Tenant-ID, when sent, must match it
        op["parameters"] = [*op.get("parameters", []), {**TENANT_HEADER, "required": False}]
    else:
        op["parameters"] = [*op.get("parameters", []), {"$ref": "#/components/parameters/TenantId"}]
    return op


def _q(name: str, schema: S, description: str = "") -> S:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"},
      "description": "the connector's or job's id (con_... or job_...)"}
PAGE = [_q("page", {"type": "integer", "minimum": 1, "maximum": 1_000_000, "default": 1}, "page number, from 1"),
        _q("limit", {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}, "items a page")]


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
                   params=[_q("status", {"enum": list(CONNECTOR_STATUSES)}, "only connectors in this status"), *PAGE]),
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
                       {"200": _json(_ok(_ref("RotatedKey")), "new key"),
                        "409": {**ERR, "description": "CONNECTOR_REVOKED: a revoked connector gets no new key"}},
                       params=[ID]),
                 "requestBody": {"required": False, "content": {"application/json": {
                     "schema": _ref("RotateKeyRequest")}}}},
    },
    "/api/v1/connectors/{id}/logs": {
        "get": _op("getConnectorLogs", "The agent's shipped log lines, oldest first",
                   {"200": _json(_ok(_ref("LogPage")), "log lines")},
                   params=[ID, _q("level", {"enum": [*LOG_LEVELS, *(v.lower() for v in LOG_LEVELS)], "default": "DEBUG"},
                              "the lowest level shown (either case)"),
                           _q("since", DATE_TIME, "lines logged at or after this time"),
                           _q("until", DATE_TIME, "lines logged at or before this time"),
                           _q("jobId", {"type": "string", "minLength": 1}, "only lines about this job"),
                           _q("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}, "lines a page"),
                           _q("cursor", {"type": "integer", "minimum": 0, "maximum": 10**18 - 1},
                              "the previous page's nextCursor")]),
    },
    "/api/v1/connectors/{id}/metrics": {
        "get": _op("getConnectorMetrics", "Heartbeat samples (kept 24 h)",
                   {"200": _json(_ok({"type": "array", "items": _ref("MetricSample")}), "samples")},
                   params=[ID, _q("since", DATE_TIME, "samples at or after this time (at most 24 h back)")]),
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
                   params=[_q("connectorId", {"type": "string", "minLength": 1}, "only this connector's jobs"),
                           _q("status", {"enum": list(JOB_STATUSES)}, "only jobs in this status"), *PAGE]),
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
                   params=[ID, _q("format", {"enum": ["ndjson", "csv"], "default": "ndjson"}, "rows as NDJSON or CSV"),
                           _q("offset", {"type": "integer", "minimum": 0, "maximum": 10**15, "default": 0},
                              "start at this row (0 is the first): resume a cut download"),
                           _q("csvFormulas", {"enum": ["escape", "raw"], "default": "escape"},
                              "CSV (ignored for NDJSON): 'escape' (default) prefixes ' to text cells starting with = + - @ tab "
                              "or CR, so spreadsheets show them instead of running them (plain numbers in "
                              "integer/number/decimal columns stay as they are); 'raw' writes every cell as is")]),
    },
    "/api/v1/events": {
        "get": _op("events", "Tenant events over a WebSocket: connector_status_changed, job_started, job_completed",
                   WS_UPGRADE, params=[_q("token", {"type": "string", "minLength": 1},
                                          "the bearer token, for clients (browsers) that cannot set "
                                          "Authorization on a WebSocket")], events=True),
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
    "/console": {
        "get": _op("getConsole", "The support and admin web console (HTML; docs/CONSOLE.md). It signs in "
                   "in the browser with a token (the form, or /console#token=<JWT>&to=<view>) and calls "
                   "this API; strict Content-Security-Policy",
                   {"200": {"description": "the console page",
                            "headers": {"Content-Security-Policy": {"schema": {"type": "string"}}},
                            "content": {"text/html": {"schema": {"type": "string"}}}},
                    "429": LIMITED}, public=True, tags="console"),
    },
    "/console/assets/{name}": {
        "get": _op("getConsoleAsset", "A console asset, named by its content hash (cached for a year)",
                   {"200": {"description": "a script or style sheet", "content": {
                       "text/javascript": {"schema": {"type": "string"}}, "text/css": {"schema": {"type": "string"}}}},
                    "404": ERR, "429": LIMITED},
                   params=[{"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
                            "description": "the hashed file name the console page names"}],
                   public=True, tags="console"),
    },
    "/downloads/{name}": {
        "get": _op("getDownload", "An agent build from the relay's downloads folder (X-Checksum-SHA256 "
                   "header); <name>.sha256 is its checksum line, SHA256SUMS lists them all",
                   {"200": {"description": "the file, or a checksum text",
                            "headers": {"X-Checksum-SHA256": {"schema": {"type": "string"}}},
                            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                                        "text/plain": {"schema": {"type": "string"}}}},
                    "404": ERR, "429": LIMITED},
                   params=[{"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
                            "description": "a file name from SHA256SUMS, or that name with .sha256"}],
                   public=True, tags="operations"),
    },
}  # fmt: skip


def _link(op_id: str, description: str, *, body: S | None = None) -> S:
    link: S = {"operationId": op_id, "description": description}
    if body is None:
        link["parameters"] = {"id": "$response.body#/data/id"}
    else:
        link["requestBody"] = body
    return link


# OpenAPI links: what a created connector or job's id leads to (clients and stateful
# fuzzers follow them; schemathesis's stateful phase does, in `make fuzz-api`).
_CONNECTOR_LINKS: Final = {
    "GetConnector": _link("getConnector", "the connector just created"),
    "UpdateConnector": _link("updateConnector", "rename it or raise its log level"),
    "RotateConnectorKey": _link("rotateConnectorKey", "issue it a new API key"),
    "GetConnectorLogs": _link("getConnectorLogs", "its agent's log lines"),
    "GetConnectorMetrics": _link("getConnectorMetrics", "its heartbeat samples"),
    "CreateJob": _link("createJob", "a job for it", body={"connectorId": "$response.body#/data/id"}),
    "DeleteConnector": _link("deleteConnector", "revoke it"),
}
_JOB_LINKS: Final = {
    "GetJob": _link("getJob", "the job's metadata"),
    "GetJobResults": _link("getJobResults", "its rows"),
    "CancelJob": _link("cancelJob", "cancel it"),
}
PATHS["/api/v1/connectors"]["post"]["responses"]["201"]["links"] = _CONNECTOR_LINKS
for _status in ("200", "202"):
    PATHS["/api/v1/jobs"]["post"]["responses"][_status]["links"] = _JOB_LINKS


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
            "parameters": {"TenantId": TENANT_HEADER},
            "responses": {"Error": _json(_ref("Error"), "an error, in the envelope"),
                          "RateLimited": RATE_LIMITED},
        },
    }  # fmt: skip


async def get(request: web.Request) -> web.Response:
    return web.Response(body=orjson.dumps(document(relay_of(request).config.version)),
                        content_type="application/json")  # fmt: skip
