"""Sealing jobs to an agent (HPKE, RFC 9180), key-pair files, and AEAD for data at rest.

Contract §4: base mode, DHKEM-X25519 / HKDF-SHA256 / AES-256-GCM. A platform that seals a
query itself uses ``info = b"mini-connector/job/v1:" + connector_id``; the relay binds the
job id too (``...:<connector_id>:<job_id>``), so a sealed job cannot be replayed as
another job. Agents accept both (``open_job`` tries the relay form first when told which).

Post-quantum hybrid: an agent that advertises ``KEM_HYBRID`` in its hello's ``kems`` and
sends ``pqPublicKey`` (base64 of ML-KEM-768 public key || X25519 public key, 1216 bytes)
gets its jobs sealed with ``SUITE_HYBRID`` (KEM.MLKEM768_X25519, same KDF and AEAD). The
agent tells the suites apart by trying its keys: ``open_job`` takes one private key or a
sequence of them (current, previous after ``rotate-keys``, hybrid), each with its suite.
``open_sealed_first`` tries the same keys and infos, but first the pair that opened the
previous job and the suite the blob's length makes likely, so a usual job costs one HPKE
decryption instead of up to three.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey, MLKEM768PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hpke import (
    AEAD,
    KDF,
    KEM,
    MLKEM768X25519PrivateKey,
    MLKEM768X25519PublicKey,
    Suite,
)

from . import exactjson
from .errors import DecryptionFailed, ValidationError

SUITE = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM)
SUITE_HYBRID = Suite(KEM.MLKEM768_X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM)
KEM_X25519 = "DHKEM_X25519"
KEM_HYBRID = "MLKEM768_X25519"
_MLKEM_PUB_LEN, _MLKEM_SEED_LEN, _X25519_LEN = 1184, 64, 32
HYBRID_PUBLIC_LEN = _MLKEM_PUB_LEN + _X25519_LEN
PrivateKey = X25519PrivateKey | MLKEM768X25519PrivateKey
INFO_PREFIX = "mini-connector/job/v1:"

SEAL_PLATFORM = "platform"
SEAL_RELAY = "relay"


def platform_info(connector_id: str) -> bytes:
    return (INFO_PREFIX + connector_id).encode("utf-8")


def relay_info(connector_id: str, job_id: str) -> bytes:
    return (INFO_PREFIX + connector_id + ":" + job_id).encode("utf-8")


# ---------------------------------------------------------------- keys


def generate_private_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def public_key_b64(key: X25519PrivateKey | X25519PublicKey) -> str:
    pub = key.public_key() if isinstance(key, X25519PrivateKey) else key
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def load_public_key(b64: str) -> X25519PublicKey:
    """Parse the contract's form of a public key: 32 raw bytes, standard base64."""
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise ValidationError("publicKey is not valid base64", field="publicKey") from exc
    if len(raw) != 32:
        raise ValidationError("publicKey must be 32 bytes (X25519)", field="publicKey")
    return X25519PublicKey.from_public_bytes(raw)


def _secret_temp(path: Path, data: bytes) -> Path:
    """``data`` in a new owner-only (0600) file beside ``path``, under a name no other
    writer uses, flushed to disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if os.name == "posix":
        os.chmod(name, 0o600)
    return Path(name)


def write_secret_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by the owner only (0600), atomically. Writers
    racing on one path each use their own temporary file; the last rename wins."""
    os.replace(_secret_temp(path, data), path)


def create_secret_file_once(path: Path, data: bytes) -> bytes:
    """``path``'s content, creating it with ``data`` (0600) if it does not exist. Of
    several processes racing to create it exactly one wins, and every one of them gets
    the winner's bytes (a hard link cannot replace an existing name)."""
    tmp = _secret_temp(path, data)
    try:
        os.link(tmp, path)
        return data
    except FileExistsError:
        return path.read_bytes()
    finally:
        tmp.unlink(missing_ok=True)


def save_private_key(key: X25519PrivateKey, path: Path) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_secret_file(path, pem)


def load_private_key(path: Path) -> X25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, X25519PrivateKey):
        raise ValueError(f"{path} does not hold an X25519 private key")
    return key


def load_or_create_private_key(path: Path) -> X25519PrivateKey:
    if path.exists():
        return load_private_key(path)
    key = generate_private_key()
    save_private_key(key, path)
    return key


# ---------------------------------------------------------------- hybrid (post-quantum) keys


