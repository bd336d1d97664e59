"""The agent's TOML config and the secrets it refers to.

The config (``agent.toml``, mode 0600) names the relay, the connector's API key and the
local sources. Secrets never sit in it in clear: the API key and source passwords are
stored AES-256-GCM-encrypted with a key kept in a separate 0600 file (``secret.key``,
beside the config), or come from the environment (``MC_AGENT_API_KEY``,
``MC_SOURCE_<NAME>_PASSWORD``). A password found inside a source URL is taken out of it.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import tomli_w
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.crypto import write_secret_file

from . import platform_win

SUPPORTED_TYPES = ("sqlite", "postgres", "mysql", "mssql", "odbc", "sap_b1", "tally")
KNOWN_TYPES = ("postgres", "mysql", "mssql", "odbc", "sqlite", "sap_b1", "tally")
DEFAULT_CAPACITY = 4
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")
AGENT_PATH = "/api/v1/agent/connect"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")  # the whole name (fullmatch)
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SECRET_VERSION = "v1"  # noqa: S105 - a format tag, not a secret


class ConfigError(Exception):
    """The config file is missing, unreadable or incomplete (one sentence).

    ``brief`` is the sentence without a hint on what to do, and ``fix`` that hint, for
    those that show the two apart (``diagnose``); ``None`` when the error names no fix of
    its own (then writing the config again with ``configure`` is the fix)."""

    def __init__(self, message: str, *, fix: str | None = None, brief: str | None = None) -> None:
        super().__init__(message)
        self.fix = fix
        self.brief = brief if brief is not None else message


class InvalidInput(Exception):
    """A value the admin typed is not acceptable (one sentence)."""


@dataclass
class SourceConfig:
    name: str
    type: str
    url: str  # never holds a password
    password_enc: str | None = None
    options: dict[str, str] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        """What may be shown or sent to the relay: no secrets."""
        return {"name": self.name, "type": self.type}


@dataclass
class AgentConfig:
    relay_url: str = ""  # the first of ``relay_urls`` (what single-URL code reads)
    api_key_enc: str | None = None
    name: str | None = None
    capacity: int = DEFAULT_CAPACITY
    allow_insecure: bool = False
    sources: dict[str, SourceConfig] = field(default_factory=dict)
    transport: dict[str, Any] = field(default_factory=dict)  # agent/link/transport.py reads it
    relay_urls: list[str] = field(default_factory=list)  # several relay nodes (agent/link/relays.py)

    def all_relay_urls(self) -> list[str]:
        return list(self.relay_urls) or ([self.relay_url] if self.relay_url else [])


# ---------------------------------------------------------------- file


def _permission_hint(exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return " (run the command as the user the agent runs as, or with sudo)"
    return ""


def load_config(path: Path, *, missing_ok: bool = False) -> AgentConfig:
    try:
        exists = path.exists()  # raises when a folder on the way may not be entered
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    if not exists:
        if missing_ok:
            return AgentConfig()
        raise ConfigError(
            f"no agent config at {path}: run 'mini-connector configure' first "
            "(or pass --config / set MC_AGENT_CONFIG)"
        )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    except tomllib.TOMLDecodeError as exc:
        at = _TOML_AT.search(str(exc))
        where = f"line {at.group(1)} of {path}" if at else str(path)
        raise ConfigError(f"the agent config {path} is not valid TOML: {exc}",
                          fix=f"correct {where} by hand, or move the file aside and run "
                              f"'mini-connector configure' again (sources must then be added again)") from exc  # fmt: skip
    except UnicodeDecodeError as exc:
        raise ConfigError(f"the agent config {path} is not valid TOML: it is not UTF-8 text "
                          f"(byte {exc.start} cannot be read)",
                          fix=f"save {path} as UTF-8 text, or move it aside and run "
                              "'mini-connector configure' again (sources must then be added again)") from exc  # fmt: skip
    try:
        return _parsed(data, path)
    except ConfigError as exc:
        if exc.fix is None:
            exc.fix = (f"correct it in {path} by hand, or move the file aside and run "
                       "'mini-connector configure' again (sources must then be added again)")
        raise


def _unreadable(path: Path, exc: OSError) -> ConfigError:
    """The config (or a folder on its way) is there but cannot be read."""
    brief = f"cannot read the agent config {path}: {exc.strerror or exc}"
    if isinstance(exc, PermissionError):
        fix = (f"run the command as the user the agent runs as (or with sudo), or let that "
               f"user read {exc.filename or path}; the config is there, 'configure' would not help")
    elif isinstance(exc, IsADirectoryError):
        fix = (f"{path} is a folder: pass the config file itself with --config (or "
               f"MC_AGENT_CONFIG), e.g. {path / 'agent.toml'}")
    else:
        fix = f"check {path} and the disk it is on"
    return ConfigError(brief + _permission_hint(exc), fix=fix, brief=brief)


# Where tomllib says the error is: "... (at line 3, column 5)".
_TOML_AT = re.compile(r"\(at line (\d+), column (\d+)\)")


def _parsed(data: dict[str, Any], path: Path) -> AgentConfig:
    agent = data.get("agent", {})
    if not isinstance(agent, dict):
        raise ConfigError(f"the agent config {path} has a malformed [agent] table")
    cfg = AgentConfig(
        relay_url=_text(agent.get("relay_url", ""), "relay_url", path) or "",
        api_key_enc=_text(agent.get("api_key_enc"), "api_key_enc", path),
        name=_text(agent.get("name"), "name", path),
        capacity=_int(agent.get("capacity", DEFAULT_CAPACITY), "capacity", path),
        allow_insecure=_flag(agent.get("allow_insecure", False), "allow_insecure", path),
    )
    urls = agent.get("relay_urls")
    if isinstance(urls, list) and urls and all(isinstance(u, str) for u in urls):
        cfg.relay_urls = list(urls)
        cfg.relay_url = cfg.relay_url or urls[0]
    cfg.transport = _transport(data.get("transport", {}), path)
    sources = data.get("sources", {})
    if not isinstance(sources, dict):
        raise ConfigError(f"the agent config {path} has a malformed [sources] table")
    for name, s in sources.items():
        if not isinstance(s, dict) or "type" not in s or "url" not in s:
            raise ConfigError(f"source {name!r} in {path} needs a type and a url")
        options = s.get("options", {})
        if not isinstance(options, dict):
            raise ConfigError(f"the options of source {name!r} in {path} must be a table of KEY = \"value\"")
        cfg.sources[name] = SourceConfig(
            name=name,
            type=str(s["type"]),
            url=str(s["url"]),
            password_enc=_text(s.get("password_enc"), f"password_enc of source {name!r}", path),
            options={str(k): str(v) for k, v in options.items()},
        )
    return cfg


def _text(value: Any, what: str, path: Path) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{what} in {path} must be a quoted string")
    return value


def _transport(table: Any, path: Path) -> dict[str, Any]:
    """The [transport] table, its values of the types the agent reads. A malformed one was
    dropped without a word (its pins and CA with it: a hand edit could turn pinning off)
    and a single pin written as a string was read as one pin per character."""
    if not isinstance(table, dict):
        raise ConfigError(f"the agent config {path} has a malformed [transport] table")
    out = dict(table)
    for key in ("ca_file", "proxy", "proxy_password_enc"):
        _text(out.get(key), f"{key} in [transport]", path)
    pins = out.get("pin_sha256")
    if isinstance(pins, str):
        out["pin_sha256"] = [pins]
    elif pins is not None and not (isinstance(pins, list) and all(isinstance(p, str) for p in pins)):
        raise ConfigError(f"pin_sha256 in [transport] of {path} must be a list of quoted pins")
    return out


def _flag(value: Any, what: str, path: Path) -> bool:
    """A TOML boolean: bool() alone made a hand-edited ``allow_insecure = "false"`` true."""
    if not isinstance(value, bool):
        raise ConfigError(f"{what} in {path} must be true or false, unquoted")
    return value


def _int(value: Any, what: str, path: Path) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 256:
        raise ConfigError(f"{what} in {path} must be a whole number from 1 to 256")
    return value


def save_config(path: Path, cfg: AgentConfig) -> None:
    agent: dict[str, Any] = {"relay_url": cfg.relay_url, "capacity": cfg.capacity}
    if len(cfg.relay_urls) > 1:  # one URL stays the plain relay_url older agents read
        agent["relay_urls"] = list(cfg.relay_urls)
    if cfg.api_key_enc:
        agent["api_key_enc"] = cfg.api_key_enc
    if cfg.name:
        agent["name"] = cfg.name
    if cfg.allow_insecure:
        agent["allow_insecure"] = True
    sources: dict[str, Any] = {}
    for s in cfg.sources.values():
        entry: dict[str, Any] = {"type": s.type, "url": s.url}
        if s.password_enc:
            entry["password_enc"] = s.password_enc
        if s.options:
            entry["options"] = dict(s.options)
        sources[s.name] = entry
    doc: dict[str, Any] = {"agent": agent, "sources": sources}
    if cfg.transport:
        doc["transport"] = dict(cfg.transport)
    text = tomli_w.dumps(doc)
    ensure_state_folder(path.parent)
    write_secret_file(path, text.encode("utf-8"))
    platform_win.restrict_to_owner(path)


def ensure_state_folder(folder: Path) -> None:
    """Create the state folder readable by its owner only (existing folders are left be)."""
    if not folder.exists():
        folder.mkdir(parents=True, mode=0o700)


# ---------------------------------------------------------------- secrets


class SecretBox:
    """AES-256-GCM for the config's secrets, keyed by the 0600 ``secret.key`` file."""

    def __init__(self, key_path: Path) -> None:
        self.key_path = key_path
        self._aead: AESGCM | None = None

    def _key(self, create: bool) -> AESGCM:
        if self._aead is None:
            if not self.key_path.exists():
                if not create:
                    raise ConfigError(
                        f"the secret key {self.key_path} is missing, so stored passwords "
                        "cannot be read: add the sources again"
                    )
                ensure_state_folder(self.key_path.parent)
                write_secret_file(self.key_path, AESGCM.generate_key(bit_length=256))
                platform_win.restrict_to_owner(self.key_path)
            raw = self.key_path.read_bytes()
            if len(raw) != 32:
                raise ConfigError(f"the secret key {self.key_path} is damaged (wrong size)")
            self._aead = AESGCM(raw)
        return self._aead

    def encrypt(self, plain: str, purpose: str) -> str:
        nonce = secrets.token_bytes(12)
        ct = self._key(create=True).encrypt(nonce, plain.encode("utf-8"), purpose.encode())
        return f"{_SECRET_VERSION}:" + base64.b64encode(nonce + ct).decode("ascii")

    def decrypt(self, token: str, purpose: str) -> str:
        version, _, body = token.partition(":")
        try:
            if version != _SECRET_VERSION:
                raise ValueError(version)
            blob = base64.b64decode(body, validate=True)
            plain = self._key(create=False).decrypt(blob[:12], blob[12:], purpose.encode())
            return plain.decode("utf-8")
        except (ValueError, binascii.Error, InvalidTag, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"the stored secret for {purpose} cannot be decrypted with {self.key_path}"
            ) from exc


