"""A fake SAP Business One Service Layer, built from SAP's public documentation.

Sources read (via the search tools) and followed here:

- SAP, "Working with SAP Business One Service Layer", User Manual (versions 1.7-1.22,
  e.g. https://studylib.net/doc/25653028/working-with-sap-business-one-service-layer and
  https://kupdf.net/download/working-with-sap-business-one-service-layer-93_5aa75047e2b6f5d85eb97de7_pdf):
  ``POST /b1s/v1|v2/Login`` with ``CompanyDB``/``UserName``/``Password``; the answer carries
  ``SessionId``, ``Version`` and ``SessionTimeout`` (30 minutes by default) and sets the
  ``B1SESSION`` and ``ROUTEID`` cookies; ``POST /Logout``; OData v3 at ``/b1s/v1`` and v4
  at ``/b1s/v2``; ``$select``/``$filter``/``$orderby``/``$top``/``$skip``; server-driven
  paging (default page size 20, ``Prefer: odata.maxpagesize=N`` answered with
  ``Preference-Applied``; "If PageSize or odata.maxpagesize is set to 0, the pagination
  mechanism is turned off"), answered with ``odata.nextLink`` in v1 and
  ``@odata.nextLink`` in v4 (section 3.7.6 "Paginate the Selected Orders", whose v1
  example is the absolute path ``"odata.nextLink": "/b1s/v1/Orders?$skip=20"``);
  ``$metadata`` as CSDL.
- The README of the npm client b1-service-layer-ts (https://www.npmjs.com/package/b1-service-layer-ts)
  shows a v2 answer's next link relative to the service root with the options
  percent-encoded: ``"@odata.nextLink": "Orders?$filter=DocumentStatus%20eq%20%20%27bost_Open%27&$skip=20"``.
  So this fake writes v1 next links as absolute paths and v2 ones as relative links, both
  with each option's value percent-encoded (a ``&`` or ``#`` inside a filter cannot split
  the link).
- The PHP walk-through of the login flow (https://syedhussim.com/sap-b1/php-service-layer-example-part-1.html):
  the ``ROUTEID`` arrives only as a cookie, the ``SessionId`` also in the body.
- Error bodies as client libraries model them (B1SLayer's ``SLResponseError``,
  Jonatas-Souza/SAPB1_SL_DIAPI ``Models/Error.cs``): ``{"error": {"code", "message":
  {"lang", "value"}}}`` in v1; v2 puts the text directly in ``message``. An expired or
  unknown session answers 401 with code 301, "Invalid session or session already timeout.".

Knobs for tests: ``canned_logins`` / ``canned_gets`` (answers given, one per request, before
the fake's own: ``Canned(status, body, content_type, headers)``, e.g. a 500 from a Service
Layer whose database is down, a proxy's 502 HTML page, a 429/503 with ``Retry-After`` as
RFC 9110 defines it, a body that echoes the request as some debugging proxies do),
``cookie_attrs`` (appended to both Set-Cookie headers, e.g. ``; Partitioned; Priority=High``
as a proxy may add), ``expire_every_page`` (every session dies after each page), ``empty_pages`` (pages carry
no rows but a next link, forever), ``next_link_base`` (next links written absolute, with
this scheme and host), ``expire_sessions()`` (the next request gets 401), ``expire_after_pages``
(sessions die after that many pages, mid-stream), ``reject_sessions``, ``stall`` (an entity read sends part of
its page and waits), ``hostile_metadata``, ``metadata_padding`` (that many extra enum and
complex types, 50 properties each, streamed in chunks ahead of the entity types, as a real
company's tens of MB of ``$metadata`` are mostly such types). ``log`` records each request (method, path,
whether both cookies came, the Prefer header); passwords are not recorded.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from .serving import FakeHttpServer, send_chunk

COMPANY = "SBODEMOUS"
USER = "manager"
SL_VERSION = "1000200"


def _items(n: int) -> list[dict[str, Any]]:
    return [
        {
            "ItemCode": f"A{i:04d}",
            "ItemName": f"Item number {i}",
            "QuantityOnStock": round(i * 1.25 + 0.005, 3),
            "Valid": "tYES" if i % 3 else "tNO",
            "UpdateDate": f"2024-01-{(i % 28) + 1:02d}",
        }
        for i in range(1, n + 1)
    ]


def _partners() -> list[dict[str, Any]]:
    return [
        {"CardCode": f"C{i:05d}", "CardName": f"Customer {i}", "CardType": "cCustomer",
         "CurrentAccountBalance": 1000.1 * i}
        for i in range(1, 11)
    ]  # fmt: skip


def _orders() -> list[dict[str, Any]]:
    return [
        {
            "DocEntry": i,
            "DocNum": 1000 + i,
            "CardCode": f"C{i:05d}",
            "DocDate": f"2024-03-{i:02d}",
            "DocTotal": 12345.67 + i,
            "DocumentLines": [{"LineNum": 0, "ItemCode": "A0001", "Quantity": 2.0, "Price": 9.99}],
        }
        for i in range(1, 6)
    ]


ENTITIES: dict[str, tuple[str, list[str]]] = {
    # entity set -> (entity type, key)
    "Items": ("Item", ["ItemCode"]),
    "BusinessPartners": ("BusinessPartner", ["CardCode"]),
    "Orders": ("Document", ["DocEntry"]),
}
EDM_TYPES = {
    str: "Edm.String",
    int: "Edm.Int32",
    float: "Edm.Double",
    list: "Collection(SAPB1.DocumentLine)",
}


@dataclass
class Canned:
    """One answer given instead of the fake's own. ``body`` may hold ``{cookie}`` and
    ``{request}``, replaced by the request's Cookie header and body (an echoing proxy)."""

    status: int
    body: str = ""
    content_type: str = "application/json;odata.metadata=minimal;charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)
    after_pages: int = 0  # given only once the fake has served this many entity pages


