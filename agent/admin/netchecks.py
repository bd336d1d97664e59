"""The network checks behind ``mini-connector diagnose``: one function per check.

Each check takes what it needs (host, port, timeout, an environment mapping) and returns
a ``Check``: its name, ``ok`` / ``warn`` / ``fail`` / ``skip``, one sentence of detail, and
for anything not ``ok`` one sentence saying how to fix it. Third-party errors (socket,
ssl, websockets, urllib) are translated into those sentences here and nowhere else.
Proxy choice mirrors what the agent's WebSocket client does (``websockets.proxy``):
``NO_PROXY`` first, then ``wss_proxy``/``socks_proxy``/``HTTPS_PROXY`` for wss://, plus
``HTTP_PROXY`` for ws://. Nothing here ever prints or returns the API key.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import email.utils
import re
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import orjson

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
CLOCK_SKEW_LIMIT = 30.0  # seconds: beyond this, token expiry and log times go wrong
CERT_WARN_DAYS = 14


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Target:
    """Where the agent dials: parsed from the configured relay URL."""

    url: str  # the WebSocket URL (ws:// or wss://)
    host: str
    port: int
    secure: bool

    @classmethod
    def parse(cls, ws_url: str) -> Target:
        parts = urlsplit(ws_url)
        secure = parts.scheme == "wss"
        return cls(ws_url, parts.hostname or "", parts.port or (443 if secure else 80), secure)

    @property
    def http_base(self) -> str:
        return f"{'https' if self.secure else 'http'}://{_hostport(self.host, self.port)}"


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def show_proxy(proxy: str) -> str:
    """The proxy URL without its user name and password, for display."""
    parts = urlsplit(proxy)
    if parts.hostname is None:
        return proxy
    netloc = _hostport(parts.hostname, parts.port) if parts.port else parts.hostname
    return urlunsplit(parts._replace(netloc=netloc))


# ---------------------------------------------------------------- proxy choice


def proxy_for(
    target: Target, env: Mapping[str, str], explicit: str | None = None
) -> tuple[str | None, str]:
    """(proxy URL or None, the sentence explaining the choice), as the agent chooses:
    the configured ``--proxy`` first, else what websockets takes from the environment;
    ``NO_PROXY`` applies to both."""
    no_proxy = next((v for k, v in env.items() if k.lower() == "no_proxy" and v), "")
    if explicit:
        if no_proxy and urllib.request.proxy_bypass_environment(
            f"{target.host}:{target.port}", {"no": no_proxy}
        ):
            return None, f"the configured proxy is bypassed: NO_PROXY excludes {target.host}: direct connection"
        return explicit, f"through the configured proxy {show_proxy(explicit)}"
    proxies: dict[str, str] = {}
    for name, value in env.items():  # lower-case names win, as in urllib
        low = name.lower()
        if low.endswith("_proxy") and value and (name == low or low[:-6] not in proxies):
            proxies[low[:-6]] = value
    names = ["wss", "socks", "https"] if target.secure else ["ws", "socks", "https", "http"]
    chosen = next(((n, proxies[n]) for n in names if n in proxies), None)
    if chosen is None:
        return None, "no proxy is set for this relay (HTTPS_PROXY): direct connection"
    if no_proxy and urllib.request.proxy_bypass_environment(
        f"{target.host}:{target.port}", {"no": no_proxy}
    ):
        return None, f"{chosen[0].upper()}_PROXY is set but NO_PROXY excludes {target.host}: direct connection"
    return chosen[1], f"through {chosen[0].upper()}_PROXY {show_proxy(chosen[1])}"


# ---------------------------------------------------------------- DNS, TCP, proxy


def check_dns(host: str, port: int, timeout: float, *, what: str = "the relay") -> tuple[Check, list[str]]:
    del timeout  # getaddrinfo has no timeout of its own; the resolver's applies
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        return Check("dns", FAIL, f"{what} host {host!r} does not resolve ({reason})",
                     "check the host name in the relay URL and this machine's DNS servers "
                     "(or /etc/hosts)"), []  # fmt: skip
    addrs = sorted({str(i[4][0]) for i in infos})
    return Check("dns", OK, f"{what} host {host} resolves to {', '.join(addrs[:4])}"), addrs


def connect_tcp(host: str, port: int, timeout: float) -> socket.socket:
    return socket.create_connection((host, port), timeout=timeout)


def _tcp_reason(exc: OSError) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out (a firewall may be dropping the packets)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listens on that port)"
    return exc.strerror or type(exc).__name__


def check_tcp(host: str, port: int, timeout: float, *, what: str = "the relay") -> Check:
    start = time.perf_counter()
    try:
        connect_tcp(host, port, timeout).close()
    except OSError as exc:
        return Check("tcp", FAIL, f"cannot connect to {what} at {_hostport(host, port)}: {_tcp_reason(exc)}",
                     f"check that {what} runs and that the firewall lets this machine open outbound "
                     f"TCP connections to {_hostport(host, port)}")  # fmt: skip
    ms = (time.perf_counter() - start) * 1000
    return Check("tcp", OK, f"connected to {what} at {_hostport(host, port)} in {ms:.1f} ms")


def open_tunnel(proxy: str, target: Target, timeout: float) -> socket.socket:
    """A socket tunnelled through an HTTP proxy with CONNECT; ``ProxyRefused`` on a refusal."""
    parts = urlsplit(proxy)
    sock = connect_tcp(parts.hostname or "", parts.port or 8080, timeout)
    hp = _hostport(target.host, target.port)
    lines = [f"CONNECT {hp} HTTP/1.1", f"Host: {hp}"]
    if parts.username:
        cred = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        lines.append("Proxy-Authorization: Basic " + base64.b64encode(cred).decode())
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    head = b""
    while b"\r\n\r\n" not in head and len(head) < 16384:
        data = sock.recv(4096)
        if not data:
            break
        head += data
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1", "replace")
    fields = status_line.split(" ", 2)
    code = int(fields[1]) if len(fields) > 1 and fields[1].isascii() and fields[1].isdigit() else 0
    if code != 200:
        sock.close()
        raise ProxyRefused(code, status_line[:200])
    return sock


class ProxyRefused(Exception):
    def __init__(self, code: int, line: str) -> None:
        super().__init__(line)
        self.code, self.line = code, line


def check_proxy(proxy: str | None, explained: str, target: Target, timeout: float) -> Check:
    if proxy is None:
        return Check("proxy", OK, explained)
    if urlsplit(proxy).scheme.lower().startswith("socks"):
        return Check("proxy", WARN, f"{explained}: a SOCKS proxy, which diagnose cannot test",
                     "make sure the python-socks package is installed; the API-key check below "
                     "goes through the proxy")  # fmt: skip
    shown = show_proxy(proxy)
    try:
        open_tunnel(proxy, target, timeout).close()
    except ProxyRefused as exc:
        # 407 is the standard answer; some proxies (tinyproxy) answer a CONNECT with bad
        # credentials with 401. Either way it is about the user and password.
        if exc.code in (401, 407):
            if urlsplit(proxy).username:
                return Check("proxy", FAIL, f"the proxy {shown} refused the user name or password in "
                             f"the proxy URL (HTTP {exc.code})",
                             "check the proxy user and password (percent-encode special characters: "
                             "@ is %40, : is %3A)")  # fmt: skip
            return Check("proxy", FAIL, f"the proxy {shown} wants authentication (HTTP {exc.code})",
                         "put the proxy user and password in the proxy URL: "
                         "HTTPS_PROXY=http://user:password@proxy:port")  # fmt: skip
        return Check("proxy", FAIL, f"the proxy {shown} refused to tunnel to "
                     f"{_hostport(target.host, target.port)} ({exc.line or 'no answer'})",
                     f"ask the network team to allow CONNECT to {_hostport(target.host, target.port)}, "
                     f"or add {target.host} to NO_PROXY if it is reachable directly")  # fmt: skip
    except OSError as exc:
        return Check("proxy", FAIL, f"cannot reach the proxy {shown}: {_tcp_reason(exc)}",
                     "check the address in HTTPS_PROXY (or unset it if this network needs no proxy)")
    return Check("proxy", OK, f"{explained}; it tunnels to {_hostport(target.host, target.port)}")


# ---------------------------------------------------------------- TLS


def check_tls(
    target: Target, proxy: str | None, timeout: float, *, ca_file: str | None = None,
    pins: tuple[str, ...] = (),
) -> Check:  # fmt: skip
    """Handshake, chain, expiry and (when configured) the SPKI pin, as the agent checks them."""
    if not target.secure:
        return Check("tls", SKIP, "plain ws:// has no TLS (acceptable to localhost only; "
                     "production relays use wss://)")  # fmt: skip
    # system CAs (SSL_CERT_FILE / SSL_CERT_DIR honoured), or the configured --ca-file
    ctx = ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
    trusted = f"the CA file {ca_file}" if ca_file else "the trusted CAs"
    try:
        raw = open_tunnel(proxy, target, timeout) if proxy else connect_tcp(target.host, target.port, timeout)
    except (OSError, ProxyRefused) as exc:
        return Check("tls", SKIP, f"no connection for the TLS check ({exc})")
    try:
        with ctx.wrap_socket(raw, server_hostname=target.host) as tls:
            cert = tls.getpeercert() or {}
            der = tls.getpeercert(binary_form=True) or b""
            version = tls.version()
    except ssl.SSLCertVerificationError as exc:
        return _tls_failure(exc.verify_message or str(exc), target)
    except (ssl.SSLError, OSError) as exc:
        return Check("tls", FAIL, f"the TLS handshake with {target.host} failed: {exc}",
                     "check that the relay URL's port serves TLS (wss://) and that no proxy "
                     "intercepts it")  # fmt: skip
    not_after = dt.datetime.fromtimestamp(ssl.cert_time_to_seconds(cert["notAfter"]), dt.UTC)
    days = (not_after - dt.datetime.now(dt.UTC)).days
    issuer = _name(cert.get("issuer", ()))
    detail = (f"{version}, certificate for {target.host} verified against {trusted}, "
              f"issued by {issuer}, valid until {not_after:%Y-%m-%d} ({days} days)")  # fmt: skip
    if pins:
        from ..link.transport import spki_sha256

        actual = spki_sha256(der)
        if actual not in pins:
            return Check("tls", FAIL, f"the relay's certificate key (pin-sha256 {actual}) does not "
                         "match the configured --pin-sha256",
                         "if the relay's key was renewed, configure its new pin with "
                         "'mini-connector configure ... --pin-sha256 NEW'; otherwise something "
                         "intercepts this TLS connection")  # fmt: skip
        detail += ", pin matches"
    if days < CERT_WARN_DAYS:
        return Check("tls", WARN, detail, "the relay's certificate expires soon: its operator must renew it")
    return Check("tls", OK, detail)


def _tls_failure(message: str, target: Target) -> Check:
    text = message.lower()
    if "expired" in text:
        fix = "the relay's certificate has expired: its operator must renew it (or this clock is wrong)"
    elif "hostname" in text or "ip address mismatch" in text:
        fix = f"the certificate is not for {target.host}: use the relay's proper host name in the URL"
    else:  # unknown issuer, self-signed, incomplete chain
        fix = ("trust the CA that signed the relay's (or your TLS-inspecting proxy's) certificate: "
               "add it to the system store (update-ca-certificates), set SSL_CERT_FILE, or "
               "'mini-connector configure ... --ca-file PEM'")  # fmt: skip
    return Check("tls", FAIL, f"the relay's certificate was refused: {message}", fix)


def _name(rdns: Any) -> str:
    for rdn in rdns:
        for key, value in rdn:
            if key in ("organizationName", "commonName"):
                return str(value)
    return "an unnamed issuer"


# ---------------------------------------------------------------- API key


async def _handshake(url: str, api_key: str, timeout: float, options: dict[str, Any]) -> None:
    from websockets.asyncio.client import connect

    async with connect(url, additional_headers={"Authorization": f"Bearer {api_key}"},
                       open_timeout=timeout, compression=None,
                       user_agent_header="mini-connector-diagnose", **options) as ws:  # fmt: skip
        await ws.close(1000, "diagnose")


def check_auth(
    endpoint: str, api_key: str, shown_key: str, timeout: float,
    options: dict[str, Any] | None = None,
) -> Check:  # fmt: skip
    """A real WebSocket handshake with the key; closed at once, before any hello."""
    from websockets.exceptions import InvalidHandshake, InvalidStatus

    fix_key = ("the key is wrong, revoked or was rotated out: get a new key for this connector "
               "(POST /connectors/{id}/rotate-key, or the console); a revoked connector gets no new "
               "key (rotate-key answers 409): register a new connector (POST /connectors) instead; "
               "then run 'mini-connector configure --relay-url URL --api-key NEW'")  # fmt: skip
    try:
        asyncio.run(_handshake(endpoint, api_key, timeout, options or {}))
    except InvalidStatus as exc:
        status = exc.response.status_code
        message = _envelope_message(exc.response.body)
        if status in (401, 403):
            return Check("auth", FAIL, f"the relay refused the API key {shown_key} (HTTP {status}"
                         f"{': ' + message if message else ''})", fix_key)  # fmt: skip
        return Check("auth", FAIL, f"the relay answered HTTP {status} at {urlsplit(endpoint).path} "
                     "instead of a WebSocket",
                     "check the relay URL, and that any reverse proxy forwards WebSocket upgrades")  # fmt: skip
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        return Check("auth", FAIL, f"the WebSocket handshake did not complete: {str(exc) or type(exc).__name__}",
                     "fix the failures above first; if there are none, check the relay URL")  # fmt: skip
    return Check("auth", OK, f"the relay accepted the API key {shown_key} at {urlsplit(endpoint).path}")


def _envelope_message(body: bytes | None) -> str:
    try:
        msg = orjson.loads(body or b"")["error"]["message"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return ""
    return str(msg)[:200]


# ---------------------------------------------------------------- clock


def check_clock(
    target: Target, timeout: float, *, proxy: str | None = None, ca_file: str | None = None,
    now: float | None = None,
) -> Check:  # fmt: skip
    """Compare this clock with the Date header of the relay's /api/v1/health."""
    url = target.http_base + "/api/v1/health"
    ctx = ssl.create_default_context(cafile=ca_file) if target.secure else None
    proxies = {"http": proxy, "https": proxy} if proxy else {}
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler(proxies), urllib.request.HTTPSHandler(context=ctx)
    )
    sent = time.time()
    try:
        with opener.open(url, timeout=timeout) as resp:
            status, date, body = resp.status, resp.headers.get("Date"), resp.read(65536)
    except urllib.error.HTTPError as exc:
        status, date, body = exc.code, exc.headers.get("Date"), exc.read(65536)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return Check("clock", FAIL, f"cannot read {url}: {reason}",
                     "fix the failures above first; the relay must answer /api/v1/health")  # fmt: skip
    received = time.time() if now is None else now
    if not date:
        return Check("clock", WARN, f"{url} answered HTTP {status} without a Date header",
                     "a reverse proxy in front of the relay may strip it; nothing to fix here")  # fmt: skip
    try:
        server = email.utils.parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError):
        return Check("clock", WARN, f"the relay's Date header {date[:60]!r} is not a valid date")
    # The header has whole seconds; compare with the middle of the request.
    skew = (sent + received) / 2 - (server + 0.5)
    relay = _health_summary(status, body)
    if abs(skew) > CLOCK_SKEW_LIMIT:
        side = "ahead of" if skew > 0 else "behind"
        return Check("clock", FAIL, f"this clock is {abs(skew):.0f} s {side} the relay's ({relay})",
                     "synchronise the clock: 'timedatectl set-ntp true' on Linux, "
                     "'w32tm /resync' on Windows")  # fmt: skip
    if status != 200:
        return Check("clock", WARN, f"clock within {abs(skew):.0f} s of the relay's, but {relay}",
                     "the relay's operator must check its database")
    return Check("clock", OK, f"clock within {max(abs(skew), 1):.0f} s of the relay's ({relay})")


def _health_summary(status: int, body: bytes) -> str:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return f"health HTTP {status}"
    if not isinstance(data, dict):
        return f"health HTTP {status}"
    return f"relay {data.get('status', '?')}, version {data.get('version', '?')}"


def format_check(check: Check) -> str:
    """One check's line. Text from the config or the relay (its URL, its answers) may hold
    control characters: they are shown escaped, as ``status`` does, never obeyed."""
    from ..config import CONTROL_CHARS

    line = f"{check.status.upper():<5} {check.name:<7} {check.detail}"
    if check.fix and check.status != OK:
        line += f". Fix: {check.fix}"
    # (a fix may span lines on purpose: the SQL of a least-privilege reader)
    return "\n".join(CONTROL_CHARS.sub(_escape, part) for part in line.split("\n"))


def _escape(m: re.Match[str]) -> str:
    return m.group().encode("unicode_escape").decode("ascii")
