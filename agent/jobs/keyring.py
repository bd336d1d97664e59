"""The agent's job-opening keys: the X25519 pair, the post-quantum hybrid pair, and the
previous pair kept for a grace period after ``mini-connector rotate-keys``.

Files beside the config, each 0600 (ACL to SYSTEM and Administrators on Windows):
``agent_key.pem`` (X25519, contract §4), ``agent_kem.key`` (ML-KEM-768 + X25519 seeds),
and after a rotation ``agent_key.prev.pem`` / ``agent_kem.prev.key`` with
``agent_key.prev.json`` saying until when they are kept. Jobs sealed to the old public key
before the relay learnt the new one (it does at the agent's next hello) still open during
the grace period; after it the previous keys are deleted at the next start.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from shared.crypto import (
    KEM_HYBRID,
    KEM_X25519,
    HybridKeyPair,
    PrivateKey,
    generate_private_key,
    load_or_create_private_key,
    load_private_key,
    public_key_b64,
    save_private_key,
    write_secret_file,
)

from .. import platform_win
from ..paths import StatePaths

DEFAULT_GRACE_SECONDS = 7 * 86400.0  # longer than a job's default TTL (4 h) by far


@dataclass(frozen=True)
class KeyFiles:
    folder: Path

    @property
    def current(self) -> Path:
        return self.folder / "agent_key.pem"

    @property
    def hybrid(self) -> Path:
        return self.folder / "agent_kem.key"

    @property
    def previous(self) -> Path:
        return self.folder / "agent_key.prev.pem"

    @property
    def previous_hybrid(self) -> Path:
        return self.folder / "agent_kem.prev.key"

    @property
    def previous_meta(self) -> Path:
        return self.folder / "agent_key.prev.json"

    @classmethod
    def of(cls, paths: StatePaths) -> KeyFiles:
        return cls(paths.private_key.parent)


@dataclass
class KeyRing:
    current: X25519PrivateKey
    hybrid: HybridKeyPair
    previous: list[PrivateKey] = field(default_factory=list)

    def opening_keys(self) -> list[PrivateKey]:
        """Every key a sealed job may have been sealed to, most likely first."""
        return [self.current, self.hybrid.private_key(), *self.previous]

    @property
    def public_key(self) -> str:
        return public_key_b64(self.current)

    def hello_fields(self) -> dict[str, Any]:
        """The optional hello fields that offer the post-quantum hybrid."""
        return {"kems": [KEM_X25519, KEM_HYBRID], "pqPublicKey": self.hybrid.public_b64()}


def _protect(path: Path) -> None:
    platform_win.restrict_to_owner(path)  # 0600 already on POSIX (write_secret_file)


def _create_hybrid(path: Path) -> HybridKeyPair:
    pair = HybridKeyPair.generate()
    pair.save(path)
    _protect(path)
    return pair


def ensure_keys(paths: StatePaths) -> bool:
    """Create any missing key pair (configure and run call this); True if X25519 was new."""
    files = KeyFiles.of(paths)
    created = not files.current.exists()
    load_or_create_private_key(files.current)
    if created:
        _protect(files.current)
    if not files.hybrid.exists():
        _create_hybrid(files.hybrid)
    return created


def _forget_previous(files: KeyFiles) -> None:
    for p in (files.previous, files.previous_hybrid, files.previous_meta):
        p.unlink(missing_ok=True)


def load_keyring(paths: StatePaths, *, now: float | None = None) -> KeyRing:
    """The keys to run with (creating missing ones); drops previous keys past their time."""
    ensure_keys(paths)
    files = KeyFiles.of(paths)
    ring = KeyRing(load_private_key(files.current), HybridKeyPair.load(files.hybrid))
    if files.previous_meta.exists():
        at = time.time() if now is None else now
        try:
            until = float(json.loads(files.previous_meta.read_text("utf-8"))["keepUntil"])
        except (OSError, ValueError, KeyError, TypeError):
            until = 0.0
        if until <= at:
            _forget_previous(files)
        else:
            if files.previous.exists():
                ring.previous.append(load_private_key(files.previous))
            if files.previous_hybrid.exists():
                ring.previous.append(HybridKeyPair.load(files.previous_hybrid).private_key())
    return ring


def rotate_keys(paths: StatePaths, *, grace_seconds: float = DEFAULT_GRACE_SECONDS,
                now: float | None = None) -> tuple[str, float]:  # fmt: skip
    """New X25519 and hybrid pairs; the old ones kept ``grace_seconds``. Returns (new public
    key, keep-until)."""
    ensure_keys(paths)
    files = KeyFiles.of(paths)
    at = time.time() if now is None else now
    until = at + max(0.0, grace_seconds)
    old, old_hybrid = load_private_key(files.current), HybridKeyPair.load(files.hybrid)
    save_private_key(old, files.previous)
    _protect(files.previous)
    old_hybrid.save(files.previous_hybrid)
    _protect(files.previous_hybrid)
    write_secret_file(files.previous_meta, json.dumps({"keepUntil": until}).encode())
    new = generate_private_key()
    save_private_key(new, files.current)
    _protect(files.current)
    _create_hybrid(files.hybrid)
    return public_key_b64(new), until
