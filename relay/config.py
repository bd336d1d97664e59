"""Everything the relay needs, in one dataclass handed to ``create_app(config)``.

``RelayConfig.from_env(**overrides)`` reads the ``MC_RELAY_*`` environment variables;
explicit overrides (CLI flags, tests) win. Nothing else in the relay reads the
environment. The data key that encrypts result chunks at rest comes from
``MC_RELAY_DATA_KEY`` / ``MC_RELAY_DATA_KEY_FILE``; failing those it is generated once and
kept in a 0600 file beside a SQLite database (or per process with ``--dev``).
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from shared.crypto import DataCipher, write_secret_file

DEFAULT_DATABASE_URL = "sqlite:///./relay.db"
# Documented dev secret: `mini-relay serve --dev` and `mini-relay token --dev` agree on it
# so a developer can mint tokens from another shell. Never accepted outside --dev.
DEV_JWT_SECRET = "mini-relay-dev-secret-not-for-production"  # noqa: S105
DATA_KEY_FILE_NAME = "relay-data.key"


class ConfigError(Exception):
    """A configuration the relay cannot start with; the message is one sentence."""


@dataclass
class RelayConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    database_url: str = DEFAULT_DATABASE_URL
    jwt_secret: str | None = None
    jwt_public_key: str | None = None  # PEM; enables RS256 tokens
    dev: bool = False
    heartbeat_interval: float = 15.0
    offline_after_missed: int = 3
    hello_timeout: float = 10.0
    rate_limit_per_minute: int = 100
    result_ttl_seconds: float = 86400.0
    log_retention_lines: int = 10_000
    metrics_retention_seconds: float = 86400.0
    rotate_grace_seconds: float = 86400.0
    window: int = 8
    max_chunk_bytes: int = 4 << 20
    max_body_bytes: int = 1 << 20
    max_violations: int = 10
    sweep_interval: float | None = None  # default: a fraction of the heartbeat interval
    result_poll_interval: float = 1.0
    maintenance_interval: float = 5.0  # job TTL expiry, sample and result pruning
    downloads_url_base: str = "/downloads"
    data_cipher: DataCipher | None = field(default=None, repr=False)
    version: str = "0.1.0"

    @property
    def sweep_every(self) -> float:
        if self.sweep_interval is not None:
            return self.sweep_interval
        return max(0.02, min(5.0, self.heartbeat_interval / 3))

    @property
    def offline_after(self) -> float:
        return self.heartbeat_interval * self.offline_after_missed

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
        if self.heartbeat_interval <= 0 or self.rate_limit_per_minute <= 0:
            raise ConfigError("heartbeat interval and rate limit must be positive")

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
                except ValueError as exc:
                    raise ConfigError(f"{var} has an invalid value {raw!r}") from exc
        known = {f.name for f in fields(cls)}
        for k, v in overrides.items():
            if k not in known:
                raise TypeError(f"unknown relay setting {k!r}")
            if v is not None:
                values[k] = v
        cfg = cls(**values)
        if cfg.data_cipher is None:
            cfg.data_cipher = cipher_from_env(env)
        return cfg


def _bool(raw: str) -> bool:
    return raw.strip().lower() in ("1", "true", "yes", "on")


_ENV: list[tuple[str, str, Any]] = [
    ("host", "MC_RELAY_HOST", str),
    ("port", "MC_RELAY_PORT", int),
    ("database_url", "MC_RELAY_DATABASE_URL", str),
    ("jwt_secret", "MC_RELAY_JWT_SECRET", str),
    ("jwt_public_key", "MC_RELAY_JWT_PUBLIC_KEY", str),
    ("dev", "MC_RELAY_DEV", _bool),
    ("heartbeat_interval", "MC_RELAY_HEARTBEAT_INTERVAL", float),
    ("rate_limit_per_minute", "MC_RELAY_RATE_LIMIT", int),
    ("result_ttl_seconds", "MC_RELAY_RESULT_TTL", float),
    ("log_retention_lines", "MC_RELAY_LOG_RETENTION", int),
    ("rotate_grace_seconds", "MC_RELAY_ROTATE_GRACE", float),
    ("downloads_url_base", "MC_RELAY_DOWNLOADS_URL", str),
]


def _decode_key(raw: str, where: str) -> bytes:
    try:
        key = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigError(f"{where} is not valid base64") from exc
    if len(key) != 32:
        raise ConfigError(f"{where} must hold 32 bytes (base64)")
    return key


def cipher_from_env(env: dict[str, str]) -> DataCipher | None:
    key_id = env.get("MC_RELAY_DATA_KEY_ID") or "k1"
    if env.get("MC_RELAY_DATA_KEY"):
        return DataCipher({key_id: _decode_key(env["MC_RELAY_DATA_KEY"], "MC_RELAY_DATA_KEY")}, key_id)
    path = env.get("MC_RELAY_DATA_KEY_FILE")
    if path:
        try:
            raw = Path(path).read_text(encoding="ascii")
        except OSError as exc:
            raise ConfigError(f"MC_RELAY_DATA_KEY_FILE {path} cannot be read") from exc
        return DataCipher({key_id: _decode_key(raw, "MC_RELAY_DATA_KEY_FILE")}, key_id)
    return None


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
    """A key file beside a SQLite database, created 0600 on first start."""
    db = sqlite_path(database_url)
    if dev or db is None:
        return DataCipher.generate()
    key_file = db.parent / DATA_KEY_FILE_NAME
    if key_file.exists():
        return DataCipher({"k1": _decode_key(key_file.read_text("ascii"), str(key_file))}, "k1")
    cipher_key = os.urandom(32)
    write_secret_file(key_file, base64.b64encode(cipher_key))
    return DataCipher({"k1": cipher_key}, "k1")
