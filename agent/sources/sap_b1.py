"""SAP Business One through its Service Layer (OData v4 at ``/b1s/v2``, v3 at ``/b1s/v1``).

A query ``{"entity", "select", "filter", "orderBy", "top"}`` becomes
``GET <root>/<entity>?$select=..&$filter=..&$orderby=..&$top=..`` with
``Prefer: odata.maxpagesize=<page_size>``; the rows are streamed a page at a time by
following ``@odata.nextLink`` (v2) or ``odata.nextLink`` (v1), so memory holds one page's
text, its rows parsed a batch at a time as they are taken (``JsonPage``), never the whole
page as objects (several times its text).
Entity and property names are checked to be plain identifiers (no path injection); the
filter and order travel URL-encoded. ``discover`` reads ``$metadata`` (CSDL) incrementally
with defusedxml. Session handling and SAP's error bodies live in ``sap_b1_session``.

Options: ``company_db``, ``username`` (the password is the source's stored password),
``version`` (``v2`` default, or ``v1``), ``ca_file``, ``verify=false`` (explicit, logged
opt-out of certificate checks), ``page_size`` (default 500), ``timeout`` (seconds a single
socket wait may take, default 60).
"""

from __future__ import annotations

import decimal
import ipaddress
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from defusedxml import ElementTree as SafeET
from defusedxml.common import DefusedXmlException

from shared.errors import JobError
from shared.rows import json_safe

from .base import Column, QueryStream, Row, Source
from .sap_b1_session import JsonPage, ServiceLayerSession
from .webclient import DEFAULT_IO_TIMEOUT, Endpoint, parse_bool, parse_positive

# \Z, not $: a bare $ also matches before a trailing newline ("Items\n").
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
ORDER_ITEM = re.compile(r"^([A-Za-z_][A-Za-z0-9_]{0,127})(?:\s+(asc|desc))?\Z", re.IGNORECASE)
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}")
QUERY_KEYS = {"entity", "select", "filter", "orderBy", "top"}
MAX_FILTER = 8000
DEFAULT_PAGE_SIZE = 500
log = logging.getLogger("agent.sources")
MAX_EMPTY_PAGES = 50  # pages in a row with no row but a next link: a broken server, not data
# A first page up to this many characters is parsed whole to type its columns (once); a
# larger one is looked through, then parsed again a batch at a time (never held parsed).
WHOLE_FIRST_PAGE = 4 << 20
_END = object()
_URL_SAFE = "!#$&'()*+,/:;=?@[]~%"


def _bad(message: str) -> JobError:
    return JobError("QUERY_FAILED", message, retryable=False)


