"""Everything the relay needs, in one dataclass handed to ``create_app(config)``.

``RelayConfig.from_env(**overrides)`` reads the ``MC_RELAY_*`` environment variables;
explicit overrides (CLI flags, tests) win. Nothing else in the relay reads the
environment. The data key that encrypts result chunks at rest comes from
``MC_RELAY_DATA_KEY`` / ``MC_RELAY_DATA_KEY_FILE``; failing those it is generated once and
kept in a 0600 file beside a SQLite database (or per process with ``--dev``); several
ids (``MC_RELAY_DATA_KEYS``) allow rotation, see ``cipher_from_env``.
"""

from __future__ import annotations

import base64
import binascii
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from shared.crypto import DataCipher, create_secret_file_once

from .web.clientaddr import parse_networks

DEFAULT_DATABASE_URL = "sqlite:///./relay.db"
# Documented dev secret: `mini-relay serve --dev` and `mini-relay token --dev` agree on it
# so a developer can mint tokens from another shell. Never accepted outside --dev.
DEV_JWT_SECRET = "mini-relay-dev-secret-not-for-production"  # noqa: S105
DATA_KEY_FILE_NAME = "relay-data.key"


# Requests a minute per token by role. admin and support: people, as the seed API (100).
# service: the platform's workers. bench/small_jobs.py reaches ~1,000 jobs/s, a submit and a
# read each: 2,000 requests/s = 120,000 a minute from one token (bench/dispatch_latency.py's
# 100 jobs/s with reads is a tenth of it). Per tenant: the per-token limit times the factor,
# so a tenant's service tokens together carry twice that (two workers, or a token and its
# replacement), while admins share one person-sized budget.
DEFAULT_RATE_LIMITS: dict[str, int] = {"admin": 100, "support": 100, "service": 120_000}
TENANT_RATE_FACTOR: dict[str, int] = {"admin": 1, "support": 1, "service": 2}


class ConfigError(Exception):
    """A configuration the relay cannot start with; the message is one sentence."""


