"""Connector API keys: ``vmc_`` + 32 base62 characters of randomness + 6 of checksum.

32 base62 characters carry 190 random bits. The checksum is CRC32 of the random part,
base62-encoded to six characters, so a typo is caught on the agent before it ever
connects (the way GitHub's tokens work). The relay stores only ``hash_key(key)`` and
compares in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import zlib

from .errors import KeyFormatError

PREFIX = "vmc_"
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_RANDOM_LEN = 32
_CHECK_LEN = 6
KEY_LENGTH = len(PREFIX) + _RANDOM_LEN + _CHECK_LEN
DISPLAY_PREFIX_LEN = 12  # "vmc_" + 8 characters: enough to recognise, useless to attack


def _b62(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, r = divmod(n, 62)
        out.append(_ALPHABET[r])
    return "".join(reversed(out))


def _checksum(body: str) -> str:
    return _b62(zlib.crc32(body.encode("ascii")), _CHECK_LEN)


def generate_key() -> str:
    body = "".join(secrets.choice(_ALPHABET) for _ in range(_RANDOM_LEN))
    return PREFIX + body + _checksum(body)


def validate_key(key: object) -> str:
    """Return ``key`` if it is well formed with a good checksum; raise ``KeyFormatError``."""
    if not isinstance(key, str):
        raise KeyFormatError("the API key must be text")
    key = key.strip()
    if not key.startswith(PREFIX):
        raise KeyFormatError("the API key must start with 'vmc_'")
    if len(key) != KEY_LENGTH:
        raise KeyFormatError(
            f"the API key must be {KEY_LENGTH} characters long, this one has {len(key)}"
        )
    rest = key[len(PREFIX) :]
    if any(c not in _ALPHABET for c in rest):
        raise KeyFormatError("the API key contains characters that are not letters or digits")
    body, check = rest[:_RANDOM_LEN], rest[_RANDOM_LEN:]
    if not hmac.compare_digest(_checksum(body), check):
        raise KeyFormatError("the API key's checksum does not match: it was mistyped or truncated")
    return key


def is_valid_key(key: object) -> bool:
    try:
        validate_key(key)
    except KeyFormatError:
        return False
    return True


def key_prefix(key: str) -> str:
    return key[:DISPLAY_PREFIX_LEN]


def hash_key(key: str) -> str:
    """SHA-256 hex of the key. Keys carry 190 random bits, so no salt or stretching is needed."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_matches(key: str, stored_hash: str | None) -> bool:
    """Constant-time comparison of a presented key with a stored hash."""
    if not stored_hash:
        return False
    return hmac.compare_digest(hash_key(key).encode(), stored_hash.encode())
