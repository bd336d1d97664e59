"""relay/jobs/live_chunks.py: the clear chunks a node keeps for live readers, bounded in bytes."""

from __future__ import annotations

from relay.jobs.live_chunks import RecentChunks


def test_holds_chunks_by_job_attempt_and_seq() -> None:
    recent = RecentChunks(max_bytes=100)
    recent.put("j1", 1, 0, 2, b"a" * 10)
    assert recent.get("j1", 1, 0) == (2, b"a" * 10)
    assert recent.get("j1", 2, 0) is None  # another attempt is another result
    assert recent.get("j1", 1, 1) is None
    assert recent.hits == 1


def test_oldest_chunks_go_first_past_the_byte_bound() -> None:
    recent = RecentChunks(max_bytes=25)
    for seq in range(3):
        recent.put("j1", 1, seq, 1, bytes([seq]) * 10)
    assert recent.size == 20 and len(recent) == 2
    assert recent.get("j1", 1, 0) is None
    assert recent.get("j1", 1, 2) == (1, b"\x02" * 10)
    recent.put("j2", 1, 0, 1, b"x" * 26)  # bigger than the whole bound: never held
    assert recent.get("j2", 1, 0) is None and recent.size == 20


def test_a_chunk_put_again_replaces_itself_and_forget_drops_a_job() -> None:
    recent = RecentChunks(max_bytes=100)
    recent.put("j1", 1, 0, 1, b"old")
    recent.put("j1", 1, 0, 1, b"new!")
    recent.put("j2", 1, 0, 1, b"other")
    assert recent.get("j1", 1, 0) == (1, b"new!") and recent.size == 9
    recent.forget("j1")
    assert recent.get("j1", 1, 0) is None and recent.size == 5 and len(recent) == 1
