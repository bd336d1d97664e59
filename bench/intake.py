"""The relay's intake of one chunk (``relay.agents.guard.prepare``), CPU per million rows.

For payloads shaped as agents send them (``shared.rows.encode_objects``, cut at the
agent's target chunk size) of one column of int4-like, 32-character text, uuid, a jsonb
document with arrays, and the 6-column table of ``throughput.py``, each sent plain (an
agent on loopback) and as zstd (an agent off loopback), it times in one run:

- ``before``: what intake did until 2026-12-04: every line parsed on its own by simdjson
  (``shared.rows._each_line_check``), the payload compressed again for the store;
- ``after``: ``guard.prepare`` as it is (the whole-payload proof for lines of at most 48
  bytes on average, line by line otherwise; a zstd frame stored as the agent sent it).

Both include decompression and encryption at rest. Prints CPU seconds per 1M rows and
after / before. No database needed; no pass/fail. ``--rows`` per shape (default 300,000);
before and after take turns ``--rounds`` times (default 5), the best of each is printed.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import simdjson
from _common import figure

from agent.jobs.producer import TARGET_CHUNK
from relay import atrest
from relay.agents import guard
from shared import protocol, zstdframes
from shared.crypto import DataCipher
from shared.rows import _each_line_check, encode_objects


def _shapes() -> dict[str, tuple[list[str], Callable[[int], list[Any]]]]:
    return {
        "int4": (["c"], lambda g: [g * 7919 % 2_000_000_000]),
        "text (32 chars)": (["c"], lambda g: [uuid.UUID(int=g * 2654435761).hex]),
        "uuid": (["c"], lambda g: [str(uuid.UUID(int=g * 40503 + 12345))]),
        "jsonb with arrays": (["c"], lambda g: [{"id": g, "tags": ["a", "b", g % 7], "n": {"x": [g, g + 1]}}]),
        "6 columns": (["id", "name", "amount", "created", "flag", "score"],
                      lambda g: [g, f"customer {g}", f"{g % 100000 / 100:.2f}", f"2025-01-01T00:00:{g % 60:02d}",
                                 g % 2 == 0, g / 7.0]),
    }  # fmt: skip


def frames(names: list[str], row: Callable[[int], list[Any]], rows: int, codec: str | None) -> list[bytes]:
    probe = len(encode_objects(names, [row(g) for g in range(1, 1001)])) / 1000
    per_chunk = max(1, int(TARGET_CHUNK / probe))
    out = []
    for seq, start in enumerate(range(1, rows + 1, per_chunk)):
        batch = [row(g) for g in range(start, min(rows + 1, start + per_chunk))]
        chunk = protocol.Chunk("job_bench", 1, seq, len(batch), encode_objects(names, batch))
        out.append(protocol.encode_chunk(chunk, compress=codec))
    return out


def before(head: protocol.ChunkHead, data: bytes, cipher: DataCipher) -> None:
    payload = protocol.chunk_payload(head, data)
    assert _each_line_check(payload, simdjson) == head.rows
    atrest.seal(cipher, payload, b"job_bench:1:0", compress=True)


def after(head: protocol.ChunkHead, data: bytes, cipher: DataCipher) -> None:
    guard.prepare(head, data, cipher, True)


def cpu(fns: list[Callable[..., None]], work: list[tuple[protocol.ChunkHead, bytes]], cipher: DataCipher,
        rounds: int) -> list[float]:  # fmt: skip
    """Best CPU time of each of ``fns`` over the chunks, the fns taking turns each round."""
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            t0 = time.process_time()
            for head, data in work:
                fn(head, data, cipher)
            best[i] = min(best[i], time.process_time() - t0)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=300_000)
    ap.add_argument("--rounds", type=int, default=5, help="before and after take turns; best of each")
    args = ap.parse_args(argv)
    cipher = DataCipher.generate()
    per_m = 1_000_000 / args.rows
    print(f"relay intake per chunk, {args.rows:,} rows a shape, CPU s per 1M rows "
          f"(best of {args.rounds}, taking turns)")
    print(f"  {'shape':<20}{'wire':>6}{'before':>9}{'after':>9}{'after/before':>14}")
    for name, (names, row) in _shapes().items():
        for codec in (None, "zstd"):
            work = [(protocol.bound_chunk(protocol.read_chunk_head(f), f), f) for f in frames(names, row, args.rows, codec)]
            sent = "zstd" if any(h.codec for h, _ in work) else "plain"
            a, b = cpu([after, before], work, cipher, args.rounds)
            print(f"  {name:<20}{sent:>6}{b * per_m:>9.3f}{a * per_m:>9.3f}{a / b:>14.2f}", flush=True)
    figure("zstd level", zstdframes.LEVEL, "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
