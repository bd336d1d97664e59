"""A small blocking HTTP(S) client for the web-API sources (SAP B1 Service Layer, Tally).

The runner drives a source from a worker thread, so this is plain ``http.client`` over one
keep-alive connection per job: TLS verified against the system store or a per-source CA
file (``ca_file``), or not at all when the admin set ``verify=false`` (logged as a warning
every time a connection is made, never silently). ``Channel.abort()`` may be called from
any thread: it shuts the socket down, so a read blocked on a slow server returns at once
and the job ends ``CANCELLED``; a connect still waiting for a server that never answers
is given up within ``ABORT_POLL`` too. A job deadline bounds every socket wait, so a
server that stops answering ends the job ``TIMEOUT``. Socket, TLS and HTTP exceptions become
``JobError`` here, at the edge where they arise, and nowhere else.
"""

from __future__ import annotations

import errno
import http.client
import logging
import os
import selectors
import socket
import ssl
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from shared.errors import JobError

log = logging.getLogger("agent.sources")

DEFAULT_IO_TIMEOUT = 60.0
ABORT_POLL = 0.1  # how often a connect in progress looks whether the job was cancelled
_IN_PROGRESS = {errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY}
_IN_PROGRESS.add(getattr(errno, "WSAEWOULDBLOCK", errno.EWOULDBLOCK))
_FALSE = {"0", "false", "no", "off"}
_TRUE = {"1", "true", "yes", "on"}
# TLS alerts that mean "this port does not speak TLS" (an https:// URL for a plain HTTP port)
_NOT_TLS = {"WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "RECORD_LAYER_FAILURE",
            "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST"}  # fmt: skip