@dataclass
class RelayConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    database_url: str = DEFAULT_DATABASE_URL
    jwt_secret: str | None = None
    jwt_public_key: str | None = None  # PEM; enables RS256 tokens
    jwt_audience: str | None = None  # the aud tokens must name (comma-separated); unset: none
    dev: bool = False
    heartbeat_interval: float = 15.0
    offline_after_missed: int = 3
    hello_timeout: float = 10.0
    # -- Request limits per minute, per token and per tenant, by role (rate_limits() below;
    # docs/OPERATIONS.md). None: the default. rate_limit_per_minute (MC_RELAY_RATE_LIMIT) is
    # the old single knob: when set it is every role's per-token limit not set on its own.
    rate_limit_per_minute: int | None = None
    rate_limit_admin: int | None = None
    rate_limit_support: int | None = None
    rate_limit_service: int | None = None
    tenant_rate_limit_admin: int | None = None
    tenant_rate_limit_support: int | None = None
    tenant_rate_limit_service: int | None = None
    result_ttl_seconds: float = 86400.0
    log_retention_lines: int = 10_000
    event_sockets_per_tenant: int = 100  # open /events sockets per tenant on one relay node
    result_streams_per_tenant: int = 200  # open GET /jobs/{id}/results per tenant on one node
    send_timeout: float = 60.0  # a results or events client taking no byte this long is cut
    metrics_retention_seconds: float = 86400.0
    rotate_grace_seconds: float = 86400.0
    window: int = 8
    store_compression: str = "zstd"  # result chunks at rest: zstd or none (relay/atrest.py)
    max_chunk_bytes: int = 4 << 20
    max_body_bytes: int = 1 << 20
    max_violations: int = 10
    handshake_failure_limit: int = 20  # failed agent handshakes per address and key id per minute
    # -- API hygiene (docs/SECURITY.md): limits per client address, and whom to believe about it
    handshake_address_failure_limit: int = 100  # ... per address, all key ids (known-good keys pass)
    auth_failure_limit: int = 10  # requests failing authentication per client address per minute
    trusted_proxies: str = ""  # addresses/CIDRs whose X-Forwarded-For is believed; default none
    sweep_interval: float | None = None  # default: a fraction of the heartbeat interval
    result_poll_interval: float = 1.0
    maintenance_interval: float = 5.0  # job TTL expiry, sample and result pruning
    restart_lease_grace: float = 75.0  # at startup, in-flight leases last at least this
    node_id: str | None = None  # this relay node among several (relay/agents/cluster.py); default random
    downloads_url_base: str = "/downloads"
    downloads_dir: str | None = None  # the folder GET /downloads/<name> serves (relay/api/downloads.py)
    metrics_token: str | None = field(default=None, repr=False)  # GET /metrics needs it when set
    reconnect_delay_min: float = 1.0  # shutdown: agents are told to come back after
    reconnect_delay_spread: float = 10.0  # min + uniform(0, spread) seconds, each its own
    shutdown_grace: float = 10.0  # shutdown: how long agents get to disconnect
    store_start_wait: float = 30.0  # start: how long to wait for a store database out of reach
    tls_cert: str | None = None  # PEM chain: the relay serves TLS itself (else behind a proxy)
    tls_key: str | None = None
    data_cipher: DataCipher | None = field(default=None, repr=False)
    version: str = "0.1.0"
    # Hostile agents (issue 13; relay/agents/guard.py, docs/OPERATIONS.md): per agent connection.
    agent_memory_budget: int = 64 << 20  # bytes of frames in hand before its socket is not read
    chunk_threads: int = 2  # threads that decompress, check and seal chunk payloads (per node)
    agent_log_lines_per_second: float = 200.0  # log lines kept per second; the rest dropped
    agent_log_bytes_per_second: float = 256 << 10  # and log bytes per second
    agent_log_burst_seconds: float = 10.0  # a burst may use this many seconds of either rate
    agent_log_line_max: int = 8192  # characters of a log line's message kept (the rest cut)
    agent_clock_skew: float = 300.0  # a log timestamp later than receipt + this is clamped
    agent_violation_penalty: float = 5.0  # after a 4008 close, the key's handshakes get 429 this long

    @property
    def sweep_every(self) -> float:
        if self.sweep_interval is not None:
            return self.sweep_interval
        return max(0.02, min(5.0, self.heartbeat_interval / 3))

    @property
    def offline_after(self) -> float:
        return self.heartbeat_interval * self.offline_after_missed

    def rate_limits(self) -> dict[str, tuple[int, int]]:
        """role -> (requests a minute per token, per tenant). Per token: the role's own
        setting, else ``MC_RELAY_RATE_LIMIT``, else ``DEFAULT_RATE_LIMITS``. Per tenant: the
        role's own setting, else the per-token limit times ``TENANT_RATE_FACTOR``."""
        out: dict[str, tuple[int, int]] = {}
        for role, default in DEFAULT_RATE_LIMITS.items():
            own = getattr(self, f"rate_limit_{role}")
            per_token = own if own is not None else (self.rate_limit_per_minute or default)
            tenant = getattr(self, f"tenant_rate_limit_{role}")
            out[role] = (per_token, tenant if tenant is not None else per_token * TENANT_RATE_FACTOR[role])
        return out

    @property
    def public_rate_limit(self) -> int:
        """Counted public routes (downloads, the agent socket's upgrade), per key or address."""
        return self.rate_limit_per_minute or DEFAULT_RATE_LIMITS["admin"]

    def effective_jwt_secret(self) -> str | None:
        if self.jwt_secret:
            return self.jwt_secret
        return DEV_JWT_SECRET if self.dev else None

    def check(self) -> None:
        """Raise ``ConfigError`` for a configuration that cannot serve safely."""
        if not self.effective_jwt_secret() and not self.jwt_public_key:
            raise ConfigError(
                "MC_RELAY_JWT_SECRET is not set: set it (or run with --dev for a local trial)"
            )
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"the port must be 0 to 65535 (--port, MC_RELAY_PORT), not {self.port}")
        if not 0 < self.heartbeat_interval < float("inf"):  # also refuses nan
            raise ConfigError("the heartbeat interval must be positive")
        for name, var in _RATE_VARS:
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{var} must be a positive number of requests a minute")
        if self.auth_failure_limit <= 0 or self.handshake_address_failure_limit <= 0:
            raise ConfigError("MC_RELAY_AUTH_FAILURES and MC_RELAY_HANDSHAKE_ADDRESS_FAILURES must be positive")
        if not 0 < self.send_timeout < 86400 * 365:  # also refuses nan
            raise ConfigError("MC_RELAY_SEND_TIMEOUT must be a positive number of seconds")
        if not 0 <= self.store_start_wait <= 86400:  # also refuses nan
            raise ConfigError("MC_RELAY_STORE_START_WAIT must be 0 to 86400 seconds")
        try:
            parse_networks(self.trusted_proxies)
        except ValueError as exc:
            raise ConfigError(f"MC_RELAY_TRUSTED_PROXIES: {exc}") from None

    def cipher(self) -> DataCipher:
        """The data-at-rest cipher, loading or creating its key on first use."""
        if self.data_cipher is None:
            self.data_cipher = load_data_cipher(self.database_url, dev=self.dev)
        return self.data_cipher

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> RelayConfig:
        env = dict(os.environ if env is None else env)
        values: dict[str, Any] = {}
        for name, var, conv in _ENV:
            raw = env.get(var)
            if raw not in (None, ""):
                try:
                    values[name] = conv(raw)
                except _OutOfRange as exc:
                    raise ConfigError(f"{var} has an invalid value {raw!r}: {exc}") from None
                except ValueError as exc:
                    raise ConfigError(f"{var} has an invalid value {raw!r}") from exc
        known = {f.name for f in fields(cls)}
        for k, v in overrides.items():
            if k not in known:
                raise TypeError(f"unknown relay setting {k!r}")
            if v is not None:
                values[k] = v
        if "jwt_public_key" not in values and env.get("MC_RELAY_JWT_PUBLIC_KEY_FILE"):
            path = env["MC_RELAY_JWT_PUBLIC_KEY_FILE"]
            try:
                values["jwt_public_key"] = Path(path).read_text(encoding="ascii")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"MC_RELAY_JWT_PUBLIC_KEY_FILE {path} cannot be read") from exc
        cfg = cls(**values)
        if cfg.data_cipher is None:
            cfg.data_cipher = cipher_from_env(env)
        return cfg


