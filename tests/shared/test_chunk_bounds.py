"""The chunk frame's header is read without its payload, and decompression is bounded in
output size and ratio and streams (issue 13; shared/protocol.py, shared/zstdframes.py)."""

from __future__ import annotations

import zlib

import orjson
import pytest
import zstandard

from relay.agents import guard
from shared import protocol as p
from shared import zstdframes
from shared.errors import ProtocolError


def _frame(payload: bytes, flags: int, header: dict | None = None) -> bytes:
    h = orjson.dumps(header or {"jobId": "job_1", "attempt": 1, "seq": 7, "rows": 1})
    return bytes([p.FRAME_CHUNK, flags]) + len(h).to_bytes(2, "big") + h + payload


def test_the_head_is_read_without_the_payload() -> None:
    """A frame whose payload is garbage still yields its head: who it is for is known
    before any work on what it carries; the payload is refused only when decoded."""
    frame = _frame(b"\xff" * 5000, p.FLAG_ZLIB)
    head = p.read_chunk_head(frame)
    assert (head.job_id, head.attempt, head.seq, head.rows, head.codec) == ("job_1", 1, 7, 1, "zlib")
    assert head.packed == 5000 and head.declared is None
    with pytest.raises(ProtocolError, match="zlib"):
        p.chunk_payload(head, frame)


def test_a_long_header_is_refused() -> None:
    with pytest.raises(ProtocolError, match="header longer"):
        p.read_chunk_head(_frame(b"[]", 0, {"jobId": "job_1", "attempt": 1, "seq": 0, "rows": 0,
                                            "pad": "x" * p.MAX_CHUNK_HEADER}))  # fmt: skip


@pytest.mark.parametrize(
    ("size", "message"),
    [(p.MAX_CHUNK_PAYLOAD + 1, "limit of 16 MiB"), (8 << 20, "256 times")],
)
def test_zstd_bounds_are_checked_from_the_frame_header(size: int, message: str) -> None:
    """Past 16 MiB, or past 256 times the compressed size, from the header alone."""
    frame = _frame(zstandard.ZstdCompressor(level=1).compress(b"\0" * size), p.FLAG_ZSTD)
    head = p.read_chunk_head(frame)
    with pytest.raises(ProtocolError, match=message):
        p.bound_chunk(head, frame)


def test_a_zlib_bomb_stops_at_its_ratio_limit() -> None:
    packed = zlib.compress(b"\0" * (64 << 20), 9)
    frame = _frame(packed, p.FLAG_ZLIB)
    head = p.bound_chunk(p.read_chunk_head(frame), frame)
    assert head.bound == p.payload_limit(len(packed)) < 64 << 20
    with pytest.raises(ProtocolError, match="limit"):
        p.chunk_payload(head, frame)


def test_any_payload_may_reach_the_ratio_free_size() -> None:
    """Small highly compressible payloads (an honest column of nulls) are not refused."""
    data = b'{"a":null}\n' * (p.RATIO_FREE_BYTES // 11)
    for flags, packed in ((p.FLAG_ZSTD, zstdframes.compress(data)), (p.FLAG_ZLIB, zlib.compress(data))):
        assert len(data) > 256 * len(packed)
        frame = _frame(packed, flags)
        assert p.chunk_payload(p.bound_chunk(p.read_chunk_head(frame), frame), frame) == data


def test_the_agent_sends_uncompressed_what_a_relay_would_refuse() -> None:
    """encode_chunk keeps compression only within the relay's ratio limit."""
    data = b'{"a":null}\n' * 400_000  # 4.4 MB that zstd makes ~400 bytes
    frame = p.encode_chunk(p.Chunk("job_1", 1, 0, 400_000, data), compress="zstd")
    assert p.chunk_flags(frame) == 0 and p.decode_chunk(frame).payload == data
    varied = b"".join(b'{"id":%d,"name":"customer %d"}\n' % (i, i) for i in range(100_000))
    frame = p.encode_chunk(p.Chunk("job_1", 1, 0, 100_000, varied), compress="zstd")
    assert p.chunk_flags(frame) == p.FLAG_ZSTD and p.decode_chunk(frame).payload == varied


def test_zstd_streams_and_refuses_a_lying_size_early() -> None:
    """A frame recording 1 MiB that holds 64 MiB stops near 1 MiB, and never allocates
    from the recorded size (the output is built from what was really produced)."""
    frame = zstandard.ZstdCompressor(level=1).compress(b"\0" * (64 << 20))
    liar = frame[:6] + (1 << 20).to_bytes(4, "little") + frame[10:]
    assert zstdframes.declared_size(liar) == 1 << 20
    with pytest.raises(ValueError, match=r"zstd|recorded"):
        zstdframes.decompress(liar, 16 << 20)


class _Session:
    def __init__(self) -> None:
        self.in_flight = {"job_a": 2}
        self.superseded = {("job_s", 1)}
        self.closed = {"job_done": (1, False), "job_back": (3, True)}


@pytest.mark.parametrize(
    ("job", "attempt", "verdict"),
    [
        ("job_a", 2, guard.ADMIT),
        ("job_a", 1, guard.STALE),  # an older attempt of a job it holds
        ("job_s", 1, guard.LATE),  # told SUPERSEDED already
        ("job_done", 1, guard.LATE),  # ended here: a resend
        ("job_back", 3, guard.STALE),  # given back to the queue
        ("job_done", 2, guard.STALE),
        ("job_other", 1, guard.FOREIGN),
    ],
)
def test_admission_from_the_header_alone(job: str, attempt: int, verdict: str) -> None:
    head = p.ChunkHead(job, attempt, 0, 1, 0, 10, 5, None)
    assert guard.admit(_Session(), head) == verdict


def test_log_throttle_drops_past_the_burst_and_summarises_once() -> None:
    throttle = guard.LogThrottle(lines_per_second=1, bytes_per_second=1 << 20, burst_seconds=5)
    kept = sum(throttle.allow(10) for _ in range(100))
    assert kept == 5
    assert throttle.summary() == 95 and throttle.summary() == 0
    big = guard.LogThrottle(lines_per_second=1000, bytes_per_second=100, burst_seconds=1)
    assert not big.allow(101) and big.allow(100)