@dataclass(frozen=True)
class HybridKeyPair:
    """An ML-KEM-768 + X25519 key pair, kept as its seeds (64 + 32 bytes)."""

    mlkem_seed: bytes
    x25519_raw: bytes

    @classmethod
    def generate(cls) -> HybridKeyPair:
        x = X25519PrivateKey.generate().private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )  # fmt: skip
        return cls(MLKEM768PrivateKey.generate().private_bytes_raw(), x)

    def private_key(self) -> MLKEM768X25519PrivateKey:
        return MLKEM768X25519PrivateKey(
            MLKEM768PrivateKey.from_seed_bytes(self.mlkem_seed),
            X25519PrivateKey.from_private_bytes(self.x25519_raw),
        )

    def public_b64(self) -> str:
        mlkem = MLKEM768PrivateKey.from_seed_bytes(self.mlkem_seed).public_key().public_bytes_raw()
        x = X25519PrivateKey.from_private_bytes(self.x25519_raw).public_key()
        raw = x.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return base64.b64encode(mlkem + raw).decode("ascii")

    def save(self, path: Path) -> None:
        write_secret_file(path, base64.b64encode(self.mlkem_seed + self.x25519_raw) + b"\n")

    @classmethod
    def load(cls, path: Path) -> HybridKeyPair:
        raw = base64.b64decode(path.read_bytes().strip(), validate=True)
        if len(raw) != _MLKEM_SEED_LEN + _X25519_LEN:
            raise ValueError(f"{path} does not hold an ML-KEM-768 + X25519 key pair")
        return cls(raw[:_MLKEM_SEED_LEN], raw[_MLKEM_SEED_LEN:])


def load_hybrid_public_key(b64: str) -> MLKEM768X25519PublicKey:
    """Parse a ``pqPublicKey``: base64 of ML-KEM-768 public key (1184) || X25519 (32)."""
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise ValidationError("pqPublicKey is not valid base64", field="pqPublicKey") from exc
    if len(raw) != HYBRID_PUBLIC_LEN:
        raise ValidationError(f"pqPublicKey must be {HYBRID_PUBLIC_LEN} bytes", field="pqPublicKey")
    try:
        return MLKEM768X25519PublicKey(
            MLKEM768PublicKey.from_public_bytes(raw[:_MLKEM_PUB_LEN]),
            X25519PublicKey.from_public_bytes(raw[_MLKEM_PUB_LEN:]),
        )
    except ValueError as exc:
        raise ValidationError("pqPublicKey is not a valid ML-KEM-768 key", field="pqPublicKey") from exc


# ---------------------------------------------------------------- sealing


def seal(
    plaintext: bytes, public_key: X25519PublicKey | MLKEM768X25519PublicKey | str, info: bytes
) -> bytes:
    if isinstance(public_key, str):
        public_key = load_public_key(public_key)
    if isinstance(public_key, MLKEM768X25519PublicKey):
        return SUITE_HYBRID.encrypt(plaintext, public_key, info)
    return SUITE.encrypt(plaintext, public_key, info)


def seal_query(
    query: Any, public_key: X25519PublicKey | MLKEM768X25519PublicKey | str, info: bytes
) -> bytes:
    """Seal a query object as UTF-8 JSON (what a platform sends as ``sealedQuery``, decoded)."""
    return seal(exactjson.dumps(query), public_key, info)


def seal_query_for_platform(
    query: Any, public_key_b64_: str, connector_id: str, *, pq_public_key_b64: str | None = None
) -> str:
    """The helper a platform uses: returns the base64 ``sealedQuery`` field.

    ``public_key_b64_`` is the connector's ``publicKey``; pass ``pq_public_key_b64`` (the
    agent's hybrid key) instead to seal with ML-KEM-768 + X25519.
    """
    key: X25519PublicKey | MLKEM768X25519PublicKey = (
        load_hybrid_public_key(pq_public_key_b64) if pq_public_key_b64
        else load_public_key(public_key_b64_)
    )  # fmt: skip
    sealed = seal_query(query, key, platform_info(connector_id))
    return base64.b64encode(sealed).decode("ascii")


# The smallest blob the hybrid suite can open: its KEM's ``enc`` (ML-KEM-768 ciphertext
# 1088 + X25519 share 32 = 1120 bytes) and the AES-GCM tag (16).
_HYBRID_MIN_SEALED = KEM.MLKEM768_X25519.enc_length() + 16


def open_sealed(
    sealed: bytes, private_key: PrivateKey | Sequence[PrivateKey], infos: list[bytes]
) -> bytes:
    """Open with the first key and ``info`` that work; ``DecryptionFailed`` if none does."""
    keys_ = [private_key] if not isinstance(private_key, Sequence) else list(private_key)
    for key in keys_:
        suite = SUITE_HYBRID if isinstance(key, MLKEM768X25519PrivateKey) else SUITE
        for info in infos:
            try:
                return suite.decrypt(sealed, key, info)
            except (InvalidTag, ValueError):
                continue
    raise DecryptionFailed()


