"""Result chunks at rest (relay/atrest.py): zstd then AES-GCM, read back either way."""

from __future__ import annotations

import pytest
import zstandard

from relay import atrest
from shared import zstdframes
from shared.crypto import DataCipher
from shared.errors import DecryptionFailed

LINES = b"".join(b'{"id":%d,"name":"customer %d","score":%d.5}\n' % (i, i, i) for i in range(2000))
LIMIT = 1 << 20


@pytest.fixture
def cipher() -> DataCipher:
    return DataCipher.generate()


def test_object_lines_are_stored_compressed_and_read_back_exactly(cipher: DataCipher) -> None:
    key_id, blob = atrest.seal(cipher, LINES, b"job_1:1:0")
    assert len(blob) * 4 < len(LINES)  # repeated keys: zstd makes it several times smaller
    assert cipher.decrypt(key_id, blob, b"job_1:1:0")[:4] == zstdframes.MAGIC
    assert atrest.unseal(cipher, key_id, blob, b"job_1:1:0", limit=LIMIT) == LINES


@pytest.mark.parametrize("payload", [LINES, b"[[1,2],[3,4]]", b""])
def test_uncompressed_chunks_from_the_setting_or_an_earlier_version_read_back(
    cipher: DataCipher, payload: bytes
) -> None:
    key_id, blob = atrest.seal(cipher, payload, b"aad", compress=False)
    assert len(blob) == len(payload) + 12 + 16  # nonce and tag only
    assert atrest.unseal(cipher, key_id, blob, b"aad", limit=LIMIT) == payload
    old_id, old_blob = cipher.encrypt(payload, b"aad")  # how chunks were stored before
    assert atrest.unseal(cipher, old_id, old_blob, b"aad", limit=LIMIT) == payload


def test_a_chunk_under_another_job_or_altered_fails_its_tag(cipher: DataCipher) -> None:
    key_id, blob = atrest.seal(cipher, LINES, b"job_1:1:0")
    with pytest.raises(DecryptionFailed):
        atrest.unseal(cipher, key_id, blob, b"job_1:1:1", limit=LIMIT)
    bad = bytearray(blob)
    bad[20] ^= 1
    with pytest.raises(DecryptionFailed):
        atrest.unseal(cipher, key_id, bytes(bad), b"job_1:1:0", limit=LIMIT)


def test_a_frame_that_would_decompress_past_the_limit_or_is_broken_is_refused(cipher: DataCipher) -> None:
    """Only the relay writes these frames, under its own key; still, reading one never
    allocates past the limit nor lets a zstd error out unnamed."""
    key_id, blob = atrest.seal(cipher, b"0" * (LIMIT + 1), b"aad")
    with pytest.raises(DecryptionFailed, match="out of bounds"):
        atrest.unseal(cipher, key_id, blob, b"aad", limit=LIMIT)
    no_size = zstandard.ZstdCompressor(write_content_size=False).compress(b"x" * 100)
    key_id, blob = cipher.encrypt(no_size, b"aad")
    with pytest.raises(DecryptionFailed, match="out of bounds"):
        atrest.unseal(cipher, key_id, blob, b"aad", limit=LIMIT)
    frame = zstandard.ZstdCompressor().compress(LINES)
    key_id, blob = cipher.encrypt(frame[:-8], b"aad")  # cut short
    with pytest.raises(DecryptionFailed, match="does not decompress"):
        atrest.unseal(cipher, key_id, blob, b"aad", limit=LIMIT)