class SapB1Source(Source):
    """One configured SAP Business One company behind a Service Layer."""

    def __init__(
        self,
        name: str,
        kind: str,
        url: str,
        *,
        password: str | None = None,
        options: dict[str, str] | None = None,
        pool_size: int = 4,
    ) -> None:
        super().__init__(name, kind)
        opts = dict(options or {})
        self.company_db = opts.get("company_db") or ""
        self.username = opts.get("username") or ""
        self.password = password or ""
        self.version = (opts.get("version") or "v2").lower()
        if self.version not in ("v1", "v2"):
            raise JobError(
                "SOURCE_UNAVAILABLE", f"source {name!r}: version must be v1 or v2", retryable=False
            )
        page_size = parse_positive(opts.get("page_size"), DEFAULT_PAGE_SIZE, name="page_size")
        if page_size != int(page_size):
            # odata.maxpagesize=0 turns SAP's paging off: 0.5 must not round down to it.
            raise JobError(
                "SOURCE_UNAVAILABLE",
                f"source {name!r}: option page_size must be a whole number of at least 1",
                retryable=False,
            )
        self.page_size = int(page_size)
        self.endpoint = Endpoint(
            name,
            url,
            default_port=50000,
            ca_file=opts.get("ca_file"),
            verify=parse_bool(opts.get("verify"), True),
            io_timeout=parse_positive(opts.get("timeout"), DEFAULT_IO_TIMEOUT, name="timeout"),
        )
        base = re.sub(r"/b1s/v[12]$", "", self.endpoint.base_path)
        self.service_root = f"{base}/b1s/{self.version}"
        self._warned_plain = False

    def warn_if_plain_http(self) -> None:
        """The login carries the password: over plain HTTP to another machine anyone on the
        way can read it. Allowed (the Service Layer's HTTP port exists), but said once."""
        if self.endpoint.scheme != "http" or self._warned_plain or _is_loopback(self.endpoint.host):
            return
        self._warned_plain = True
        log.warning(
            "source %s logs in to SAP Business One over plain HTTP (%s): the password travels "
            "unencrypted; use the Service Layer's https:// port",
            self.name,
            self.endpoint.netloc,
        )

    def session(self, timeout: float | None = None) -> ServiceLayerSession:
        if not self.company_db or not self.username:
            raise JobError(
                "AUTH_FAILED",
                f"source {self.name!r} needs the options company_db and username",
                retryable=False,
            )
        deadline = time.monotonic() + timeout if timeout else None
        self.warn_if_plain_http()
        return ServiceLayerSession(self, deadline=deadline)

    # ------------------------------------------------------------ operations

    def test(self) -> dict[str, Any]:
        session = self.session()
        try:
            started = time.perf_counter()
            session.login()
            latency = round((time.perf_counter() - started) * 1000)
            count = self._count_entity_sets(session)
        finally:
            session.logout()
        return {
            "connected": True,
            "latencyMs": latency,
            "serverVersion": session.server_version,
            "tablesFound": count,
        }

    def _count_entity_sets(self, session: ServiceLayerSession) -> int | None:
        """Entity sets listed by the OData service document (None if it gives none)."""
        try:
            doc = session.get_json(self.service_root + "/")
        except JobError as exc:
            if exc.code != "QUERY_FAILED":
                raise
            return None
        sets = [v for v in doc.get("value") or [] if isinstance(v, dict)]
        return sum(1 for v in sets if v.get("kind", "EntitySet") == "EntitySet")

    def discover(self, request: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        session = self.session()
        try:
            session.login()
            resp = session.get(self.service_root + "/$metadata", {"Accept": "application/xml"})
            return parse_metadata(_Reader(session.stream(resp)), schema=self.company_db)
        finally:
            session.logout()

    def _open(self, request: dict[str, Any], timeout: float | None) -> QueryStream:
        path, select, top = build_query(self.service_root, request)
        return SapB1Stream(self, path, select, top, timeout)


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_query(root: str, request: dict[str, Any]) -> tuple[str, list[str], int | None]:
    """The root-relative URL of a query, its selected properties and its ``top``."""
    unknown = set(request) - QUERY_KEYS
    if unknown:
        raise _bad(f"unknown query keys for sap_b1: {', '.join(sorted(unknown))}")
    entity = request.get("entity")
    if not isinstance(entity, str) or not NAME.match(entity):
        raise _bad("'entity' must be an entity set name such as 'Items' or 'Orders'")
    select = _names(request.get("select"), "select")
    params: list[str] = []
    if select:
        params.append("$select=" + ",".join(select))
    flt = request.get("filter")
    if flt is not None and flt != "":
        if (
            not isinstance(flt, str)
            or len(flt) > MAX_FILTER
            or any(ord(c) < 32 or 0xD800 <= ord(c) <= 0xDFFF for c in flt)
        ):
            raise _bad(
                f"'filter' must be one line of OData filter text (at most {MAX_FILTER} chars)"
            )
        params.append("$filter=" + quote(flt, safe="',()"))
    order = request.get("orderBy")
    if order is not None and order != "":
        items = order.split(",") if isinstance(order, str) else order
        if not isinstance(items, list) or not items:
            raise _bad("'orderBy' must be 'Property [asc|desc], ...' or a list of such")
        parts = []
        for item in items:
            m = ORDER_ITEM.match(item.strip()) if isinstance(item, str) else None
            if m is None:
                raise _bad(f"'orderBy' item {str(item)[:60]!r} is not 'Property [asc|desc]'")
            parts.append(m.group(1) + (f" {m.group(2).lower()}" if m.group(2) else ""))
        params.append("$orderby=" + quote(",".join(parts), safe=","))
    top = request.get("top")
    if top is not None:
        if isinstance(top, bool) or not isinstance(top, int) or top < 0:
            raise _bad("'top' must be a whole number >= 0")
        params.append(f"$top={top}")
    path = f"{root}/{entity}" + ("?" + "&".join(params) if params else "")
    return path, select, top


def _names(value: Any, key: str) -> list[str]:
    if value is None or value == "":
        return []
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list):
        raise _bad(f"'{key}' must be a list of property names or 'A,B,C'")
    names = [i.strip() if isinstance(i, str) else i for i in items]
    for n in names:
        if not isinstance(n, str) or not NAME.match(n):
            raise _bad(f"'{key}' holds {str(n)[:60]!r}, which is not a property name")
    return names