def fits_hybrid(sealed_len: int) -> bool:
    """Whether a blob this long can be sealed with the hybrid suite (its ``enc`` alone is
    1120 bytes); a shorter one can only be X25519. A longer one is most likely hybrid,
    though a long query sealed with X25519 is too."""
    return sealed_len >= _HYBRID_MIN_SEALED


def opening_order(
    sealed_len: int, keys: Sequence[PrivateKey], n_infos: int, first: tuple[int, int] | None = None
) -> list[tuple[int, int]]:
    """Every (key index, info index) pair, in the order worth trying for a blob of
    ``sealed_len`` bytes: ``first`` (what opened the last such job), then the pairs whose
    suite the length makes likely (``fits_hybrid``), then the rest, each group in the
    given order. Every pair is in the list exactly once, so what opens and what fails is
    as with ``open_sealed``; only the number of failed attempts (one HPKE decryption each,
    ~70-120 us) changes."""
    hybrid_first = fits_hybrid(sealed_len)

    def rank(pair: tuple[int, int]) -> tuple[bool, bool]:
        hybrid = isinstance(keys[pair[0]], MLKEM768X25519PrivateKey)
        return (pair != first, hybrid != hybrid_first)

    pairs = [(k, i) for k in range(len(keys)) for i in range(n_infos)]
    return sorted(pairs, key=rank)  # stable: the given order within each group


def open_sealed_first(
    sealed: bytes, keys: Sequence[PrivateKey], infos: list[bytes],
    first: tuple[int, int] | None = None,
) -> tuple[bytes, tuple[int, int]]:  # fmt: skip
    """``open_sealed`` over the same keys and infos, tried in ``opening_order``; returns
    the plaintext and the (key index, info index) that opened it, to pass as ``first``
    next time. ``DecryptionFailed`` (the same error) if none does."""
    for k, i in opening_order(len(sealed), keys, len(infos), first):
        key = keys[k]
        suite = SUITE_HYBRID if isinstance(key, MLKEM768X25519PrivateKey) else SUITE
        try:
            return suite.decrypt(sealed, key, infos[i]), (k, i)
        except (InvalidTag, ValueError):
            continue
    raise DecryptionFailed()


def job_infos(connector_id: str, job_id: str) -> list[bytes]:
    """The ``info`` forms a job may be sealed with: the relay's, then the platform's."""
    return [relay_info(connector_id, job_id), platform_info(connector_id)]


def parse_query(plain: bytes) -> Any:
    """An opened job's query, parsed; ``DecryptionFailed`` if it is not JSON."""
    try:
        return exactjson.loads(plain)
    except exactjson.JSONDecodeError as exc:
        raise DecryptionFailed("the sealed query is not valid JSON") from exc


def open_job(
    sealed: bytes,
    private_key: PrivateKey | Sequence[PrivateKey],
    connector_id: str,
    job_id: str,
) -> Any:
    """Open a job's sealed query (relay or platform form) and parse its JSON."""
    return parse_query(open_sealed(sealed, private_key, job_infos(connector_id, job_id)))


# ---------------------------------------------------------------- data at rest


class DataCipher:
    """AES-256-GCM with a key id, for result chunks at rest.

    Stored form: ``nonce(12) || ciphertext+tag``; the key id is stored beside it so keys
    can be rotated (old ids stay readable while any ``keys`` entry holds them).
    """

    def __init__(self, keys: dict[str, bytes], current: str) -> None:
        if current not in keys:
            raise ValueError("the current data key id is not among the keys")
        for kid, k in keys.items():
            if len(k) != 32:
                raise ValueError(f"data key {kid!r} must be 32 bytes")
        self._aead = {kid: AESGCM(k) for kid, k in keys.items()}
        self.current = current

    @classmethod
    def generate(cls, key_id: str = "k1") -> DataCipher:
        return cls({key_id: AESGCM.generate_key(bit_length=256)}, key_id)

    def encrypt(self, data: bytes, aad: bytes = b"") -> tuple[str, bytes]:
        nonce = secrets.token_bytes(12)
        return self.current, nonce + self._aead[self.current].encrypt(nonce, data, aad)

    def has(self, key_id: str) -> bool:
        return key_id in self._aead

    def decrypt(self, key_id: str, blob: bytes, aad: bytes = b"") -> bytes:
        aead = self._aead.get(key_id)
        if aead is None:
            raise DecryptionFailed(f"data key {key_id!r} is not configured")
        try:
            return aead.decrypt(blob[:12], blob[12:], aad)
        except InvalidTag as exc:
            raise DecryptionFailed("stored data failed its integrity check") from exc
