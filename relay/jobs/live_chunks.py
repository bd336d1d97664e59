"""The chunks this node stored lately, in clear, for the readers following a job live.

A platform usually reads a job's results while they arrive (``GET /jobs/{id}/results``
starts before the job ends). Each chunk intake has just checked, encrypted and stored is
then read straight back: a store call (on PostgreSQL a round trip carrying ~600 KB) and a
decryption, for bytes this process held a moment before. ``RecentChunks`` keeps the
clear payload of the last chunks stored here, bounded in bytes (oldest out first), and
the reader takes a chunk from it when it is there; otherwise from the store, as before.
Only what was stored durably is put here, and keys carry the attempt, so an abandoned
attempt's chunks are never served for a newer one. Another relay node's readers use the
store. Nothing here is written to disk: it is the same data the node already holds in
memory while it handles the frame.
"""

from __future__ import annotations

from collections import OrderedDict

DEFAULT_MAX_BYTES = 32 << 20


class RecentChunks:
    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._chunks: OrderedDict[tuple[str, int, int], tuple[int, bytes]] = OrderedDict()
        self._bytes = 0
        self.hits = 0

    def put(self, job_id: str, attempt: int, seq: int, rows: int, data: bytes) -> None:
        """Keep ``data`` (``rows`` rows), stored just now as the attempt's chunk ``seq``."""
        if len(data) > self.max_bytes:
            return
        key = (job_id, attempt, seq)
        old = self._chunks.pop(key, None)
        if old is not None:
            self._bytes -= len(old[1])
        self._chunks[key] = (rows, data)
        self._bytes += len(data)
        while self._bytes > self.max_bytes:
            _, (_, dropped) = self._chunks.popitem(last=False)
            self._bytes -= len(dropped)

    def get(self, job_id: str, attempt: int, seq: int) -> tuple[int, bytes] | None:
        """(rows, data) of the chunk if it is still held, else None (read the store)."""
        found = self._chunks.get((job_id, attempt, seq))
        if found is not None:
            self.hits += 1
        return found

    def holds(self, job_id: str, attempt: int, seq: int) -> bool:
        """Whether the chunk is held (this node stored it just now, under its own key)."""
        return (job_id, attempt, seq) in self._chunks

    def forget(self, job_id: str) -> None:
        """The job's result was deleted or replaced: drop every chunk of it."""
        for key in [k for k in self._chunks if k[0] == job_id]:
            self._bytes -= len(self._chunks.pop(key)[1])

    def __len__(self) -> int:
        return len(self._chunks)

    @property
    def size(self) -> int:
        return self._bytes