def parse_bool(value: Any, default: bool = True, *, name: str = "verify") -> bool:
    """An on/off option. A value that is neither (``verify=flase``) is refused rather than
    guessed: read as true it would silently keep checks the admin meant to turn off, read
    as false it would silently drop checks."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _FALSE:
        return False
    if text in _TRUE:
        return True
    raise JobError(
        "SOURCE_UNAVAILABLE",
        f"option {name} must be true or false, not {str(value)[:20]!r}",
        retryable=False,
    )


def parse_positive(value: Any, default: float, *, name: str) -> float:
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = -1.0
    if number <= 0:
        raise JobError(
            "SOURCE_UNAVAILABLE", f"option {name} must be a positive number", retryable=False
        )
    return number


class Endpoint:
    """Where a web source lives (scheme, host, port, base path) and how TLS is checked."""

    def __init__(
        self,
        source_name: str,
        url: str,
        *,
        default_port: int,
        ca_file: str | None = None,
        verify: bool = True,
        io_timeout: float = DEFAULT_IO_TIMEOUT,
    ) -> None:
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise JobError(
                "SOURCE_UNAVAILABLE",
                f"source {source_name!r} needs an http:// or https:// URL",
                retryable=False,
            )
        if parts.username or parts.password:
            # A password belongs in the encrypted password slot, never in a URL.
            raise JobError(
                "SOURCE_UNAVAILABLE",
                f"source {source_name!r}: put no user or password in the URL",
                retryable=False,
            )
        self.source_name = source_name
        self.scheme = parts.scheme
        self.host = parts.hostname
        try:
            self.port = parts.port or default_port
        except ValueError as exc:
            raise JobError("SOURCE_UNAVAILABLE", f"source {source_name!r} has a bad port") from exc
        self.base_path = parts.path.rstrip("/")
        self.ca_file = ca_file or None
        self.verify = verify
        self.io_timeout = io_timeout
        self._ssl: ssl.SSLContext | None = None

    @property
    def netloc(self) -> str:
        return f"{self.host}:{self.port}"

    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            if not self.verify:
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            else:
                try:
                    ctx = ssl.create_default_context(cafile=self.ca_file)
                except (OSError, ssl.SSLError) as exc:
                    raise JobError(
                        "SOURCE_UNAVAILABLE",
                        f"source {self.source_name!r}: cannot read its CA file: {exc}",
                        retryable=False,
                    ) from exc
            self._ssl = ctx
        return self._ssl

    def open(self, timeout: float) -> http.client.HTTPConnection:
        if self.scheme == "https":
            if not self.verify:
                log.warning(
                    "TLS certificate verification is OFF for source %s (option verify=false)",
                    self.source_name,
                )
            return http.client.HTTPSConnection(
                self.host, self.port, timeout=timeout, context=self.ssl_context()
            )
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)


class Channel:
    """One keep-alive connection used by one job; ``abort`` from any thread."""

    def __init__(self, endpoint: Endpoint, *, deadline: float | None = None) -> None:
        self.endpoint = endpoint
        self.deadline = deadline
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()
        self.aborted = threading.Event()

    # ------------------------------------------------------------ timing

    def _wait_limit(self) -> float:
        limit = self.endpoint.io_timeout
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise self._timeout_error()
            limit = min(limit, left)
        return max(limit, 0.001)

    def _timeout_error(self) -> JobError:
        if self.deadline is not None and time.monotonic() >= self.deadline - 0.01:
            return JobError("TIMEOUT", "the query ran past its time limit and was stopped")
        return JobError(
            "TIMEOUT",
            f"{self.endpoint.netloc} gave no answer within {self.endpoint.io_timeout:g} s",
        )

    def _arm(self) -> None:
        limit = self._wait_limit()
        conn = self._conn
        if conn is not None and conn.sock is not None:
            conn.sock.settimeout(limit)

    # ------------------------------------------------------------ requests

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> http.client.HTTPResponse:
        """Send one request and return its response, headers read, body unread."""
        self.check()
        for attempt in (1, 2):
            with self._lock:
                if self.aborted.is_set():
                    raise self.cancelled_error()
                fresh = self._conn is None
                if fresh:
                    self._conn = self.endpoint.open(self._wait_limit())
                    self._conn._create_connection = self._connect  # type: ignore[attr-defined]
                conn = self._conn
            try:
                if fresh:
                    conn.connect()
                    if self.aborted.is_set():
                        raise self.cancelled_error()
                self._arm()
                conn.request(method, path, body=body, headers=headers or {})
                return conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                # A kept-alive connection the server had already closed: retry once, fresh.
                self.drop()
                if attempt == 2 or fresh:
                    raise self.translate(exc) from exc
            except Exception as exc:
                self.drop()
                raise self.translate(exc) from exc
        raise AssertionError("unreachable")

    def _connect(
        self, address: tuple[str, int], timeout: float | None, source_address: Any = None
    ) -> socket.socket:
        """``socket.create_connection`` that ``abort`` can interrupt: a server whose SYNs go
        unanswered (a firewall that drops) would otherwise hold a cancelled job in
        ``connect`` for the whole socket timeout."""
        host, port = address
        wait = timeout if timeout is not None else self.endpoint.io_timeout
        end = time.monotonic() + wait
        error: OSError | None = None
        for family, kind, proto, _, addr in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
            sock = socket.socket(family, kind, proto)
            try:
                if source_address:
                    sock.bind(source_address)
                sock.setblocking(False)
                err = sock.connect_ex(addr)
                # a selector, not select.select: that refuses a descriptor past 1023
                with selectors.DefaultSelector() as sel:
                    sel.register(sock, selectors.EVENT_WRITE)
                    while err in _IN_PROGRESS:
                        if self.aborted.is_set():
                            raise self.cancelled_error()
                        left = end - time.monotonic()
                        if left <= 0:
                            raise TimeoutError("timed out connecting")
                        if sel.select(min(left, ABORT_POLL)):  # connected or failed
                            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, os.strerror(err))  # e.g. ConnectionRefusedError
                sock.settimeout(wait)
                return sock
            except OSError as exc:
                sock.close()
                error = exc
            except BaseException:
                sock.close()
                raise
        raise error or OSError(f"{host} has no address")

    def read(self, response: http.client.HTTPResponse, size: int) -> bytes:
        """Up to ``size`` bytes of the body (b"" at its end)."""
        self.check()
        try:
            self._arm()
            data = response.read1(size)
            if not data or (not response.chunked and response.length == 0):
                response.read()  # completes the response, so the connection can be reused
        except Exception as exc:
            self.drop()
            raise self.translate(exc) from exc
        self.check()  # an abort makes the socket read return early, maybe with b""
        return data

    def read_capped(self, response: http.client.HTTPResponse, limit: int) -> bytes:
        """The first ``limit`` bytes of a body whose rest does not matter (an error page, a
        greeting); a longer body is cut and its connection dropped, never a failure."""
        parts: list[bytes] = []
        total = 0
        while total < limit:
            chunk = self.read(response, limit - total)
            if not chunk:
                return b"".join(parts)
            parts.append(chunk)
            total += len(chunk)
        self.drop()  # the rest is not read: the connection cannot be reused
        return b"".join(parts)

    def read_all(self, response: http.client.HTTPResponse, limit: int) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            chunk = self.read(response, 65536)
            if not chunk:
                return b"".join(parts)
            total += len(chunk)
            if total > limit:
                self.drop()
                size = f"{limit >> 20} MiB" if limit >= 1 << 20 else f"{limit >> 10} KiB"
                raise JobError("QUERY_FAILED", f"the response is larger than {size}")
            parts.append(chunk)

    # ------------------------------------------------------------ errors and shutdown

    def deadline_passed(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def check(self) -> None:
        if self.aborted.is_set():
            raise self.cancelled_error()
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.drop()
            raise self._timeout_error()

    @staticmethod
    def cancelled_error() -> JobError:
        return JobError("CANCELLED", "the job was cancelled", retryable=False)

    def translate(self, exc: BaseException) -> JobError:
        if isinstance(exc, JobError):
            return exc
        if self.aborted.is_set():
            return self.cancelled_error()
        where = self.endpoint.netloc
        if isinstance(exc, (TimeoutError, socket.timeout)):
            return self._timeout_error()
        if isinstance(exc, ssl.SSLCertVerificationError):
            fix = (
                f"it is not signed by the CA in ca_file {self.endpoint.ca_file}, or names "
                "another host"
                if self.endpoint.ca_file
                else "give the source a ca_file, or verify=false to opt out"
            )
            return JobError(
                "SOURCE_UNAVAILABLE",
                f"the TLS certificate of {where} was not accepted ({exc.verify_message}); {fix}",
                retryable=False,
            )
        if isinstance(exc, ssl.SSLError) and exc.reason in _NOT_TLS:
            return JobError(
                "SOURCE_UNAVAILABLE",
                f"{where} does not answer in TLS ({exc.reason}): is it a plain HTTP port? Use "
                "an http:// URL for it, or the server's HTTPS port",
                retryable=False,
            )
        if isinstance(exc, ssl.SSLError):
            return JobError("SOURCE_UNAVAILABLE", f"TLS with {where} failed: {exc.reason or exc}")
        if isinstance(exc, socket.gaierror):
            return JobError(
                "SOURCE_UNAVAILABLE", f"the host {self.endpoint.host} cannot be resolved"
            )
        if isinstance(exc, ConnectionRefusedError):
            return JobError("SOURCE_UNAVAILABLE", f"{where} refused the connection")
        if isinstance(exc, http.client.IncompleteRead):
            return JobError(
                "SOURCE_UNAVAILABLE",
                f"the answer from {where} stopped before its end (the connection closed "
                "early); it may succeed if retried",
            )
        if isinstance(exc, (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)) and (
            self.endpoint.scheme == "http"
        ):  # (a TLS port closes a plain request's connection; which error shows is a race)
            return JobError(
                "SOURCE_UNAVAILABLE",
                f"{where} closed the connection without an answer (if that port speaks TLS, "
                "the URL should start with https://)",
            )
        if isinstance(exc, (http.client.HTTPException, OSError)):
            text = str(exc) or type(exc).__name__
            return JobError("SOURCE_UNAVAILABLE", f"the connection to {where} failed: {text}"[:500])
        return JobError(
            "QUERY_FAILED", f"unexpected failure talking to {where}: {type(exc).__name__}"
        )

    def abort(self) -> None:
        """Stop whatever the job is waiting for. Thread-safe, idempotent, never raises."""
        self.aborted.set()
        conn = self._conn
        sock = getattr(conn, "sock", None) if conn is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed: nothing is waiting on it

    def drop(self) -> None:
        """Close the connection (a new request opens another). Never raises."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except OSError:
                log.debug("closing a source connection failed", exc_info=True)

    close = drop
