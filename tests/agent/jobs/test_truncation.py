"""``maxRows`` and ``truncated`` on the cursor path: a real Producer over batches whose
boundaries fall before, on and after the limit (the COPY path: tests/agent/sources/test_pg_copy.py;
through a relay: tests/system/test_queries.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from agent.jobs.producer import Producer


class Batches:
    """``rows`` rows in batches of ``size`` (settable, like the sources' batches)."""

    def __init__(self, rows: int, size: int) -> None:
        self.rows, self.size, self.fetches = rows, size, []

    def __iter__(self) -> Iterator[list[tuple[int]]]:
        at = 0
        while at < self.rows:
            n = min(self.size, self.rows - at)
            self.fetches.append(n)
            yield [(i,) for i in range(at, at + n)]
            at += n


def _run(rows: int, size: int, max_rows: int | None) -> tuple[int, bool, Batches]:
    batches = Batches(rows, size)

    async def main() -> tuple[int, bool]:
        producer = Producer(loop=asyncio.get_running_loop(), job_id="job_" + "2" * 32, attempt=1,
                            read=lambda: ([{"name": "n", "type": "int"}], batches),
                            max_rows=max_rows, max_chunk_bytes=1 << 20)  # fmt: skip
        producer.start()
        sent = 0
        while True:
            kind, value = await asyncio.wait_for(producer.queue.get(), 10)
            if kind == "chunk":
                sent += value.rows
            elif kind in ("end", "error"):
                assert kind == "end", value
                assert producer.finished.wait(10)
                return sent, producer.truncated

    sent, cut = asyncio.run(main())
    return sent, cut, batches


@pytest.mark.parametrize(
    ("rows", "max_rows", "sent", "cut"),
    [
        (0, 5, 0, False),
        (5, 5, 5, False),  # exactly the limit: one more fetch finds nothing
        (6, 5, 5, True),
        (200, 200, 200, False),  # the first batch ends on the limit
        (201, 200, 200, True),  # ... and one row waits behind it
        (1000, 200, 200, True),
        (1000, 450, 450, True),  # the limit falls inside a later batch
        (1000, None, 1000, False),
        (1000, 1000, 1000, False),
    ],
)
def test_truncated_only_when_a_row_was_left_out(rows: int, max_rows: int | None, sent: int, cut: bool) -> None:
    got, truncated, batches = _run(rows, 200, max_rows)
    assert (got, truncated) == (sent, cut)
    if max_rows is not None and rows > max_rows and max_rows % 200 == 0:
        assert batches.fetches[-1] == 1  # the look past the limit asks for one row only


def test_a_source_without_a_batch_size_is_read_one_batch_past_the_limit() -> None:
    class Plain:
        def __iter__(self) -> Iterator[Any]:
            yield [(1,), (2,)]
            yield [(3,)]

    async def main() -> tuple[int, bool]:
        producer = Producer(loop=asyncio.get_running_loop(), job_id="job_" + "3" * 32, attempt=1,
                            read=lambda: ([{"name": "n", "type": "int"}], Plain()), max_rows=2,
                            max_chunk_bytes=1 << 20)  # fmt: skip
        producer.start()
        sent = 0
        while (item := await asyncio.wait_for(producer.queue.get(), 10))[0] != "end":
            sent += item[1].rows if item[0] == "chunk" else 0
        return sent, producer.truncated

    assert asyncio.run(main()) == (2, True)
