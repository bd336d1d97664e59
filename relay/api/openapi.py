"""``GET /openapi.json``: the OpenAPI 3.1 document of every route, kept in this one module.

A test walks the app's router and fails if a route is missing here, and validates the
document with openapi-spec-validator.
"""

from __future__ import annotations

import functools
from typing import Any, Final

import orjson
from aiohttp import web

from shared.protocol import LOG_LEVELS, OPERATIONS

from ..agents.connector_status import STATUSES as CONNECTOR_STATUSES
from ..jobs.lifecycle import MAX_JOB_KEY, OPTIONS
from ..jobs.lifecycle import STATUSES as JOB_STATUSES
from .common import VISIBLE, relay_of
from .job_spec import MAX_SEALED_BYTES

S = dict[str, Any]


def _ref(name: str) -> S:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(kind: str, **extra: Any) -> S:
    return {"type": [kind, "null"], **extra}


def _object(properties: S, *, optional: tuple[str, ...] = (), **extra: Any) -> S:
    """A response object: every property is always present (``required``) except those
    named in ``optional``, so a generated client types them as present."""
    return {"type": "object", "required": [k for k in properties if k not in optional],
            "properties": properties, **extra}  # fmt: skip


# Levels are spelled in lower case in the API (log lines, the level filter, logLevel); the
# relay also takes upper case on input (what agents and Python's logging call them).
LEVELS: Final = [v.lower() for v in LOG_LEVELS]


TIME = _nullable("string", format="date-time")
DATE_TIME = {"type": "string", "format": "date-time", "description": "RFC 3339, e.g. 2026-12-04T03:00:00Z"}


def _option(name: str) -> S:
    """A job option's schema, from the lifecycle's one table of options and defaults."""
    kind, lo, hi, default, nullable = OPTIONS[name]
    # No "default" keyword in a request schema: a generated client sends a default as a
    # value. What the relay does when the field is left out is said in words instead.
    bounds = {"minimum": lo, "maximum": hi, "description": f"left out: {default}"}
    if nullable:
        return _nullable("integer" if kind == "int" else "number", **bounds)
    return {"type": "integer" if kind == "int" else "number", **bounds}
