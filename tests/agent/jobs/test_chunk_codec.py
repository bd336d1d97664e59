"""Chunk compression on the wire: zstd to a relay whose welcome says ``zstdChunks``, zlib
to one that does not (an older relay), none over loopback; a chunk made for one relay and
resent to another after a reconnect is re-encoded for it."""

from __future__ import annotations

import base64
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from agent.config import SecretBox, SourceConfig
from agent.jobs.runner import Runner
from agent.sources.configured import SourceSet
from shared import crypto
from shared.crypto import generate_private_key, public_key_b64
from shared.protocol import (
    COMPRESS_MIN_BYTES,
    FLAG_ZLIB,
    FLAG_ZSTD,
    Message,
    chunk_flags,
    decode_chunk,
    make,
)
from tests.agent.conftest import SentLink, until

ROWS = 20_000  # ~1.1 MB of object lines: the first chunks are small, the later ones large


def _flags(frames: list[bytes]) -> set[int]:
    """The flags of the chunks large enough to be compressed (COMPRESS_MIN_BYTES)."""
    big = [f for f in frames if len(decode_chunk(f).payload) >= COMPRESS_MIN_BYTES]
    assert big, "no chunk was large enough to compress"
    assert {chunk_flags(f) for f in frames if f not in big} <= {0}
    return {chunk_flags(f) for f in big}


@pytest.fixture
def runner_for(tmp_path: Path) -> Any:
    db = tmp_path / "big.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (n INTEGER, name TEXT)")
        conn.executemany("INSERT INTO t VALUES (?, ?)",
                         [(i, f"customer {i} of a rather repetitive table") for i in range(ROWS)])  # fmt: skip
    key = generate_private_key()
    sources = SourceSet({"lite": SourceConfig("lite", "sqlite", f"sqlite:///{db}")},
                        SecretBox(tmp_path / "secret.key"))  # fmt: skip

    def make_runner(compress: bool) -> tuple[Runner, Any]:
        def assign(job_id: str) -> Message:
            sealed = crypto.seal_query({"sql": "SELECT n, name FROM t", "params": {}}, public_key_b64(key),
                                       crypto.relay_info("con_1", job_id))  # fmt: skip
            return make("job.assign.v1", jobId=job_id, attempt=1, source="lite", operation="query",
                        sealed=base64.b64encode(sealed).decode(), options={})  # fmt: skip

        return Runner(get_source=sources.get, private_key=key, compress=compress), assign

    return make_runner


async def _run(runner: Runner, assign: Any, job_id: str, link: SentLink) -> list[bytes]:
    await runner.on_message(assign(job_id))
    await until(lambda: "job.done.v1" in link.kinds(), f"{job_id} done")
    return link.frames()


@pytest.mark.parametrize(("compress", "zstd", "flag"), [
    (True, True, FLAG_ZSTD), (True, False, FLAG_ZLIB), (False, True, 0), (False, False, 0),
])  # fmt: skip
async def test_the_codec_follows_the_link_and_the_relays_welcome(
    runner_for: Any, compress: bool, zstd: bool, flag: int
) -> None:
    runner, assign = runner_for(compress)
    link = SentLink()
    await runner.attach(link, connector_id="con_1", window=8, max_chunk_bytes=4 << 20, zstd_chunks=zstd)
    frames = await _run(runner, assign, "job_c", link)
    assert _flags(frames) == {flag}
    assert sum(decode_chunk(f).rows for f in frames) == ROWS


async def test_a_zstd_chunk_resent_to_a_relay_without_zstd_goes_as_zlib(runner_for: Any) -> None:
    """Unacknowledged zstd chunks (made for a newer relay) reach an older relay, after a
    reconnect, as zlib with the same rows; the held copy is not changed."""
    runner, assign = runner_for(True)
    newer = SentLink()
    await runner.attach(newer, connector_id="con_1", window=8, max_chunk_bytes=4 << 20, zstd_chunks=True)
    sent = await _run(runner, assign, "job_r", newer)
    assert _flags(sent) == {FLAG_ZSTD}
    runner.detach()
    older = SentLink()
    await runner.attach(older, connector_id="con_1", window=8, max_chunk_bytes=4 << 20)
    resent = older.frames()
    assert _flags(resent) == {FLAG_ZLIB}
    assert [decode_chunk(f) for f in resent] == [decode_chunk(f) for f in sent]
    assert list(runner.jobs["job_r"].unacked.values()) == sent
    runner.detach()
    again = SentLink()  # back on a newer relay: the held zstd frames go as they are
    await runner.attach(again, connector_id="con_1", window=8, max_chunk_bytes=4 << 20, zstd_chunks=True)
    assert again.frames() == sent
