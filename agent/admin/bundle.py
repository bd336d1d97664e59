"""``mini-connector diagnose --bundle FILE.zip``: a support bundle an admin can mail.

What goes in: the diagnose results, the config with every secret replaced by what kind
of secret it is, the status file, recent local logs (newest ``MAX_LOG_BYTES``),
versions, and facts about the system. What never goes in: the API key, source
passwords, ``secret.key``, the agent's private key, the spool. Two guards: secrets are
left out by construction, and every text is passed through the log redactor and then
scrubbed of the literal secret values this agent knows (the key, the passwords, the
secret-key file's bytes in hex and base64) before it is written. The zip is 0600.
"""

from __future__ import annotations

import base64
import datetime as dt
import importlib.metadata
import os
import re
import socket
import sqlite3
import ssl
import sys
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson

from shared import __version__

from .. import osfacts
from ..config import (
    ConfigError,
    SecretBox,
    env_name_for_source,
    load_config,
    redact_url,
    source_password,
)
from ..config import api_key as read_api_key
from ..logs import redact
from ..paths import StatePaths
from ..status import read_status
from .errors import EXIT_BUNDLE, OpsError
from .netchecks import Check, format_check, show_proxy

MAX_LOG_BYTES = 5 << 20
DISTRIBUTIONS = ("websockets", "psutil", "cryptography", "orjson", "SQLAlchemy", "psycopg",
                 "psycopg-binary", "pglast", "PyMySQL", "pyodbc", "tomli_w", "defusedxml", "pywin32")  # fmt: skip
_SECRET_OPTION = re.compile(r"(?i)pass|pwd|secret|token|key|credential")


class Scrubber:
    """Removes known secret values (and anything the log redactor knows) from text."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        text = redact(text)
        for s in self.secrets:
            text = text.replace(s, "****")
        return text


def _known_secrets(paths: StatePaths, env: Mapping[str, str]) -> list[str]:
    found: list[str] = []
    try:
        raw = paths.secret_key.read_bytes()
        found += [raw.hex(), base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()]
    except OSError:
        pass
    try:
        cfg = load_config(paths.config)
        box = SecretBox(paths.secret_key)
    except ConfigError:
        return found
    try:
        found.append(read_api_key(cfg, box, env))
    except ConfigError:
        pass
    for src in cfg.sources.values():
        try:
            found.append(source_password(src, box, env) or "")
        except ConfigError:
            pass
    try:
        from ..config import split_url_password
        from ..link.transport import Transport

        proxy = Transport.from_config(cfg).proxy_url(box)
        found.append((split_url_password(proxy)[1] or "") if proxy else "")
    except ConfigError:
        pass
    for name, value in env.items():
        if name.lower().endswith("_proxy") and "@" in value:
            found.append(value.rsplit("@", 1)[0].split("://", 1)[-1])  # user:password
    return found


def config_view(paths: StatePaths, env: Mapping[str, str]) -> dict[str, Any]:
    """The config as an admin sees it, every secret replaced by where it is kept."""
    try:
        cfg = load_config(paths.config)
    except ConfigError as exc:
        return {"path": str(paths.config), "error": str(exc)}
    if env.get("MC_AGENT_API_KEY"):
        key_state = "from MC_AGENT_API_KEY"
    else:
        key_state = "stored encrypted" if cfg.api_key_enc else "missing"
    sources = []
    for s in cfg.sources.values():
        if env.get(env_name_for_source(s.name)):
            pw = f"from {env_name_for_source(s.name)}"
        else:
            pw = "stored encrypted" if s.password_enc else None
        options = {k: ("****" if _SECRET_OPTION.search(k) else v) for k, v in s.options.items()}
        sources.append({"name": s.name, "type": s.type, "url": redact_url(s.url), "passwordKept": pw,
                        "options": options})  # fmt: skip
    return {"path": str(paths.config), "relayUrl": cfg.relay_url, "name": cfg.name,
            "capacity": cfg.capacity, "allowInsecure": cfg.allow_insecure, "apiKeyKept": key_state,
            "sources": sources, "transport": _transport_view(cfg.transport),
            **_state_files(paths)}  # fmt: skip


# What the agent itself keeps beside its config (agent/paths.py, agent/jobs/keyring.py).
_OWN_FILES = frozenset({"secret.key", "agent_key.pem", "agent_key.prev.pem", "agent_key.prev.json",
                        "agent_kem.key", "agent_kem.prev.key", "spool.db", "spool.db-wal", "spool.db-shm",
                        "spool.db-journal", "logs", "status.json"})  # fmt: skip


def _state_files(paths: StatePaths) -> dict[str, Any]:
    """The agent's own files by name; anything else in the folder only counted: a config
    kept in a shared folder (a source tree, a home) must not list that folder's files."""
    if not paths.folder.is_dir():
        return {"stateFiles": [], "otherFiles": 0}
    names = sorted(p.name for p in paths.folder.iterdir())
    own = [n for n in names if n in _OWN_FILES or n == paths.config.name]
    return {"stateFiles": own, "otherFiles": len(names) - len(own)}