def env_name_for_source(name: str) -> str:
    return "MC_SOURCE_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper() + "_PASSWORD"


def source_password(
    src: SourceConfig, box: SecretBox, env: Mapping[str, str] | None = None
) -> str | None:
    """The environment's password for ``src`` if set, else the stored one, else None."""
    env = os.environ if env is None else env
    value = env.get(env_name_for_source(src.name))
    if value:
        return value
    if src.password_enc:
        return box.decrypt(src.password_enc, f"source:{src.name}")
    return None


def api_key(cfg: AgentConfig, box: SecretBox, env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    if env.get("MC_AGENT_API_KEY"):
        return env["MC_AGENT_API_KEY"].strip()
    if not cfg.api_key_enc:
        raise ConfigError("the agent config has no API key: run 'mini-connector configure'")
    return box.decrypt(cfg.api_key_enc, "api_key")


# ---------------------------------------------------------------- validation


def check_source_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name):
        raise InvalidInput(
            f"source name {name[:60]!r} is not allowed: use 1-100 letters, digits, '_', '.' "
            "or '-', starting with a letter or digit"
        )
    return name


def check_no_control(value: str, what: str) -> str:
    """``value`` if it holds no control character (a line break, a tab, an escape): such a
    character in a name, URL or option is a paste accident, and would break the config's
    readers, the status output and log lines. The value is not echoed (a URL or an
    option may hold a secret)."""
    m = CONTROL_CHARS.search(value)
    if m:
        raise InvalidInput(f"{what} contains a control character ({m.group()!r} at position {m.start() + 1}); "
                           "retype it without line breaks or tabs")  # fmt: skip
    return value