def resolve_next(link: str, root: str, endpoint: Endpoint) -> str:
    """A next link made root-relative; it must stay on the same server and service."""
    parts = urlsplit(link)
    if parts.scheme or parts.netloc:
        if parts.hostname != endpoint.host or (parts.port or endpoint.port) != endpoint.port:
            raise _bad("SAP Business One sent a next link to another server; refused")
        path = parts.path
    elif parts.path.startswith("/"):
        path = parts.path
    else:
        path = f"{root}/{parts.path}"
    plain = unquote(path)  # %2e%2e is ".." to the server
    if not plain.startswith(root + "/") or ".." in plain.split("/"):
        raise _bad("SAP Business One sent a next link outside its service; refused")
    url = path + (f"?{parts.query}" if parts.query else "")
    return quote(url, safe=_URL_SAFE)


def column_type(values: list[Any]) -> str:
    sample = next((v for v in values if v is not None), None)
    if sample is None:
        return "string"
    if isinstance(sample, bool):
        return "boolean"
    if isinstance(sample, int):
        return "integer"
    if isinstance(sample, (float, decimal.Decimal)):
        return "decimal"
    if isinstance(sample, (dict, list)):
        return "json"
    if isinstance(sample, str):
        if DATE.match(sample):
            return "date"
        if DATETIME.match(sample):
            return "datetime"
    return "string"


def _is_annotation(key: str) -> bool:
    return key.startswith(("odata.", "@")) or "@odata." in key


class SapB1Stream(QueryStream):
    """One entity-set read, a page at a time; ``cancel`` aborts the socket."""

    def __init__(
        self,
        source: SapB1Source,
        path: str,
        select: list[str],
        top: int | None,
        timeout: float | None,
    ) -> None:
        self.source = source
        self.first = path
        self.select = select
        self.top = top
        self.timeout = timeout
        self.columns: list[Column] = []
        self.pages = 0
        self._names: list[str] = []
        self._session: ServiceLayerSession | None = None
        self._rows: deque[dict[str, Any]] = deque()
        # The page being read: its rows are parsed as they are taken (``JsonPage``), so
        # memory holds its text and one batch, not the whole page as objects.
        self._page: JsonPage | None = None
        self._page_rows: Iterator[Any] | None = None
        self._page_count = 0  # rows the current page brought so far
        self._next: str | None = None
        self._seen: set[str] = set()  # the pages asked for: a next link back to one never ends
        self._sent = 0
        self._empty_run = 0  # pages in a row that brought no row
        self._cancelled = threading.Event()
        self._mutex = threading.Lock()

    def start(self) -> None:
        if self._cancelled.is_set():
            raise JobError("CANCELLED", "the job was cancelled", retryable=False)
        session = self.source.session(self.timeout)
        with self._mutex:
            self._session = session
        if self._cancelled.is_set():
            session.abort()
        session.login()
        self._load(self.first)
        self._names, types = self._first_columns()
        self.columns = [{"name": n, "type": types(n)} for n in self._names]

    def _first_columns(self) -> tuple[list[str], Callable[[str], str]]:
        """The columns: the ``select`` list or the properties of the first page's first 50
        rows; each typed by its first non-null value on the first page. A small first page
        is taken whole for that; a large one is looked through without holding its rows."""
        page = self._page
        assert page is not None
        if page.size <= WHOLE_FIRST_PAGE:
            self._take(None)
            rows: Iterator[Any] = iter(list(self._rows))
        else:
            rows = page.peek()
        head: dict[str, None] = {}
        first: dict[str, Any] = {}  # property -> its first non-null value
        seen = 0
        for row in rows:
            if not isinstance(row, dict):
                continue
            if seen < 50:
                head.update(dict.fromkeys(k for k in row if not _is_annotation(k)))
                seen += 1
            for k, v in row.items():
                if v is not None and k not in first:
                    first[k] = v
        names = self.select or list(head)
        return names, lambda name: column_type([first.get(name)])

    def _load(self, path: str) -> None:
        assert self._session is not None
        if path in self._seen:
            raise _bad("SAP Business One sent a next link to a page it had already sent; refused "
                       "(following it would never end)")  # fmt: skip
        self._seen.add(path)
        prefer = {"Prefer": f"odata.maxpagesize={self.source.page_size}"}
        self._page = self._session.get_page(path, prefer)
        self._page_rows = self._page.rows()
        self._page_count = 0
        self.pages += 1

    def _take(self, limit: int | None) -> None:
        """Parse the current page's rows into ``_rows`` until it holds ``limit`` (all of
        them: None) or the page ends; at its end, where the next page is."""
        rows = self._page_rows
        assert rows is not None
        while limit is None or len(self._rows) < limit:
            row = next(rows, _END)
            if row is _END:
                self._page_done()
                return
            if isinstance(row, dict):
                self._rows.append(row)
                self._page_count += 1

    def _page_done(self) -> None:
        page, self._page, self._page_rows = self._page, None, None
        assert page is not None
        link = page.fields.get("@odata.nextLink") or page.fields.get("odata.nextLink")
        self._empty_run = self._empty_run + 1 if self._page_count == 0 and link else 0
        if self._empty_run > MAX_EMPTY_PAGES:
            raise _bad(
                f"SAP Business One sent {MAX_EMPTY_PAGES} pages in a row without a row but "
                "with a next link; stopped (following them might never end)"
            )
        self._next = (
            resolve_next(link, self.source.service_root, self.source.endpoint)
            if isinstance(link, str) and link
            else None
        )

    def fetch(self, n: int) -> list[Row]:
        if self._cancelled.is_set():
            raise JobError("CANCELLED", "the job was cancelled", retryable=False)
        if self.top is not None and self._sent >= self.top:
            return []
        limit = n if self.top is None else min(n, self.top - self._sent)
        while len(self._rows) < limit:
            if self._page is not None:
                self._take(limit)
            elif self._rows or self._next is None:
                break  # (the next page is asked for once these rows are gone)
            else:
                link, self._next = self._next, None
                self._load(link)
        out: list[Row] = []
        while self._rows and len(out) < limit:
            entity = self._rows.popleft()
            out.append([json_safe(entity.get(name)) for name in self._names])
        self._sent += len(out)
        return out

    def cancel(self) -> None:
        self._cancelled.set()
        with self._mutex:
            session = self._session
        if session is not None:
            session.abort()

    def close(self) -> None:
        with self._mutex:
            session, self._session = self._session, None
        self._rows.clear()
        self._page = self._page_rows = None
        if session is not None:
            session.logout()


