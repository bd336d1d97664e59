"""One SAP Business One Service Layer session: login, cookies, re-login, errors, logout.

Per SAP's "Working with SAP Business One Service Layer" (User Manual, sections on Login
and Logout, Session, and error handling): ``POST <root>/Login`` with ``CompanyDB``,
``UserName`` and ``Password`` answers ``SessionId``, ``Version`` and ``SessionTimeout``
(minutes) and sets the ``B1SESSION`` cookie, plus ``ROUTEID`` when a load balancer sits in
front; both go back on every request. An expired or unknown session answers 401, after
which we log in once more and repeat the request (once per request; at most
``MAX_RELOGINS`` times for sessions that die within ``QUICK_EXPIRY`` of their login). ``POST <root>/Logout`` ends it. Errors come as ``{"error": {"code", "message":
{"lang", "value"}}}`` (OData v3, ``/b1s/v1``) or ``{"error": {"code", "message": "..."}}``
(OData v4, ``/b1s/v2``); their text reaches the job's error. A 4xx to the login is
AUTH_FAILED (SAP refuses bad credentials with 401); a 5xx, 408 or 429, to the login or a
query, is the server's trouble: SOURCE_UNAVAILABLE, retryable. A 403 to a query (signed
in, but the user may not read that object) is QUERY_FAILED, not retried, naming the user,
the object and where SAP grants the permission. A 429/503 with a short
``Retry-After`` (RFC 9110: seconds or an HTTP date) is waited for and the request repeated.
Cookies and the password are never logged, and are masked in every message.
"""

from __future__ import annotations

import datetime
import decimal
import email.utils
import http.client
import json
import logging
import re
import time
from collections.abc import Iterator
from http.cookies import CookieError, SimpleCookie
from typing import Any, Protocol
from urllib.parse import unquote

from shared.errors import JobError

from .webclient import Channel, Endpoint


class ServiceLayerTarget(Protocol):
    """What a session needs of its source (``sap_b1.SapB1Source`` has this shape)."""

    name: str
    endpoint: Endpoint
    service_root: str
    company_db: str
    username: str
    password: str


log = logging.getLogger("agent.sources")
_CONTROL = re.compile("[\x00-\x1f\x7f]")

MAX_JSON_BYTES = 256 << 20
MAX_ERROR_BYTES = 64 << 10  # what is read of an error body; the rest is not waited for
LOGOUT_SECONDS = 5.0
MAX_RELOGINS = 3  # re-logins after sessions that died quickly, per job (one per 401 at most)
# A session that dies sooner than this after its login did not time out idle (SAP's
# SessionTimeout is minutes, 30 by default): the server is refusing it. Such re-logins
# are capped; one after a long job's idle pause (a slow reader) is not.
QUICK_EXPIRY = 120.0
BUSY_STATUSES = (429, 503)  # answered with Retry-After, waited for in place
MAX_RETRY_AFTER = 30.0  # longest Retry-After waited for in place (longer: the job fails)
MAX_BUSY_RETRIES = 3  # in-place retries of one request after a Retry-After


def is_server_trouble(status: int) -> bool:
    """A status that says the server (or a proxy before it) is in trouble, not the request:
    every 5xx, 408 and 429. Such a failure is SOURCE_UNAVAILABLE, retryable."""
    return status >= 500 or status in (408, 429)


def retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP-date), else None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, (when - datetime.datetime.now(datetime.UTC)).total_seconds())


def scrub(text: str, secrets: list[str]) -> str:
    """``text`` with every secret (the password, session ids) replaced by ``***``."""
    for secret in sorted(set(secrets), key=len, reverse=True):
        if secret and len(secret) >= 3 and secret in text:
            text = text.replace(secret, "***")
    return text


def sap_message(body: bytes, status: int, reason: str = "") -> tuple[str, str | None]:
    """SAP's error text and code from an error body (v1 or v2 form), else the HTTP reason."""
    try:
        data = json.loads(body.decode("utf-8", "replace"))
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        err = data["error"]
        msg = err.get("message")
        if isinstance(msg, dict):
            msg = msg.get("value")
        code = err.get("code")
        if isinstance(msg, str) and msg.strip():
            return msg.strip()[:1000], None if code is None else str(code)
    text = body.decode("utf-8", "replace").strip()
    if text and not text.startswith("<"):
        # A proxy's plain-text page: one line of it, without control characters.
        line = " ".join(_CONTROL.sub(" ", text).split())
        return f"HTTP {status}: {line[:300]}", None
    return f"HTTP {status} {reason}".strip(), None