def split_url_password(url: str) -> tuple[str, str | None]:
    """Take a password out of ``scheme://user:password@host/...``; return (url, password)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, sep, password = userinfo.partition(":")
    if not sep:
        return url, None
    netloc = f"{user}@{hostport}" if user else hostport
    return urlunsplit(parts._replace(netloc=netloc)), unquote(password)


def url_with_password(url: str, password: str | None) -> str:
    """Put ``password`` back into a URL (for the driver only; never logged or stored)."""
    if not password:
        return url
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at:
        userinfo, hostport = "", parts.netloc
    netloc = f"{userinfo}:{quote(password, safe='')}@{hostport}"
    return urlunsplit(parts._replace(netloc=netloc))


def check_source_url(kind: str, url: str) -> None:
    prefixes = {
        "sqlite": ("sqlite:",),
        "postgres": ("postgresql:", "postgresql+psycopg:", "postgresql+psycopg2:", "postgres:"),
        "mysql": ("mysql:", "mysql+pymysql:", "mysql+mysqldb:", "mariadb:", "mariadb+pymysql:"),
        "sap_b1": ("https:", "http:"),
        "tally": ("http:", "https:"),
        "mssql": ("mssql+pyodbc:", "mssql:"),
    }
    if kind == "odbc":
        if not (url.lower().startswith("odbc://") or _looks_like_odbc_string(url)):
            raise InvalidInput(
                "an odbc source needs odbc://DSN or an ODBC connection string such as "
                "'DRIVER={PostgreSQL Unicode};SERVER=host;DATABASE=db;UID=user'"
            )
        return
    if kind in prefixes and not url.lower().startswith(prefixes[kind]):
        raise InvalidInput(
            f"a {kind} source needs a URL starting with {' or '.join(prefixes[kind])}//, "
            f"not {redact_url(url)!r}"
        )


def redact_url(url: str) -> str:
    return split_odbc_password(split_url_password(url)[0])[0]


def _looks_like_odbc_string(url: str) -> bool:
    head = url.split(";", 1)[0]
    return "://" not in head and "=" in head


_ODBC_PWD = re.compile(r"(?i)(?:^|;)\s*(?:pwd|password)\s*=\s*(\{(?:[^}]|\}\})*\}|[^;]*)")


def split_odbc_password(url: str) -> tuple[str, str | None]:
    """Take ``PWD=...`` / ``Password=...`` out of an ODBC connection string (also one
    inside a URL's ``odbc_connect=``); return (string without it, password)."""
    if _looks_like_odbc_string(url):
        m = _ODBC_PWD.search(url)
        if not m:
            return url, None
        value = m.group(1)
        if value.startswith("{"):
            value = value[1:-1].replace("}}", "}")
        return (url[: m.start()] + url[m.end() :]).strip(";"), value
    head, sep, query = url.partition("?")
    if not sep or "odbc_connect=" not in query.lower():
        return url, None
    parts, password = [], None
    for part in query.split("&"):
        key, eq, value = part.partition("=")
        if key.lower() == "odbc_connect":
            inner, password = split_odbc_password(unquote(value.replace("+", " ")))
            value = quote(inner, safe="")
        parts.append(f"{key}{eq}{value}")
    return head + "?" + "&".join(parts), password


def normalise_relay_url(url: str, *, allow_insecure: bool) -> str:
    """Check the relay URL: ws(s):// (http(s):// mapped), plain ws:// only to localhost."""
    url = url.strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        parts = urlsplit("")  # refused below, with the sentence every bad URL gets
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme.lower(), parts.scheme.lower())
    if scheme not in ("ws", "wss") or not parts.hostname:
        raise InvalidInput(
            f"the relay URL {url[:100]!r} must look like wss://relay.example.com "
            "(ws://, wss://, http:// or https://)"
        )
    if parts.username or parts.password:
        raise InvalidInput("the relay URL must not contain a user name or password")
    if scheme == "ws" and parts.hostname not in LOCAL_HOSTS and not allow_insecure:
        raise InvalidInput(
            "plain ws:// is only allowed to localhost: use wss:// or pass --allow-insecure"
        )
    return urlunsplit(parts._replace(scheme=scheme)).rstrip("/")


def agent_endpoint(relay_url: str) -> str:
    """The WebSocket URL to dial: the base URL plus the agent path when it has none."""
    parts = urlsplit(relay_url)
    if parts.path in ("", "/"):
        return urlunsplit(parts._replace(path=AGENT_PATH))
    return relay_url
