"""One SAP Business One Service Layer session: login, cookies, re-login, errors, logout.

Per SAP's "Working with SAP Business One Service Layer" (User Manual, sections on Login
and Logout, Session, and error handling): ``POST <root>/Login`` with ``CompanyDB``,
``UserName`` and ``Password`` answers ``SessionId``, ``Version`` and ``SessionTimeout``
(minutes) and sets the ``B1SESSION`` cookie, plus ``ROUTEID`` when a load balancer sits in
front; both go back on every request. An expired or unknown session answers 401, after
which we log in once more and repeat the request. ``POST <root>/Logout`` ends it.
Errors come as ``{"error": {"code", "message": {"lang", "value"}}}`` (OData v3, ``/b1s/v1``)
or ``{"error": {"code", "message": "..."}}`` (OData v4, ``/b1s/v2``); their text reaches the
job's error. Cookies and the password are never logged.
"""

from __future__ import annotations

import decimal
import http.client
import json
import logging
import time
from collections.abc import Iterator
from http.cookies import CookieError, SimpleCookie
from typing import Any, Protocol

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

MAX_JSON_BYTES = 256 << 20
LOGOUT_SECONDS = 5.0


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
        return text[:300], None
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

    @property
    def root(self) -> str:
        return self.source.service_root

    # ------------------------------------------------------------ login / logout

    def login(self) -> None:
        src = self.source
        payload = {"CompanyDB": src.company_db, "UserName": src.username, "Password": src.password}
        body = json.dumps(payload).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        resp = self.channel.request("POST", self.root + "/Login", body, headers)
        data = self.channel.read_all(resp, 1 << 20)
        if resp.status >= 300:
            message, code = sap_message(data, resp.status, resp.reason)
            suffix = f" (SAP code {code})" if code else ""
            if resp.status in (502, 503, 504):
                raise JobError(
                    "SOURCE_UNAVAILABLE", f"SAP Business One login failed: {message}{suffix}"
                )
            raise JobError(
                "AUTH_FAILED",
                f"SAP Business One refused the login to {src.company_db}: {message}{suffix}",
            )
        self.cookies = self._cookies(resp)
        info = _json_object(data)
        if "B1SESSION" not in self.cookies and isinstance(info.get("SessionId"), str):
            self.cookies["B1SESSION"] = info["SessionId"]
        if "B1SESSION" not in self.cookies:
            raise JobError("AUTH_FAILED", "SAP Business One answered the login without a session")
        version = info.get("Version")
        self.server_version = str(version) if version is not None else resp.getheader("Server")
        timeout = info.get("SessionTimeout")
        self.session_timeout = timeout if isinstance(timeout, int) else None
        self.logins += 1
        log.info("signed in to SAP Business One source %s as %s", src.name, src.username)

    @staticmethod
    def _cookies(resp: http.client.HTTPResponse) -> dict[str, str]:
        jar: dict[str, str] = {}
        for header in resp.headers.get_all("Set-Cookie") or []:
            cookie = SimpleCookie()
            try:
                cookie.load(header)
            except CookieError:
                continue
            for key, morsel in cookie.items():
                jar[key] = morsel.value
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
                "logout from SAP Business One source %s failed: %s", self.source.name, exc.message
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

    def get(self, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
        """GET ``path`` (root-relative path and query already built); the 2xx response with
        its body unread. A 401 (expired session) logs in once more and repeats the request."""
        relogged = False
        while True:
            resp = self.channel.request("GET", path, None, self._headers(headers or {}))
            if 200 <= resp.status < 300:
                return resp
            data = self.channel.read_all(resp, 1 << 20)
            if resp.status == 401 and not relogged:
                relogged = True
                log.info(
                    "SAP Business One session expired on source %s; signing in again",
                    self.source.name,
                )
                self.cookies = {}
                self.login()
                continue
            raise self.error(resp.status, resp.reason, data)

    def get_json(self, path: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
        resp = self.get(path, headers)
        return _json_object(self.channel.read_all(resp, MAX_JSON_BYTES), decimals=True)

    def stream(self, resp: http.client.HTTPResponse) -> Iterator[bytes]:
        """The body of ``resp`` in pieces (for incremental parsing)."""
        while True:
            chunk = self.channel.read(resp, 65536)
            if not chunk:
                return
            yield chunk

    def error(self, status: int, reason: str, body: bytes) -> JobError:
        message, code = sap_message(body, status, reason)
        suffix = f" (SAP code {code})" if code else ""
        if status == 401:
            return JobError(
                "AUTH_FAILED", f"SAP Business One refused the session: {message}{suffix}"
            )
        if status in (502, 503, 504):
            return JobError(
                "SOURCE_UNAVAILABLE", f"SAP Business One is unavailable: {message}{suffix}"
            )
        return JobError("QUERY_FAILED", f"SAP Business One: {message}{suffix}", retryable=False)


def _json_object(data: bytes, *, decimals: bool = False) -> dict[str, Any]:
    """A JSON object; numbers with a fraction as ``Decimal`` so amounts stay exact."""
    try:
        value = json.loads(data.decode("utf-8"), parse_float=decimal.Decimal if decimals else float)
    except (UnicodeDecodeError, ValueError) as exc:
        raise JobError("QUERY_FAILED", "SAP Business One sent a response that is not JSON") from exc
    if not isinstance(value, dict):
        raise JobError("QUERY_FAILED", "SAP Business One sent an unexpected JSON response")
    return value