def sap_error(code: int, message: str, lang: str = "en-us") -> str:
    """SAP's v1 error body (v2 clients read the same ``message.value`` form too)."""
    return json.dumps({"error": {"code": code, "message": {"lang": lang, "value": message}}})


@dataclass
class SapB1State:
    password: str = "s3cret!"
    data: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    sessions: dict[str, str] = field(default_factory=dict)  # B1SESSION -> ROUTEID
    sessions_ever: list[str] = field(default_factory=list)  # every B1SESSION handed out
    log: list[dict[str, Any]] = field(default_factory=list)
    expire_after_pages: int | None = None
    pages_served: int = 0
    stall: bool = False
    stalled: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    hostile_metadata: str | None = None
    metadata_padding: int = 0
    reject_sessions: bool = False  # every session is refused (a 401 even right after login)
    loop_next_link: bool = False  # a broken server: page 2's next link points at page 2 again
    canned_logins: deque[Canned] = field(default_factory=deque)
    canned_gets: deque[Canned] = field(default_factory=deque)
    expire_every_page: bool = False
    cookie_attrs: str = ""
    empty_pages: bool = False
    next_link_base: str | None = None  # e.g. "https://other.example:50000": absolute links
    logins: int = 0
    logouts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if not self.data:
            self.data = {"Items": _items(95), "BusinessPartners": _partners(), "Orders": _orders()}

    def expire_sessions(self) -> None:
        with self.lock:
            self.sessions.clear()


