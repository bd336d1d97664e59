"""zstd for chunk payloads, on the wire (``shared.protocol``) and at rest (``relay.atrest``).

A payload is one zstd frame, level 1, that records its decompressed size. Decompressing
checks that size against a limit before any work (zstd then holds the frame to it, so a
frame lying about its size stops there) and refuses a cut-off frame or bytes after it.
``zstandard`` is imported on first use, not at start: the agent's idle footprint.
"""

from __future__ import annotations

import threading
from typing import Any

MAGIC = b"\x28\xb5\x2f\xfd"  # how every zstd frame starts
LEVEL = 1

_local = threading.local()  # zstd contexts are not thread-safe: one per thread


class SizeError(ValueError):
    """The frame does not record its size, or records more than the limit."""


def _lib() -> Any:
    import zstandard

    return zstandard


def compress(data: bytes) -> bytes:
    c = getattr(_local, "compressor", None)
    if c is None:
        c = _local.compressor = _lib().ZstdCompressor(level=LEVEL)
    return c.compress(data)  # type: ignore[no-any-return]


def decompress(frame: bytes, limit: int) -> bytes:
    """The bytes ``frame`` holds; ``SizeError`` or ``ValueError`` (saying what is wrong)."""
    zstandard = _lib()
    try:
        size = zstandard.frame_content_size(frame)
    except zstandard.ZstdError as exc:
        raise ValueError("payload is not a zstd frame") from exc
    if size < 0:
        raise SizeError("payload does not record its decompressed size (zstd)")
    if size > limit:
        raise SizeError("payload decompresses past the limit")
    d = zstandard.ZstdDecompressor().decompressobj()
    try:
        out = d.decompress(frame)
    except zstandard.ZstdError as exc:
        raise ValueError("payload is not valid zstd data") from exc
    if not d.eof:
        raise ValueError("payload is a truncated zstd frame")
    if d.unused_data:
        raise ValueError("payload has bytes after its zstd frame")
    if len(out) != size:  # zstd checks this itself; kept as a guard on the library
        raise ValueError("payload does not decompress to its recorded size")
    return bytes(out)