def _transport_view(transport: Mapping[str, Any]) -> dict[str, Any]:
    """``[transport]`` (CA file, pins, proxy) with the proxy password's place only."""
    view = {k: v for k, v in transport.items() if k != "proxy_password_enc"}
    if "proxy" in view:
        view["proxy"] = show_proxy(str(view["proxy"]))
    view["proxyPasswordKept"] = "stored encrypted" if transport.get("proxy_password_enc") else None
    return view


def versions() -> dict[str, Any]:
    out: dict[str, Any] = {"mini-connector": __version__, "python": sys.version.split()[0],
                           "openssl": ssl.OPENSSL_VERSION, "sqlite": sqlite3.sqlite_version,
                           "frozen": bool(getattr(sys, "frozen", False))}  # fmt: skip
    for dist in DISTRIBUTIONS:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def system_facts(paths: StatePaths, env: Mapping[str, str]) -> dict[str, Any]:
    import psutil

    mem = psutil.virtual_memory()
    facts: dict[str, Any] = {
        "collectedAt": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "hostname": socket.gethostname(), **osfacts.facts(),
        "executable": sys.executable, "cpuCount": os.cpu_count(),
        "memoryTotalMB": mem.total >> 20, "memoryAvailableMB": mem.available >> 20,
        "bootTime": dt.datetime.fromtimestamp(psutil.boot_time(), dt.UTC).isoformat(timespec="seconds"),
        "timezone": list(__import__("time").tzname),
        "systemdRunning": os.path.isdir("/run/systemd/system"),
        "container": os.path.exists("/.dockerenv") or os.path.exists("/run/.containerenv"),
        "proxies": {k: show_proxy(v) for k, v in env.items() if k.lower().endswith("_proxy")},
        "sslCertFile": env.get("SSL_CERT_FILE"),
    }  # fmt: skip
    if hasattr(os, "geteuid"):
        facts["euid"] = os.geteuid()
    try:
        usage = psutil.disk_usage(str(paths.folder if paths.folder.exists() else Path.cwd()))
        facts["stateFolderFreeMB"] = usage.free >> 20
    except OSError:
        pass
    return facts


def recent_logs(paths: StatePaths, limit: int = MAX_LOG_BYTES) -> list[tuple[str, bytes]]:
    """(name, content) of the newest log files, newest bytes first, within ``limit``."""
    files = [paths.log_file] + [paths.log_file.with_name(f"{paths.log_file.name}.{i}") for i in range(1, 10)]
    out: list[tuple[str, bytes]] = []
    left = limit
    for f in files:
        if left <= 0 or not f.is_file():
            continue
        size = f.stat().st_size
        with f.open("rb") as fh:
            if size > left:
                fh.seek(size - left)
                data = fh.read()
                data = data[data.find(b"\n") + 1 :]  # start on a whole line
            else:
                data = fh.read()
        out.append((f.name, data))
        left -= len(data)
    return out


def write_bundle(
    dest: str | Path, paths: StatePaths, checks: list[Check], *, env: Mapping[str, str] | None = None
) -> Path:
    env = os.environ if env is None else env
    target = Path(dest).expanduser().resolve()
    scrub = Scrubber(_known_secrets(paths, env))
    status = read_status(paths.status_file)

    members: dict[str, str] = {
        "README.txt": (f"Mini Connector support bundle, made by mini-connector {__version__} on "
                       f"{socket.gethostname()} at {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M:%S} UTC.\n"
                       "It holds the diagnose results, the config with its secrets left out, the "
                       "status file, recent logs, versions and system facts. It never holds the API "
                       "key, source passwords, secret.key or the agent's private key.\n"),
        "diagnose.txt": "\n".join(format_check(c) for c in checks) + "\n",
        "diagnose.json": _json([c.as_dict() for c in checks]),
        "config.json": _json(config_view(paths, env)),
        "status.json": _json(status),
        "versions.json": _json(versions()),
        "system.json": _json(system_facts(paths, env)),
    }
    for name, data in recent_logs(paths):
        members[f"logs/{name}"] = data.decode("utf-8", "replace")
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, text in members.items():
                zf.writestr(f"mini-connector-bundle/{name}", scrub(text))
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OpsError(f"cannot write the support bundle {target}: {exc.strerror or exc}.",
                       EXIT_BUNDLE) from exc  # fmt: skip
    return target


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str).decode()