def metadata(version: str) -> str:
    """CSDL: OData v4 for /b1s/v2, OData v3 (EDMX 1.0) for /b1s/v1."""
    if version == "v2":
        head = ('<edmx:Edmx xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx" Version="4.0">'
                '<edmx:DataServices><Schema xmlns="http://docs.oasis-open.org/odata/ns/edm" Namespace="SAPB1">')  # fmt: skip
        tail = "</Schema></edmx:DataServices></edmx:Edmx>"
    else:
        head = ('<edmx:Edmx xmlns:edmx="http://schemas.microsoft.com/ado/2007/06/edmx" Version="1.0">'
                '<edmx:DataServices><Schema xmlns="http://schemas.microsoft.com/ado/2009/11/edm" Namespace="SAPB1">')  # fmt: skip
        tail = "</Schema></edmx:DataServices></edmx:Edmx>"
    parts = [head]
    state_data = SapB1State().data
    for set_name, (type_name, keys) in ENTITIES.items():
        row = state_data[set_name][0]
        parts.append(f'<EntityType Name="{type_name}"><Key>')
        parts += [f'<PropertyRef Name="{k}"/>' for k in keys]
        parts.append("</Key>")
        for prop, value in row.items():
            nullable = "false" if prop in keys else "true"
            parts.append(
                f'<Property Name="{prop}" Type="{EDM_TYPES[type(value)]}" Nullable="{nullable}"/>'
            )
        parts.append("</EntityType>")
    parts.append('<EntityContainer Name="ServiceLayer">')
    parts += [f'<EntitySet Name="{s}" EntityType="SAPB1.{t}"/>' for s, (t, _) in ENTITIES.items()]
    parts.append("</EntityContainer>" + tail)
    return "".join(parts)


BILLION_LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + "".join(
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">'
        for i in range(1, 10)
    )
    + ']><edmx:Edmx xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx">&lol9;</edmx:Edmx>'
)

_CLAUSE = re.compile(r"^\s*(\w+)\s+(eq|ne|gt|ge|lt|le)\s+('(?:[^']|'')*'|-?\d+(?:\.\d+)?)\s*$")
_OPS = {
    "eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b, "lt": lambda a, b: a < b, "le": lambda a, b: a <= b,
}  # fmt: skip


class BadQuery(Exception):
    pass