class _Reader:
    """A file-like view of a body's pieces, for ``iterparse``."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces = pieces

    def read(self, size: int = -1) -> bytes:
        return next(self._pieces, b"")


def parse_metadata(reader: _Reader, *, schema: str) -> list[dict[str, Any]]:
    """Entity sets with their properties, types and keys, from a CSDL ``$metadata`` document."""
    types: dict[str, dict[str, Any]] = {}
    sets: list[tuple[str, str]] = []
    current: dict[str, Any] | None = None
    open_elems: list[Any] = []  # the elements being read, outermost first
    try:
        for event, elem in SafeET.iterparse(reader, events=("start", "end"), forbid_dtd=True):
            tag = elem.tag.rsplit("}", 1)[-1]
            if event == "start":
                open_elems.append(elem)
                if tag == "EntityType":
                    current = {"columns": [], "keys": []}
                    types[elem.get("Name", "")] = current
                continue
            open_elems.pop()
            if open_elems:
                # Read once, dropped at once: the tree of a company's $metadata (tens of MB of
                # enums, complex types, actions) is never held whole.
                open_elems[-1].remove(elem)
            if tag == "Property" and current is not None:
                nullable = (elem.get("Nullable") or "true").lower() != "false"
                current["columns"].append(
                    {"name": elem.get("Name"), "type": elem.get("Type"), "nullable": nullable}
                )
            elif tag == "PropertyRef" and current is not None:
                current["keys"].append(elem.get("Name"))
            elif tag == "EntityType":
                current = None
            elif tag == "EntitySet":
                sets.append((elem.get("Name", ""), elem.get("EntityType", "")))
    except DefusedXmlException as exc:
        raise _bad(
            f"SAP Business One's $metadata holds forbidden XML ({type(exc).__name__}); refused"
        ) from exc
    except SafeET.ParseError as exc:
        raise _bad(f"SAP Business One's $metadata is not well-formed XML: {exc}") from exc
    tables = []
    for name, type_name in sets:
        info = types.get(type_name.rsplit(".", 1)[-1], {"columns": [], "keys": []})
        tables.append(
            {
                "schema": schema,
                "name": name,
                "kind": "entity_set",
                "rowEstimate": None,
                "columns": info["columns"],
                "primaryKey": info["keys"],
                "foreignKeys": [],
            }
        )
    return tables
