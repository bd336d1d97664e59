"""Chunk compression on the wire: zlib level 1 against zstd level 1, per chunk.

Builds chunks of object lines as the agent sends them (``shared.rows.encode_objects``) from
rows shaped like ``throughput.py``'s table (id, name, amount, created, flag, score), cut
at the agent's target chunk size, and times ``encode_chunk`` (the agent, per codec) and
``decode_chunk`` (the relay) over them. Prints MB/s, the compression ratio and CPU seconds
per million rows, and zstd's figures as a ratio to zlib's. No database needed. No
pass/fail. Compression is used only off loopback (``agent.jobs.producer.compression_pays``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from decimal import Decimal

from _common import figure

from agent.jobs.producer import TARGET_CHUNK
from shared.protocol import Chunk, decode_chunk, encode_chunk
from shared.rows import encode_objects

NAMES = ["id", "name", "amount", "created", "flag", "score"]


def chunks(rows: int) -> list[tuple[int, bytes]]:
    base = dt.datetime(2025, 1, 1)
    out, batch = [], []
    for g in range(1, rows + 1):
        batch.append([g, f"customer {g}", Decimal(g % 100_000) / 100, base + dt.timedelta(seconds=g),
                      g % 2 == 0, g / 7.0])  # fmt: skip
        if len(batch) == 4000 or g == rows:
            out.append((len(batch), encode_objects(NAMES, batch)))
            batch = []
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=400_000)
    args = ap.parse_args(argv)
    data = chunks(args.rows)
    raw = sum(len(p) for _, p in data)
    print(f"codecs: {args.rows:,} rows in {len(data)} chunks of ~{raw // len(data) // 1024} KiB "
          f"(agent target {TARGET_CHUNK // 1024} KiB)")  # fmt: skip
    per_m = 1_000_000 / args.rows
    seconds: dict[str, float] = {}
    for codec in ("zlib", "zstd"):
        frames, t0 = [], time.process_time()
        for i, (n, payload) in enumerate(data):
            frames.append(encode_chunk(Chunk("job_bench", 1, i, n, payload), compress=codec))
        enc = time.process_time() - t0
        t0 = time.process_time()
        for f in frames:
            decode_chunk(f)
        dec = time.process_time() - t0
        wire = sum(len(f) for f in frames)
        seconds[codec] = enc
        print(f"  {codec} level 1")
        figure("    compress (agent)", raw / enc / 1e6, "MB/s")
        figure("    decompress (relay)", raw / dec / 1e6, "MB/s")
        figure("    bytes on the wire, ratio raw / sent", raw / wire, "x")
        figure("    agent CPU per 1M rows", enc * per_m, "s")
        figure("    relay CPU per 1M rows", dec * per_m, "s")
    figure("  zstd compress time / zlib's", seconds["zstd"] / seconds["zlib"], "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