def _int(raw: str) -> int:
    """An integer in ASCII digits (``int()`` alone takes other scripts' digits and ``1_000``)."""
    value = raw.strip()
    digits = value[1:] if value.startswith("-") else value
    if not digits.isascii() or not digits.isdigit() or len(digits) > 19:
        raise ValueError(raw)
    return int(value)


class _OutOfRange(ValueError):
    def __init__(self, lo: float, hi: float) -> None:
        super().__init__(f"it must be a number from {_plain(lo)} to {_plain(hi)}")


def _plain(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _ranged(lo: float, hi: float, *, integer: bool = False) -> Callable[[str], float]:
    """A number from ``lo`` to ``hi`` (ASCII digits for an integer). ``float()`` alone takes
    nan, inf and 1e400; nan passed every ``<= 0`` check after it (a heartbeat interval of
    nan meant no session ever timed out)."""

    def conv(raw: str) -> float:
        value = _int(raw) if integer else float(raw.strip())
        if not lo <= value <= hi:  # also refuses nan
            raise _OutOfRange(lo, hi)
        return value

    return conv


_DAY, _YEAR = 86_400.0, 365 * 86_400.0


def _window(raw: str) -> int:
    """Unacknowledged chunks an agent may have in flight per job (1-64)."""
    value = _int(raw)
    if not 1 <= value <= 64:
        raise ValueError(raw)
    return value


def _lines(raw: str) -> int:
    """A count of log lines to keep: at least 1."""
    value = _int(raw)
    if value < 1:
        raise ValueError(raw)
    return value


def _compression(raw: str) -> str:
    """How result chunks are stored: ``zstd`` (compressed, then encrypted) or ``none``."""
    value = raw.strip().lower()
    if value not in ("zstd", "none"):
        raise ValueError(raw)
    return value


def _bool(raw: str) -> bool:
    return raw.strip().lower() in ("1", "true", "yes", "on")


_ENV: list[tuple[str, str, Any]] = [
    ("host", "MC_RELAY_HOST", str),
    ("port", "MC_RELAY_PORT", _ranged(0, 65535, integer=True)),
    ("database_url", "MC_RELAY_DATABASE_URL", str),
    ("jwt_secret", "MC_RELAY_JWT_SECRET", str),
    ("jwt_public_key", "MC_RELAY_JWT_PUBLIC_KEY", str),
    ("jwt_audience", "MC_RELAY_JWT_AUDIENCE", str),
    ("dev", "MC_RELAY_DEV", _bool),
    ("heartbeat_interval", "MC_RELAY_HEARTBEAT_INTERVAL", _ranged(0.01, 3600)),
    ("rate_limit_per_minute", "MC_RELAY_RATE_LIMIT", _int),
    ("rate_limit_admin", "MC_RELAY_RATE_LIMIT_ADMIN", _int),
    ("rate_limit_support", "MC_RELAY_RATE_LIMIT_SUPPORT", _int),
    ("rate_limit_service", "MC_RELAY_RATE_LIMIT_SERVICE", _int),
    ("tenant_rate_limit_admin", "MC_RELAY_TENANT_RATE_LIMIT_ADMIN", _int),
    ("tenant_rate_limit_support", "MC_RELAY_TENANT_RATE_LIMIT_SUPPORT", _int),
    ("tenant_rate_limit_service", "MC_RELAY_TENANT_RATE_LIMIT_SERVICE", _int),
    ("result_ttl_seconds", "MC_RELAY_RESULT_TTL", _ranged(1, 10 * _YEAR)),
    ("restart_lease_grace", "MC_RELAY_RESTART_LEASE_GRACE", _ranged(0, _DAY)),
    ("node_id", "MC_RELAY_NODE_ID", str),
    ("log_retention_lines", "MC_RELAY_LOG_RETENTION", _lines),
    ("event_sockets_per_tenant", "MC_RELAY_EVENT_SOCKETS", _lines),
    ("result_streams_per_tenant", "MC_RELAY_RESULT_STREAMS", _lines),
    ("send_timeout", "MC_RELAY_SEND_TIMEOUT", float),
    ("rotate_grace_seconds", "MC_RELAY_ROTATE_GRACE", _ranged(0, _YEAR)),
    ("handshake_failure_limit", "MC_RELAY_HANDSHAKE_FAILURES", _ranged(1, 10**9, integer=True)),
    ("handshake_address_failure_limit", "MC_RELAY_HANDSHAKE_ADDRESS_FAILURES", _ranged(1, 10**9, integer=True)),
    ("auth_failure_limit", "MC_RELAY_AUTH_FAILURES", _ranged(1, 10**9, integer=True)),
    ("trusted_proxies", "MC_RELAY_TRUSTED_PROXIES", str),
    ("downloads_url_base", "MC_RELAY_DOWNLOADS_URL", str),
    ("downloads_dir", "MC_RELAY_DOWNLOADS_DIR", str),
    ("metrics_token", "MC_RELAY_METRICS_TOKEN", str),
    ("reconnect_delay_min", "MC_RELAY_RECONNECT_DELAY_MIN", _ranged(0, 3600)),
    ("reconnect_delay_spread", "MC_RELAY_RECONNECT_DELAY_SPREAD", _ranged(0, 3600)),
    ("shutdown_grace", "MC_RELAY_SHUTDOWN_GRACE", _ranged(0, 3600)),
    ("store_start_wait", "MC_RELAY_STORE_START_WAIT", float),
    ("tls_cert", "MC_RELAY_TLS_CERT", str),
    ("tls_key", "MC_RELAY_TLS_KEY", str),
    ("window", "MC_RELAY_WINDOW", _window),
    ("store_compression", "MC_RELAY_STORE_COMPRESSION", _compression),
    # Hostile agents (issue 13)
    ("agent_memory_budget", "MC_RELAY_AGENT_MEMORY_BUDGET", _ranged(1 << 20, 1 << 40, integer=True)),
    ("chunk_threads", "MC_RELAY_CHUNK_THREADS", _ranged(1, 256, integer=True)),
    ("agent_log_lines_per_second", "MC_RELAY_AGENT_LOG_LINES_PER_SECOND", _ranged(0.001, 1e6)),
    ("agent_log_bytes_per_second", "MC_RELAY_AGENT_LOG_BYTES_PER_SECOND", _ranged(1, 1e9)),
    ("agent_log_burst_seconds", "MC_RELAY_AGENT_LOG_BURST_SECONDS", _ranged(0.001, 3600)),
    ("agent_log_line_max", "MC_RELAY_AGENT_LOG_LINE_MAX", _ranged(80, 1 << 20, integer=True)),
    ("agent_clock_skew", "MC_RELAY_AGENT_CLOCK_SKEW", _ranged(0, _DAY)),
    ("agent_violation_penalty", "MC_RELAY_AGENT_VIOLATION_PENALTY", _ranged(0, _DAY)),
]


_RATE_VARS = [(name, var) for name, var, _ in _ENV if "rate_limit" in name]


def _decode_key(raw: str, where: str) -> bytes:
    try:
        key = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigError(f"{where} is not valid base64") from exc
    if len(key) != 32:
        raise ConfigError(f"{where} must hold 32 bytes (base64)")
    return key


def _parse_key_list(raw: str, where: str) -> dict[str, bytes]:
    """``id:base64`` entries separated by commas or new lines (blank lines ignored)."""
    keys: dict[str, bytes] = {}
    for entry in raw.replace("\n", ",").split(","):
        entry = entry.strip()
        if not entry:
            continue
        kid, sep, b64 = entry.partition(":")
        if not sep or not kid.strip() or len(kid.strip()) > 32:
            raise ConfigError(f"{where} entries must look like <id>:<base64 32-byte key>")
        keys[kid.strip()] = _decode_key(b64, f"{where} key {kid.strip()!r}")
    if not keys:
        raise ConfigError(f"{where} holds no key")
    return keys


def cipher_from_env(env: dict[str, str]) -> DataCipher | None:
    """The data key(s) from the environment, or None (then a key file beside SQLite).

    ``MC_RELAY_DATA_KEYS`` (or a ``MC_RELAY_DATA_KEY_FILE`` of ``id:base64`` lines) holds
    every key still needed to read stored chunks; ``MC_RELAY_DATA_KEY_ID`` names the one new
    chunks are written with (default: the last listed). Rotation (docs/SECURITY.md): add a
    new key, make it current, restart; old chunks stay readable while their id is listed.
    ``MC_RELAY_DATA_KEY`` (one base64 key, id ``MC_RELAY_DATA_KEY_ID`` or ``k1``) still works.
    """
    key_id = env.get("MC_RELAY_DATA_KEY_ID") or ""
    keys: dict[str, bytes] = {}
    if env.get("MC_RELAY_DATA_KEYS"):
        keys = _parse_key_list(env["MC_RELAY_DATA_KEYS"], "MC_RELAY_DATA_KEYS")
    elif env.get("MC_RELAY_DATA_KEY"):
        keys = {key_id or "k1": _decode_key(env["MC_RELAY_DATA_KEY"], "MC_RELAY_DATA_KEY")}
    elif env.get("MC_RELAY_DATA_KEY_FILE"):
        path = env["MC_RELAY_DATA_KEY_FILE"]
        try:
            raw = Path(path).read_text(encoding="ascii").strip()
        except OSError as exc:
            raise ConfigError(f"MC_RELAY_DATA_KEY_FILE {path} cannot be read") from exc
        if ":" in raw:
            keys = _parse_key_list(raw, "MC_RELAY_DATA_KEY_FILE")
        else:
            keys = {key_id or "k1": _decode_key(raw, "MC_RELAY_DATA_KEY_FILE")}
    if not keys:
        return None
    current = key_id or list(keys)[-1]
    if current not in keys:
        raise ConfigError(f"MC_RELAY_DATA_KEY_ID {current!r} is not among the configured data keys")
    return DataCipher(keys, current)


def tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """The server TLS context for ``--tls-cert``/``--tls-key`` (TLS 1.2+), or None."""
    if not cert and not key:
        return None
    if not cert or not key:
        raise ConfigError("--tls-cert and --tls-key go together")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS certificate {cert} and key {key}: {exc}") from exc
    return ctx


def sqlite_path(database_url: str) -> Path | None:
    """The file behind a ``sqlite:///path`` URL, or None (memory or another engine)."""
    if not database_url.startswith("sqlite"):
        return None
    path = database_url.split("///", 1)[1] if "///" in database_url else ""
    path = path.split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path)