class ServiceLayerSession:
    """A logged-in session over one connection. Used by one job; ``abort`` from anywhere."""

    def __init__(self, source: ServiceLayerTarget, *, deadline: float | None) -> None:
        self.source = source
        self.channel = Channel(source.endpoint, deadline=deadline)
        self.cookies: dict[str, str] = {}
        self.server_version: str | None = None
        self.session_timeout: int | None = None
        self.logins = 0
        self.quick_relogins = 0
        self._login_at = 0.0
        self._spent: list[str] = []  # session ids of earlier logins (kept out of messages)

    @property
    def root(self) -> str:
        return self.source.service_root

    def _secrets(self) -> list[str]:
        password = self.source.password
        # as typed, and as it travels in the login's JSON (an echo shows that form)
        forms = [
            password,
            json.dumps(password)[1:-1],
            json.dumps(password, ensure_ascii=False)[1:-1],
        ]
        return [*forms, *self.cookies.values(), *self._spent]

    def _fail(self, code: str, message: str, **kw: Any) -> JobError:
        """A job error whose message holds neither the password nor a session id (a proxy or
        a debug build may echo the request into its error page)."""
        return JobError(code, scrub(message, self._secrets()), **kw)

    # ------------------------------------------------------------ login / logout

    def login(self) -> None:
        src = self.source
        payload = {"CompanyDB": src.company_db, "UserName": src.username, "Password": src.password}
        body = json.dumps(payload).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        busy = 0
        while True:
            resp = self.channel.request("POST", self.root + "/Login", body, headers)
            if resp.status < 300:
                break
            data = self.read_error_body(resp)
            if self._wait_if_busy(resp, busy):
                busy += 1
                continue
            if 300 <= resp.status < 400:
                raise self._redirected(resp)
            message, code = sap_message(data, resp.status, resp.reason)
            suffix = f" (SAP code {code})" if code else ""
            if is_server_trouble(resp.status):
                # The server's trouble (a 500 from a Service Layer whose database or license
                # service is down, a proxy's 502, a 503 while it restarts), not the
                # credentials': retryable. SAP refuses bad credentials with a 401.
                raise self._fail(
                    "SOURCE_UNAVAILABLE",
                    f"SAP Business One could not log in to {src.company_db} "
                    f"(HTTP {resp.status}): {message}{suffix}{_later(resp)}",
                )
            raise self._fail(
                "AUTH_FAILED",
                f"SAP Business One refused the login to {src.company_db}: {message}{suffix}",
            )
        data = self.channel.read_all(resp, 1 << 20)
        self.cookies = self._cookies(resp)
        try:
            info = _json_object(data)
        except JobError:
            info = {}
        if "B1SESSION" not in self.cookies and isinstance(info.get("SessionId"), str):
            self.cookies["B1SESSION"] = info["SessionId"]
        if "B1SESSION" not in self.cookies:
            raise JobError(
                "AUTH_FAILED",
                "SAP Business One answered the login without a session (no B1SESSION cookie "
                "or SessionId): is the URL the Service Layer's?",
            )
        version = info.get("Version")
        self.server_version = str(version) if version is not None else resp.getheader("Server")
        timeout = info.get("SessionTimeout")
        self.session_timeout = timeout if isinstance(timeout, int) else None
        self.logins += 1
        self._login_at = time.monotonic()
        log.info("signed in to SAP Business One source %s as %s", src.name, src.username)

    @staticmethod
    def _cookies(resp: http.client.HTTPResponse) -> dict[str, str]:
        """``B1SESSION``, ``ROUTEID`` (and any other cookie) from the ``Set-Cookie`` headers.
        Read as RFC 6265 says, the name and value before the first ``;``, so an attribute
        ``SimpleCookie`` does not know (``Partitioned``, ``Priority=High`` from a proxy) cannot
        make the whole cookie vanish; ``SimpleCookie`` only adds cookies a proxy folded into
        one header with commas."""
        jar: dict[str, str] = {}
        for header in resp.headers.get_all("Set-Cookie") or []:
            name, sep, value = header.split(";", 1)[0].partition("=")
            if sep and name.strip():
                jar[name.strip()] = value.strip().strip('"')
            cookie = SimpleCookie()
            try:
                cookie.load(header)
            except CookieError:
                continue
            for key, morsel in cookie.items():
                jar.setdefault(key, morsel.value)
        return jar

    def logout(self) -> None:
        """End the session at SAP (best effort, bounded, never raises)."""
        if not self.cookies:
            self.channel.close()
            return
        channel = self.channel
        if channel.aborted.is_set() or channel.deadline_passed():
            channel.close()
            channel = Channel(self.source.endpoint, deadline=time.monotonic() + LOGOUT_SECONDS)
        try:
            resp = channel.request("POST", self.root + "/Logout", b"", self._headers({}))
            channel.read_all(resp, 1 << 20)
        except JobError as exc:
            log.info(
                "logout from SAP Business One source %s failed: %s",
                self.source.name,
                scrub(exc.message, self._secrets()),
            )
        finally:
            self.cookies = {}
            channel.close()
            self.channel.close()

    def abort(self) -> None:
        self.channel.abort()

    # ------------------------------------------------------------ requests

    def _headers(self, extra: dict[str, str]) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        headers.update(extra)
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        return headers

    def read_error_body(self, resp: http.client.HTTPResponse) -> bytes:
        """The first ``MAX_ERROR_BYTES`` of an error body; a longer one (a proxy's page, a
        stack trace) is cut, never a reason to fail otherwise."""
        return self.channel.read_capped(resp, MAX_ERROR_BYTES)

    def _wait_if_busy(self, resp: http.client.HTTPResponse, retries: int) -> bool:
        """After a 429/503 with a short enough ``Retry-After``, wait that long (a cancel ends
        the wait at once) and say so; otherwise False (the caller fails the job)."""
        if resp.status not in BUSY_STATUSES or retries >= MAX_BUSY_RETRIES:
            return False
        delay = retry_after(resp.getheader("Retry-After"))
        if delay is None or delay > MAX_RETRY_AFTER:
            return False
        channel = self.channel
        if channel.deadline is not None and time.monotonic() + delay >= channel.deadline:
            return False
        log.info(
            "SAP Business One source %s is busy (HTTP %d); retrying in %g s",
            self.source.name,
            resp.status,
            delay,
        )
        if channel.aborted.wait(delay):
            raise channel.cancelled_error()
        return True

    def get(self, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
        """GET ``path`` (root-relative path and query already built); the 2xx response with
        its body unread. A 401 (expired session) logs in once more and repeats the request,
        at most once per request and ``MAX_RELOGINS`` times per job for sessions that died
        within ``QUICK_EXPIRY`` of their login; a 429/503 with a short
        ``Retry-After`` is waited for and repeated, at most ``MAX_BUSY_RETRIES`` times."""
        relogged = False
        busy = 0
        while True:
            resp = self.channel.request("GET", path, None, self._headers(headers or {}))
            if 200 <= resp.status < 300:
                return resp
            data = self.read_error_body(resp)
            if resp.status == 401 and not relogged:
                if time.monotonic() - self._login_at < QUICK_EXPIRY:
                    self.quick_relogins += 1
                if self.quick_relogins > MAX_RELOGINS:
                    message, code = sap_message(data, resp.status, resp.reason)
                    raise self._fail(
                        "AUTH_FAILED",
                        f"SAP Business One ended the session within {QUICK_EXPIRY:.0f} s of "
                        f"its login again, after {MAX_RELOGINS} fresh logins in this job; "
                        f"giving up (last answer: {message}"
                        f"{f', SAP code {code}' if code else ''})",
                    )
                relogged = True
                log.info(
                    "SAP Business One session expired on source %s; signing in again",
                    self.source.name,
                )
                self._spent.extend(self.cookies.values())
                self.cookies = {}
                self.login()
                continue
            if self._wait_if_busy(resp, busy):
                busy += 1
                continue
            if 300 <= resp.status < 400:
                raise self._redirected(resp)
            raise self.error(resp.status, resp.reason, data, _later(resp), path=path)

    def _redirected(self, resp: http.client.HTTPResponse) -> JobError:
        """A redirect is never followed: the login's password and the session cookie go to
        the configured host only. It means the source's URL is not the Service Layer's (an
        http:// URL a proxy sends on to https://, a path a portal moved)."""
        where = (resp.getheader("Location") or "").strip()
        shown = " ".join(_CONTROL.sub(" ", where).split())[:200] or "nowhere"
        return self._fail(
            "SOURCE_UNAVAILABLE",
            f"SAP Business One's URL answered HTTP {resp.status}, a redirect to {shown}; not "
            "followed (credentials stay on the configured host): set the source's URL to the "
            "Service Layer itself",
            retryable=False,
        )

    def get_json(self, path: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
        return _json_object(self._get_body(path, headers), decimals=True)

    def get_page(self, path: str, headers: dict[str, str] | None = None) -> JsonPage:
        """A page of an entity set, its rows parsed one at a time as they are taken."""
        return JsonPage(self._get_body(path, headers))

    def _get_body(self, path: str, headers: dict[str, str] | None) -> bytes:
        resp = self.get(path, headers)
        try:
            return self.channel.read_all(resp, MAX_JSON_BYTES)
        except JobError as exc:
            if exc.code != "QUERY_FAILED":
                raise
            raise JobError(
                "QUERY_FAILED",
                f"one page of SAP Business One's answer is larger than "
                f"{MAX_JSON_BYTES >> 20} MiB; set a smaller page_size on the source or "
                "select fewer properties",
                retryable=False,
            ) from exc

    def stream(self, resp: http.client.HTTPResponse) -> Iterator[bytes]:
        """The body of ``resp`` in pieces (for incremental parsing)."""
        while True:
            chunk = self.channel.read(resp, 65536)
            if not chunk:
                return
            yield chunk

    def error(self, status: int, reason: str, body: bytes, later: str = "", *, path: str = "") -> JobError:
        message, code = sap_message(body, status, reason)
        suffix = f" (SAP code {code})" if code else ""
        if status == 401:
            return self._fail(
                "AUTH_FAILED", f"SAP Business One refused the session: {message}{suffix}"
            )
        if status == 403:
            # Signed in, but this user may not read this object. The contract has no code of
            # its own for that; AUTH_FAILED would say the credentials are wrong (they are
            # not: other objects read fine), so it is QUERY_FAILED, as a SQL source's
            # "permission denied for table" is, with the missing permission named.
            what = resource_of(path, self.root)
            shown = message if message.startswith("HTTP 403") else f"HTTP 403: {message}"
            return self._fail(
                "QUERY_FAILED",
                f"SAP Business One user {self.source.username!r} is not permitted to read "
                f"{what} ({shown}{suffix}): give this user read access to {what} in SAP "
                "Business One (Administration > System Initialization > Authorizations > "
                "General Authorizations), or set the source's username to a user who has it",
                retryable=False,
            )
        if is_server_trouble(status):
            return self._fail(
                "SOURCE_UNAVAILABLE",
                f"SAP Business One is unavailable (HTTP {status}): {message}{suffix}{later}",
            )
        return self._fail("QUERY_FAILED", f"SAP Business One: {message}{suffix}", retryable=False)


def resource_of(path: str, root: str) -> str:
    """What a root-relative request path reads, for a message: ``Orders``, ``$metadata``,
    ``the service document``."""
    plain = unquote(path.split("?", 1)[0])
    if plain.startswith(root):
        plain = plain[len(root):]
    first = plain.strip("/").split("/", 1)[0].split("(", 1)[0]
    first = " ".join(_CONTROL.sub(" ", first).split())[:128]
    return first or "the service document"


def _later(resp: http.client.HTTPResponse) -> str:
    """``; it asked to retry after N s`` when the answer carried a Retry-After."""
    delay = retry_after(resp.getheader("Retry-After"))
    return "" if delay is None else f"; it asked to retry after {delay:.0f} s"


_WS = re.compile(r"[ \t\n\r]*")  # JSON's whitespace (RFC 8259)
_DECIMAL_JSON = json.JSONDecoder(parse_float=decimal.Decimal)
_NOT_JSON = "SAP Business One sent a response that is not JSON"


class JsonPage:
    """One page (``{"value": [...], "@odata.nextLink": ...}``) read lazily: the other
    members are parsed at once, the ``value`` list one element at a time as ``rows()`` is
    iterated. A page's rows as Python objects take several times its text, so only the
    text (at most ``MAX_JSON_BYTES``) and the rows not yet taken are held, never the whole
    page parsed. Numbers with a fraction are ``Decimal``, as in ``_json_object``. The same
    text as ``json.loads`` accepts is accepted; an error past the first row surfaces when
    the rows before it have been taken (as a connection cut mid-page would)."""

    def __init__(self, data: bytes) -> None:
        try:
            self._text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise JobError("QUERY_FAILED", _NOT_JSON) from exc
        self.fields: dict[str, Any] = {}  # the members other than ``value``
        self.size = len(self._text)
        self._after_member = False
        self._seen_value = False
        self._list_start = -1  # just inside the value list's "["
        pos = self._ws(0)
        if not self._text.startswith("{", pos):
            self._object_expected(pos)
        self._pos = pos + 1
        if not self._members():
            raise JobError("QUERY_FAILED", "SAP Business One answered without a 'value' list")

    def _ws(self, pos: int) -> int:
        m = _WS.match(self._text, pos)
        assert m is not None  # (it matches the empty string)
        return m.end()

    def _object_expected(self, pos: int) -> None:
        try:
            json.loads(self._text)  # the document's own error, or what it is instead
        except ValueError as exc:
            raise JobError("QUERY_FAILED", _NOT_JSON) from exc
        raise JobError("QUERY_FAILED", "SAP Business One sent an unexpected JSON response")

    def _decode(self, pos: int) -> tuple[Any, int]:
        try:
            return _DECIMAL_JSON.raw_decode(self._text, pos)
        except ValueError as exc:  # JSONDecodeError, or a number too long to convert
            raise JobError("QUERY_FAILED", _NOT_JSON) from exc

    def _members(self) -> bool:
        """Read members until the ``value`` list opens (True) or the object ends (False)."""
        text = self._text
        while True:
            pos = self._ws(self._pos)
            if text.startswith("}", pos):
                self._end(pos + 1)
                return False
            if self._after_member:
                if not text.startswith(",", pos):
                    raise JobError("QUERY_FAILED", _NOT_JSON)
                pos = self._ws(pos + 1)
            if not text.startswith('"', pos):
                raise JobError("QUERY_FAILED", _NOT_JSON)
            key, pos = self._decode(pos)
            pos = self._ws(pos)
            if not text.startswith(":", pos):
                raise JobError("QUERY_FAILED", _NOT_JSON)
            pos = self._ws(pos + 1)
            self._after_member = True
            if key == "value":
                if self._seen_value:  # (json.loads kept the last: a server sending two is broken)
                    raise JobError("QUERY_FAILED", "SAP Business One sent a page with two 'value' lists")
                if not text.startswith("[", pos):
                    raise JobError("QUERY_FAILED", "SAP Business One answered without a 'value' list")
                self._seen_value = True
                self._pos = self._list_start = pos + 1
                return True
            self.fields[key], self._pos = self._decode(pos)

    def _end(self, pos: int) -> None:
        if self._ws(pos) != len(self._text):
            raise JobError("QUERY_FAILED", _NOT_JSON)  # something after the object
        self._text = ""  # the page is read: its text goes

    def rows(self) -> Iterator[Any]:
        """The elements of ``value``, in order; once they are all taken, ``fields`` holds
        every other member (the next link may come after the list)."""
        for row, end in self._elements(self._pos):
            self._pos = end
            yield row
        self._pos = self._ws(self._pos) + 1  # past the "]" the elements stopped at
        self._members()  # the members after the list, up to the end of the object

    def peek(self) -> Iterator[Any]:
        """The elements of ``value`` not taken yet, without taking them (``rows`` parses
        them again): a look at a large page's rows without holding them all."""
        for row, _ in self._elements(self._pos):
            yield row

    def _elements(self, pos: int) -> Iterator[tuple[Any, int]]:
        """From inside the list: each element and where it ends; stops at the "]"."""
        text = self._text
        first = pos == self._list_start
        while True:
            pos = self._ws(pos)
            if text.startswith("]", pos):
                return
            if not first:
                if not text.startswith(",", pos):
                    raise JobError("QUERY_FAILED", _NOT_JSON)
                pos = self._ws(pos + 1)
            first = False
            row, pos = self._decode(pos)
            yield row, pos


def _json_object(data: bytes, *, decimals: bool = False) -> dict[str, Any]:
    """A JSON object; numbers with a fraction as ``Decimal`` so amounts stay exact."""
    try:
        value = json.loads(
            data.decode("utf-8-sig"), parse_float=decimal.Decimal if decimals else float
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise JobError("QUERY_FAILED", "SAP Business One sent a response that is not JSON") from exc
    if not isinstance(value, dict):
        raise JobError("QUERY_FAILED", "SAP Business One sent an unexpected JSON response")
    return value