def apply_filter(rows: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """The small part of OData $filter the tests use: clauses joined by ``and``."""
    clauses = re.split(r"\s+and\s+", text.strip(), flags=re.IGNORECASE)
    tests = []
    for clause in clauses:
        m = _CLAUSE.match(clause)
        if m is None:
            raise BadQuery(f"Invalid filter expression near '{clause.strip()[:40]}'")
        prop, op, raw = m.groups()
        value: Any = raw[1:-1].replace("''", "'") if raw.startswith("'") else float(raw)
        tests.append((prop, _OPS[op], value))
    out = []
    for row in rows:
        for prop, fn, value in tests:
            if prop not in row:
                raise BadQuery(f"Property '{prop}' of the entity is invalid")
            if not fn(row[prop], value):
                break
        else:
            out.append(row)
    return out


class SapB1Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "SAP-Service-Layer-Fake/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    @property
    def state(self) -> SapB1State:
        return self.server.state  # type: ignore[attr-defined]

    # ------------------------------------------------------------ plumbing

    def _route(self) -> tuple[str, str, dict[str, list[str]]] | None:
        parts = urlsplit(self.path)
        m = re.match(r"^/b1s/(v1|v2)(/.*)?$", parts.path)
        if m is None:
            return None
        return m.group(1), unquote(m.group(2) or "/"), parse_qs(parts.query, keep_blank_values=True)

    def _cookies(self) -> dict[str, str]:
        jar = {}
        for piece in (self.headers.get("Cookie") or "").split(";"):
            if "=" in piece:
                k, v = piece.strip().split("=", 1)
                jar[k] = v
        return jar

    def _send(
        self, status: int, body: bytes, ctype: str, extra: list[tuple[str, str]] = ()
    ) -> None:  # type: ignore[assignment]
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any, extra: list[tuple[str, str]] = ()) -> None:  # type: ignore[assignment]
        self._send(
            status,
            json.dumps(obj).encode(),
            "application/json;odata.metadata=minimal;charset=utf-8",
            extra,
        )

    def _error(self, version: str, status: int, code: int, message: str) -> None:
        if version == "v1":
            body = {"error": {"code": code, "message": {"lang": "en-us", "value": message}}}
        else:
            body = {"error": {"code": str(code), "message": message}}
        self._json(status, body)

    def _canned(self, queue: deque[Canned], raw: bytes = b"") -> bool:
        with self.state.lock:
            ready = queue and queue[0].after_pages <= self.state.pages_served
            canned = queue.popleft() if ready else None
        if canned is None:
            return False
        body = canned.body.replace("{cookie}", self.headers.get("Cookie") or "")
        body = body.replace("{request}", raw.decode("utf-8", "replace"))
        self._send(canned.status, body.encode(), canned.content_type, canned.headers)
        return True

    def _record(self, version: str, path: str) -> None:
        jar = self._cookies()
        with self.state.lock:
            self.state.log.append(
                {
                    "method": self.command,
                    "version": version,
                    "path": path,
                    "raw": self.path,
                    "cookies": "B1SESSION" in jar and "ROUTEID" in jar,
                    "prefer": self.headers.get("Prefer"),
                }
            )

    def _session_ok(self) -> bool:
        jar = self._cookies()
        with self.state.lock:
            if self.state.reject_sessions:
                return False
            return self.state.sessions.get(jar.get("B1SESSION", "")) == jar.get("ROUTEID")

    # ------------------------------------------------------------ verbs

    def do_POST(self) -> None:
        route = self._route()
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if route is None:
            return self._send(404, b"not found", "text/plain")
        version, path, _ = route
        self._record(version, path)
        if path == "/Login":
            if self._canned(self.state.canned_logins, raw):
                return None
            return self._login(version, raw)
        if path == "/Logout":
            jar = self._cookies()
            with self.state.lock:
                self.state.sessions.pop(jar.get("B1SESSION", ""), None)
                self.state.logouts += 1
            return self._send(204, b"", "text/plain")
        return self._error(version, 405, -1, "Only GET is supported by this fake")

    def _login(self, version: str, raw: bytes) -> None:
        try:
            creds = json.loads(raw)
        except ValueError:
            return self._error(version, 400, -1000, "Invalid JSON in the request body")
        if creds.get("CompanyDB") != COMPANY:
            return self._error(
                version,
                401,
                -304,
                f"Fail to get DB Credentials from the SLD for {creds.get('CompanyDB')}",
            )
        if creds.get("UserName") != USER or creds.get("Password") != self.state.password:
            return self._error(version, 401, 100000027, "Login failed")
        session, route = str(uuid.uuid1()), ".node1"
        with self.state.lock:
            self.state.sessions[session] = route
            self.state.sessions_ever.append(session)
            self.state.logins += 1
        context = "odata.metadata" if version == "v1" else "@odata.context"
        body = {context: f"/b1s/{version}/$metadata#B1Sessions/$entity", "SessionId": session,
                "Version": SL_VERSION, "SessionTimeout": 30}  # fmt: skip
        more = self.state.cookie_attrs
        cookies = [("Set-Cookie", f"B1SESSION={session}; path=/b1s/{version}; secure; HttpOnly{more}"),
                   ("Set-Cookie", f"ROUTEID={route}; path=/b1s{more}")]  # fmt: skip
        self._json(200, body, cookies)

    def do_GET(self) -> None:
        route = self._route()
        if route is None:
            return self._send(404, b"not found", "text/plain")
        version, path, query = route
        self._record(version, path)
        if self._canned(self.state.canned_gets):
            return None
        if not self._session_ok():
            return self._error(version, 401, 301, "Invalid session or session already timeout.")
        if path == "/":
            kind = {"kind": "EntitySet"} if version == "v2" else {}
            value = [{"name": s, "url": s, **kind} for s in ENTITIES]
            return self._json(200, {"value": value})
        if path == "/$metadata":
            doc = BILLION_LAUGHS if self.state.hostile_metadata else metadata(version)
            if self.state.metadata_padding:
                return self._padded_metadata(doc)
            return self._send(200, doc.encode(), "application/xml")
        name = path.strip("/")
        if name not in self.state.data:
            return self._error(version, 404, -1, f"Unrecognized resource path: {name}")
        try:
            self._entities(version, name, query)
        except BadQuery as exc:
            self._error(version, 400, -1, str(exc))

    def _entities(self, version: str, name: str, query: dict[str, list[str]]) -> None:
        rows = list(self.state.data[name])
        one = {k: v[0] for k, v in query.items()}
        if "$filter" in one:
            rows = apply_filter(rows, one["$filter"])
        if "$orderby" in one:
            for item in reversed(one["$orderby"].split(",")):
                prop, _, direction = item.strip().partition(" ")
                rows.sort(key=lambda r, p=prop: r.get(p), reverse=direction.strip() == "desc")
        if "$select" in one:
            props = [p.strip() for p in one["$select"].split(",")]
            for p in props:
                if p not in self.state.data[name][0]:
                    raise BadQuery(f"Property '{p}' of '{ENTITIES[name][0]}' is invalid")
            rows = [{p: r.get(p) for p in props} for r in rows]
        skip = int(one.get("$skip", "0") or 0)
        end = len(rows) if "$top" not in one else min(len(rows), int(one["$top"]))
        m = re.search(r"odata\.maxpagesize=(\d+)", self.headers.get("Prefer") or "")
        size = int(m.group(1)) if m else 20
        if size == 0:  # the manual: maxpagesize 0 turns paging off
            size = max(end - skip, 1)
        page = rows[skip : min(end, skip + size)]
        if self.state.empty_pages:
            page, end = [], skip + size + 1  # a broken server: no rows, always a next link
        body: dict[str, Any] = {"value": page}
        if skip + size < end:
            keep = [f"{k}={quote(v, safe='')}" for k, v in one.items() if k != "$skip"]
            # (ten pages at most, so a client that follows the loop ends, with rows twice)
            looping = self.state.loop_next_link and skip > 0 and self.state.pages_served < 10
            after = skip if looping else skip + size
            link = f"{name}?" + "&".join([*keep, f"$skip={after}"])
            if self.state.next_link_base:
                link = f"{self.state.next_link_base}/b1s/{version}/{link}"
            elif version == "v1":
                link = f"/b1s/v1/{link}"
            body["odata.nextLink" if version == "v1" else "@odata.nextLink"] = link
        extra = [("Preference-Applied", f"odata.maxpagesize={size}")] if m else []
        with self.state.lock:
            self.state.pages_served += 1
            if self.state.expire_every_page or (
                self.state.expire_after_pages
                and self.state.pages_served == self.state.expire_after_pages
            ):
                self.state.sessions.clear()
        if self.state.stall:
            return self._stall(json.dumps(body).encode())
        self._json(200, body, extra)

    def _padded_metadata(self, doc: str) -> None:
        """``doc`` with ``metadata_padding`` enum and complex types inserted before its first
        EntityType, sent chunked a type at a time (the fake never holds the whole text)."""
        at = doc.index("<EntityType ")
        self.send_response(200)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        send_chunk(self, doc[:at].encode())
        for t in range(self.state.metadata_padding):
            members = "".join(f'<Member Name="e{t}m{i}" Value="{i}"/>' for i in range(10))
            props = "".join(f'<Property Name="Field{i}" Type="Edm.String"/>' for i in range(50))
            send_chunk(self, (f'<EnumType Name="Enum{t}">{members}</EnumType>'
                              f'<ComplexType Name="Complex{t}">{props}</ComplexType>').encode())  # fmt: skip
        send_chunk(self, doc[at:].encode())
        send_chunk(self, b"")

    def _stall(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        self.state.stalled.set()
        self.state.release.wait(timeout=30)


def start_fake_sap_b1(
    state: SapB1State | None = None, tls_context: Any = None
) -> tuple[FakeHttpServer, SapB1State]:
    state = state or SapB1State()
    return FakeHttpServer(SapB1Handler, state, tls_context=tls_context), state