# Connector names: no control characters (C0, DEL, C1), line/paragraph separators or
# bidirectional formatting characters (relay/api/common.py, check_plain_text).
# Some character that Python's str.strip() keeps (the relay's test of "blank"): spelled
# out, because \S differs between regex engines (\x1c-\x1f, \x85, \ufeff).
NOT_BLANK = r"[^\t\n\x0b\x0c\r \x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
PLAIN_TEXT = r"^[^\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]*$"
# ... and some character neither blank nor an invisible format one (common.VISIBLE).
NAME = {"type": "string", "minLength": 1, "maxLength": 100,
        "allOf": [{"pattern": PLAIN_TEXT}, {"pattern": VISIBLE}]}
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
    # "ErrorResponse", not "Error": a generated model named Error with a field named error
    # shadows itself in openapi-python-client's from_dict (a mypy --strict error).
    "ErrorResponse": _object({"success": {"const": False}, "error": _ref("ApiError")}),
    "ApiError": _object({"code": {"type": "string", "description": "docs/API.md, Error codes"},
                         "message": {"type": "string"}, "details": _ref("ErrorDetails"),
                         "requestId": {"type": "string", "description": "also the X-Request-ID header"}}),
    "ErrorDetails": {
        "type": "object", "additionalProperties": True,
        "description": "what the error is about; each key is present only where it applies",
        "properties": {
            "field": {"type": "string", "description": "the request field or query parameter at fault"},
            "retryAfter": {"type": "integer", "description": "RATE_LIMITED: seconds to wait (as Retry-After)"},
            "id": {"type": "string", "description": "NOT_FOUND: the id looked for"},
            "jobId": {"type": "string"}, "status": {"type": "string", "description": "the job's status"},
            "sources": {"type": "array", "items": {"type": "string"},
                        "description": "SOURCE_NOT_FOUND: the sources the connector has"},
        },
    },
    "Meta": _object({"page": {"type": "integer"}, "limit": {"type": "integer"}, "total": {"type": "integer"}}),
    "NewConnector": {
        "type": "object", "required": ["name", "os"], "additionalProperties": False,
        "properties": {"name": NAME, "os": {"enum": ["linux", "windows"]}},
    },
    "ConnectorCreated": _object({
        **{k: {"type": "string"} for k in ("id", "name", "apiKey", "apiKeyPrefix", "setupInstructions")},
        "downloadUrl": _nullable("string", description="the agent build for this os: a path on this "
                                 "relay (/downloads/...), or under MC_RELAY_DOWNLOADS_URL; null when "
                                 "the relay serves none (docs/OPERATIONS.md)"),
    }),
    "Connector": _object({
            "id": {"type": "string"}, "name": {"type": "string"},
            "status": {"enum": list(CONNECTOR_STATUSES)},
            "os": {"type": "string"}, "hostname": _nullable("string"),
            "ipAddress": _nullable("string"), "version": _nullable("string"),
            "lastSeen": TIME, "connectedSince": TIME,
            "cpuUsage": _nullable("number"), "memoryUsage": _nullable("number"),
            "activeJobs": {"type": "integer"}, "capacity": _nullable("integer"),
            "sources": {"type": "array", "items": _object({"name": {"type": "string"}, "type": {"type": "string"}})},
            "apiKeyPrefix": {"type": "string"},
            "previousKeys": {
                "type": "array", "description": "earlier API keys that still work, each until its "
                "expiresAt (rotate-key; gracePeriodSeconds 0 ends them all)",
                "items": _object({"apiKeyPrefix": {"type": "string"},
                                  "expiresAt": {"type": "string", "format": "date-time"}})},
            "publicKey": _nullable("string"),
            "createdAt": {"type": "string", "format": "date-time"},
    }),
    "ConnectorPatch": {
        "type": "object", "additionalProperties": False, "minProperties": 1,
        "description": "Rename (admin), and/or raise the agent's shipped log level for a while "
                       "(admin or support: support may send only logLevel and logLevelMinutes). "
                       "The level reaches a connected agent at once (agent.config.v1), is re-sent "
                       "on every reconnect while it lasts, and goes back to info afterwards; "
                       "logLevel info ends a raise.",
        "properties": {
            "name": NAME,
            "logLevel": {"enum": LEVELS, "description": "the lowest level the agent ships (upper case "
                         "is taken too); info ends a raise"},
            "logLevelMinutes": {"type": "number", "exclusiveMinimum": 0, "maximum": 1440,
                                "description": "how long the level lasts, fractions allowed; left out: 30"},
        },
        "dependentRequired": {"logLevelMinutes": ["logLevel"]},
    },
    "RotateKeyRequest": {"type": "object", "additionalProperties": False, "properties": {
        "gracePeriodSeconds": {"type": "number", "minimum": 0, "maximum": 2592000,
                               "description": "how long every earlier key keeps working; "
                                              "0 ends all of them at once; left out: 86400"}}},
    "RotatedKey": _object({
        "apiKey": {"type": "string"}, "apiKeyPrefix": {"type": "string"},
        "previousKeyExpiresAt": {"type": "string", "format": "date-time"}}),
    "LogPage": _object({
        "connectorId": {"type": "string"},
        "logs": {"type": "array", "items": _object({
            "id": {"type": "string"}, "timestamp": {"type": "string", "format": "date-time"},
            "level": {"enum": LEVELS}, "message": {"type": "string"},
            "logger": _nullable("string"), "jobId": _nullable("string"),
            "receivedAt": _nullable("string", format="date-time",
                                    description="when the relay received the line (its own clock; "
                                    "timestamp is the agent's, clamped to receivedAt + "
                                    "MC_RELAY_AGENT_CLOCK_SKEW)")})},
        "nextCursor": _nullable("string")}),
    "MetricSample": _object({
        "timestamp": {"type": "string", "format": "date-time"}, "cpuUsage": {"type": "number"},
        "memoryUsage": {"type": "number"}, "activeJobs": {"type": "integer"}}),
    "JobOptions": {"type": "object", "additionalProperties": False, "properties": {
        **{name: _option(name) for name in OPTIONS},
        "jobKey": _nullable("string", minLength=1, maxLength=MAX_JOB_KEY, pattern="^[^\u0000]*$")}},
    "NewJob": {
        "type": "object", "required": ["connectorId", "source"], "additionalProperties": False,
        "description": "A query job carries query (its shape by the source's type) or sealedQuery, "
                       "never both; discover and test take neither (one given is ignored).",
        "properties": {
            "connectorId": TEXT_ID, "source": {**TEXT_ID, "maxLength": 200},
            "operation": {"enum": list(OPERATIONS), "description": "left out: query"},
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
    "JobError": _object({"code": {"type": "string"}, "message": {"type": "string"},
                         "retryable": {"type": "boolean"}}),
    "Job": _object({
        "id": {"type": "string"}, "connectorId": {"type": "string"}, "source": {"type": "string"},
        "operation": {"enum": list(OPERATIONS)},
        "status": {"enum": list(JOB_STATUSES)},
        "attempts": {"type": "integer"}, "priority": {"type": "integer"},
        "queuedAt": TIME, "dispatchedAt": TIME, "startedAt": TIME, "completedAt": TIME,
        "durationMs": _nullable("integer"), "rowCount": _nullable("integer"),
        "byteCount": _nullable("integer"),
        "truncated": {"type": "boolean", "description": "maxRows cut the result: the source had more rows"},
        "columns": {"type": "array", "items": _object({"name": {"type": "string"}, "type": {"type": "string"}})},
        "error": {"anyOf": [_ref("JobError"), {"type": "null"}]}, "jobKey": _nullable("string")}),
    "JobCancelled": _object({
        "id": {"type": "string"}, "status": {"const": "cancelled"},
        "cancelledAt": {"type": "string", "format": "date-time"}}),
    "Health": _object({
        "success": {"type": "boolean"}, "status": {"enum": ["healthy", "unhealthy"]},
        "version": {"type": "string"},
        "checks": _object({"database": _object({
            "status": {"type": "string"},
            "disk": {"enum": ["ok", "full"], "description": "full: the store's disk is full; reads work, "
                     "new jobs are refused with 503 (docs/OPERATIONS.md, 'A full disk')"}})}),
        "connectedAgents": {"type": "integer"}}),
    "ResultRow": {"type": "object", "additionalProperties": True,
                  "description": "one row of a job's results: one NDJSON line, keyed by column name "
                                 "(the job's columns, in order)"},
}  # fmt: skip


def _ok(name: str, *, list_: bool = False, paged: bool = True) -> S:
    """The success envelope around component ``name``, itself a named component
    (``<name>Envelope``, ``<name>Page``, ``<name>List``), so operations that answer the
    same thing share one type in a generated client."""
    envelope = f"{name}{('Page' if paged else 'List') if list_ else 'Envelope'}"
    if envelope not in SCHEMAS:
        data = {"type": "array", "items": _ref(name)} if list_ else _ref(name)
        props: S = {"success": {"const": True}, "data": data}
        if list_ and paged:
            props["meta"] = _ref("Meta")
        SCHEMAS[envelope] = {"type": "object", "required": list(props), "properties": props}
    return _ref(envelope)


def _json(schema: S, description: str) -> S:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERR = {"$ref": "#/components/responses/Error"}
LIMITED = {"$ref": "#/components/responses/RateLimited"}
_ERRORS = {"400": ERR, "401": ERR, "403": ERR, "404": ERR, "422": ERR, "429": LIMITED, "500": ERR}
_INT_HEADER = {"schema": {"type": "integer"}}
TOO_LARGE = {**ERR, "description": "PAYLOAD_TOO_LARGE: the body is over 1 MiB"}
NOT_JSON = {**ERR, "description": "UNSUPPORTED_MEDIA_TYPE: a Content-Type other than application/json "
            "(or application/*+json), a charset other than UTF-8, or a Content-Encoding other "
            "than gzip or deflate"}
RATE_LIMITED = {
    **_json(_ref("ErrorResponse"), "RATE_LIMITED: over the token's or the tenant's requests a minute "
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
        op["responses"]["413"] = TOO_LARGE
        op["responses"]["415"] = NOT_JSON
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


# The two WebSocket routes (/api/v1/events, /api/v1/agent/connect) are not HTTP operations
# a client can call: the AsyncAPI document (relay/api/asyncapi.py) describes them.
WEBSOCKET_ROUTES: Final = ("/api/v1/events", "/api/v1/agent/connect")

PATHS: dict[str, S] = {
    "/api/v1/health": _health("getHealth"),
    "/health": _health("getHealthRoot"),
    "/api/v1/openapi.json": _spec("getOpenApi"),
    "/openapi.json": _spec("getOpenApiRoot"),
    "/api/v1/asyncapi.json": {"get": _op("getAsyncApi", "The AsyncAPI 3.0 document of the two WebSocket "
                                         "routes: the events stream and the agent protocol",
                                         {"200": _json({"type": "object"}, "AsyncAPI 3.0")}, public=True)},
    "/api/v1/connectors": {
        "post": _op("createConnector", "Register a connector (the API key is shown once)",
                    {"201": _json(_ok("ConnectorCreated"), "created")}, body="NewConnector"),
        "get": _op("listConnectors", "List connectors",
                   {"200": _json(_ok("Connector", list_=True), "connectors")},
                   params=[_q("status", {"enum": list(CONNECTOR_STATUSES)}, "only connectors in this status"), *PAGE]),
    },
    "/api/v1/connectors/{id}": {
        "get": _op("getConnector", "A connector", {"200": _json(_ok("Connector"), "connector")}, params=[ID]),
        "patch": _op("updateConnector", "Rename a connector, or raise its shipped log level for a while",
                     {"200": _json(_ok("Connector"), "connector")}, params=[ID], body="ConnectorPatch"),
        "delete": _op("deleteConnector", "Revoke a connector and disconnect its agent",
                      {"204": {"description": "revoked (again: 204, no second event)"}}, params=[ID]),
    },
    "/api/v1/connectors/{id}/rotate-key": {
        "post": {**_op("rotateConnectorKey", "Issue a new API key; the old one works until it expires",
                       {"200": _json(_ok("RotatedKey"), "new key"),
                        "409": {**ERR, "description": "CONNECTOR_REVOKED: a revoked connector gets no new key"},
                        "413": TOO_LARGE, "415": NOT_JSON},
                       params=[ID]),
                 "requestBody": {"required": False, "content": {"application/json": {
                     "schema": _ref("RotateKeyRequest")}}}},
    },
    "/api/v1/connectors/{id}/logs": {
        "get": _op("getConnectorLogs", "The agent's shipped log lines, oldest first",
                   {"200": _json(_ok("LogPage"), "log lines")},
                   params=[ID, _q("level", {"enum": LEVELS, "default": "debug"},
                              "the lowest level shown (upper case is taken too)"),
                           _q("since", DATE_TIME, "lines logged at or after this time"),
                           _q("until", DATE_TIME, "lines logged at or before this time"),
                           _q("jobId", {"type": "string", "minLength": 1}, "only lines about this job"),
                           _q("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}, "lines a page"),
                           _q("cursor", {"type": "integer", "minimum": 0, "maximum": 10**18 - 1},
                              "the previous page's nextCursor")]),
    },
    "/api/v1/connectors/{id}/metrics": {
        "get": _op("getConnectorMetrics", "Heartbeat samples (kept 24 h)",
                   {"200": _json(_ok("MetricSample", list_=True, paged=False), "samples")},
                   params=[ID, _q("since", DATE_TIME, "samples at or after this time (at most 24 h back)")]),
    },
    "/api/v1/jobs": {
        "post": _op("createJob", "Submit a job (sealed to the connector on receipt)",
                    {"202": _json(_ok("Job"), "queued (status queued)"),
                     "200": _json(_ok("Job"), "the existing job with this jobKey"),
                     "409": ERR,
                     "422": {**ERR, "description": "a field is invalid (VALIDATION_ERROR), or the "
                             "connector has reported its sources and this is not one (SOURCE_NOT_FOUND)"}},
                    body="NewJob"),
        "get": _op("listJobs", "List jobs", {"200": _json(_ok("Job", list_=True), "jobs")},
                   params=[_q("connectorId", {"type": "string", "minLength": 1}, "only this connector's jobs"),
                           _q("status", {"enum": list(JOB_STATUSES)}, "only jobs in this status"), *PAGE]),
    },
    "/api/v1/jobs/{id}": {
        "get": _op("getJob", "A job's metadata", {"200": _json(_ok("Job"), "job")}, params=[ID]),
    },
    "/api/v1/jobs/{id}/cancel": {
        "post": _op("cancelJob", "Cancel a job", {"200": _json(_ok("JobCancelled"), "cancelled"),
                                                  "409": ERR}, params=[ID]),
    },
    "/api/v1/jobs/{id}/results": {
        "get": _op("getJobResults", "Rows as NDJSON (default) or CSV, streamed while the job runs",
                   {"200": {"description": "rows, streamed: NDJSON, one ResultRow a line, or CSV with a "
                            "header line (docs/API.md, Results). Read it as a stream "
                            "(docs/API.md, A generated client); the body may be larger than memory",
                            "content": {
                       "application/x-ndjson": {"schema": {"type": "string",
                                                           "contentMediaType": "application/x-ndjson"},
                                                "x-itemSchema": _ref("ResultRow")},
                       "text/csv": {"schema": {"type": "string", "contentMediaType": "text/csv"}}}},
                    "409": ERR, "410": ERR},
                   params=[ID, _q("format", {"enum": ["ndjson", "csv"], "default": "ndjson"}, "rows as NDJSON or CSV"),
                           _q("offset", {"type": "integer", "minimum": 0, "maximum": 10**15, "default": 0},
                              "start at this row (0 is the first): resume a cut download"),
                           _q("csvFormulas", {"enum": ["escape", "raw"], "default": "escape"},
                              "CSV (ignored for NDJSON): 'escape' (default) prefixes ' to text cells starting with = + - @ tab "
                              "or CR, so spreadsheets show them instead of running them (plain numbers in "
                              "integer/number/decimal columns stay as they are); 'raw' writes every cell as is")]),
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
                                "X-RateLimit-Remaining and X-RateLimit-Reset of the tighter limit. "
                                "The two WebSocket routes (/api/v1/events, /api/v1/agent/connect) are "
                                "described by the AsyncAPI 3.0 document at /api/v1/asyncapi.json."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                                "metricsToken": {"type": "http", "scheme": "bearer",
                                                 "description": "MC_RELAY_METRICS_TOKEN"}},
            "parameters": {"TenantId": TENANT_HEADER},
            "responses": {"Error": _json(_ref("ErrorResponse"), "an error, in the envelope"),
                          "RateLimited": RATE_LIMITED},
        },
    }  # fmt: skip


@functools.cache
def _served(version: str) -> bytes:
    """The document as served: built once per version (the route is public and not
    counted against any limit, so it must cost next to nothing)."""
    return orjson.dumps(document(version))


async def get(request: web.Request) -> web.Response:
    return web.Response(body=_served(relay_of(request).config.version), content_type="application/json")