def load_data_cipher(database_url: str, *, dev: bool) -> DataCipher:
    """A key file beside a SQLite database, created 0600 on first start. A shared store
    (PostgreSQL) has no place for one: every node, and the same node after a restart, must
    read what the others wrote, so a key made per process would lose every stored result;
    such a relay refuses to start and names the variable."""
    db = sqlite_path(database_url)
    if not database_url.startswith("sqlite"):
        raise ConfigError(
            "MC_RELAY_DATA_KEY is not set: a relay on a shared (PostgreSQL) store needs the "
            "same data key on every node and across restarts, or it cannot read the results "
            "it stored; set MC_RELAY_DATA_KEY (32 random bytes, base64: "
            "python3 -c 'import base64,os; print(base64.b64encode(os.urandom(32)).decode())'), "
            "MC_RELAY_DATA_KEYS or MC_RELAY_DATA_KEY_FILE (docs/SECURITY.md, data at rest)"
        )
    if dev or db is None:
        return DataCipher.generate()
    key_file = db.parent / DATA_KEY_FILE_NAME
    # Relays whose databases share this folder may start together: one creates the file,
    # the others read it (never two keys, one of them lost with its results).
    raw = (key_file.read_bytes() if key_file.exists()
           else create_secret_file_once(key_file, base64.b64encode(os.urandom(32))))  # fmt: skip
    return DataCipher({"k1": _decode_key(raw.decode("ascii"), str(key_file))}, "k1")
