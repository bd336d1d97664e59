"""Result chunks at rest: compressed with zstd, then encrypted (AES-256-GCM, key id).

A chunk's rows are JSON text: object lines repeat every column name on every row, so
zstd level 1 makes them ~8-12 times smaller at ~1.2 GB/s on one core (docs/BENCHMARKS.md,
Round 5). The store then writes, logs and reads a tenth of the bytes: with the
PostgreSQL store that was most of the database server's work per row.

The stored plaintext tells its own form: a zstd frame starts with the frame magic
``28 b5 2f fd``; a payload stored uncompressed (``MC_RELAY_STORE_COMPRESSION=none``, or
a chunk an earlier version stored) starts with ``{`` or ``[`` (or is empty). The mark is
inside the authenticated plaintext, so it cannot be altered without failing the tag.

Compression before encryption lets the stored size depend on the content. Someone who
can read the store's sizes and also place rows of their choosing beside a secret in one
chunk could learn about the secret from many attempts; docs/SECURITY.md weighs this, and
``MC_RELAY_STORE_COMPRESSION=none`` turns it off.
"""

from __future__ import annotations

from shared import zstdframes
from shared.crypto import DataCipher, DecryptionFailed


def seal(cipher: DataCipher, payload: bytes, aad: bytes, *, compress: bool = True,
         frame: bytes | memoryview | None = None) -> tuple[str, bytes]:  # fmt: skip
    """(key id, stored blob) for one chunk's payload. ``frame``: the zstd frame the agent
    sent that payload in, already checked to decompress to exactly it within the limits
    (``shared.protocol.chunk_payload``); stored as it is instead of compressing again
    (an agent off loopback compresses every chunk that pays, at the same level)."""
    if compress and payload:
        payload = bytes(frame) if frame is not None else zstdframes.compress(payload)
    return cipher.encrypt(payload, aad)


def unseal(cipher: DataCipher, key_id: str, blob: bytes, aad: bytes, *, limit: int) -> bytes:
    """The payload stored as ``blob``; ``DecryptionFailed`` if it fails its tag or, once
    decrypted, is a zstd frame that does not decompress to at most ``limit`` bytes."""
    data = cipher.decrypt(key_id, blob, aad)
    if data[:4] != zstdframes.MAGIC:
        return data
    try:
        return zstdframes.decompress(data, limit)
    except zstdframes.SizeError:
        raise DecryptionFailed("a stored chunk's compressed size is out of bounds") from None
    except ValueError:
        raise DecryptionFailed("a stored chunk does not decompress") from None
