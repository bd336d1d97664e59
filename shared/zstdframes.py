"""zstd for chunk payloads, on the wire (``shared.protocol``) and at rest (``relay.atrest``).

A payload is one zstd frame, level 1, that records its decompressed size. Decompressing
checks that size against a limit before any work and then streams: the frame is fed to
the decoder in slices of ``STEP`` bytes and the output counted after each, in parts
that hold what was really produced (nothing is allocated from the recorded size, which
the sender chose). The decoder itself refuses output past the recorded size, and its
window is capped at ``MAX_WINDOW``, so no slice makes more than that size plus one
block. A cut-off frame, bytes after it, or a size that does not match are refused.
``zstandard`` is imported on first use, not at start: the agent's idle footprint.
"""

from __future__ import annotations

import threading
from typing import Any

MAGIC = b"\x28\xb5\x2f\xfd"  # how every zstd frame starts
LEVEL = 1
STEP = 64 << 10  # compressed bytes fed to the decoder at a time
MAX_WINDOW = 1 << 27  # the decoder's window cap (zstd's own default limit: 128 MiB)
HEADER_MAX = 18  # a zstd frame header is at most this long

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


def declared_size(frame: bytes | memoryview) -> int:
    """The decompressed size ``frame``'s header records, read from the header alone;
    ``SizeError`` when it records none, ``ValueError`` when it is not a zstd frame."""
    zstandard = _lib()
    try:
        size = zstandard.frame_content_size(frame[:HEADER_MAX])
    except zstandard.ZstdError as exc:
        raise ValueError("payload is not a zstd frame") from exc
    if size < 0:
        raise SizeError("payload does not record its decompressed size (zstd)")
    return int(size)


def decompress(frame: bytes | memoryview, limit: int) -> bytes:
    """The bytes ``frame`` holds; ``SizeError`` or ``ValueError`` (saying what is wrong)."""
    zstandard = _lib()
    size = declared_size(frame)
    if size > limit:
        raise SizeError("payload decompresses past the limit")
    d = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW).decompressobj()
    view = memoryview(frame)
    parts: list[bytes] = []
    produced = pos = 0
    try:
        while pos < len(view) and not d.eof:
            part = d.decompress(view[pos : pos + STEP])
            parts.append(part)
            produced += len(part)
            pos += STEP
            if produced > size:  # the decoder refuses this itself; kept as a guard on it
                raise SizeError("payload decompresses past its recorded size")
    except zstandard.ZstdError as exc:
        raise ValueError("payload is not valid zstd data") from exc
    if not d.eof:
        raise ValueError("payload is a truncated zstd frame")
    if d.unused_data or pos < len(view):
        raise ValueError("payload has bytes after its zstd frame")
    if produced != size:
        raise ValueError("payload does not decompress to its recorded size")
    return parts[0] if len(parts) == 1 else b"".join(parts)
