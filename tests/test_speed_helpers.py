"""The small functions of the speed work: fd limits, cheap payload check, NDJSON lines,
compression on or off, heartbeat group commit."""

from __future__ import annotations

import asyncio
import resource
import threading
from typing import Any

import orjson

from agent.jobs.producer import compression_pays
from relay.agents.heartbeats import HeartbeatWriter, writer_for
from relay.jobs.results import ndjson
from shared.fdlimit import raise_nofile
from shared.rows import row_count


def test_raise_nofile_lifts_soft_limit_to_hard_and_never_lowers() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        after, after_hard = raise_nofile(want=min(512, hard))
        assert after == min(512, hard) and after_hard == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == after
        again, _ = raise_nofile(want=128)  # asking for less never lowers it
        assert again == after
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_row_count_cheap_and_exact() -> None:
    assert row_count(b"[[1,2],[3,4]]", 2) == 2
    assert row_count(b"[]", 0) == 0 and row_count(b" [ ] ", 3) == 0
    assert row_count(b"[[1]]", 5) == 1  # a lying header: parsed and counted exactly
    assert row_count(b'[["],["]]', 2) == 2  # the cheap count fooled: the caller may be too,
    assert row_count(b'[["],["]]', 1) == 1  # but an honest count is always confirmed
    assert row_count(b"[[1],[[2],[3]]]", 2) == 2  # nested arrays: parsed
    assert row_count(b'{"a":1}', 1) is None
    assert row_count(b"[[1]", 1) is None
    assert row_count(b"[1,2]", 2) is None  # rows must be arrays
    assert row_count(b"", 0) is None


def test_ndjson_lines_match_one_object_per_row() -> None:
    names = ["id", "name", "n"]
    batch: list[list[Any]] = [[1, "a\n\"b", None], [2, "é", {"x": [1]}]]
    out = ndjson(names, batch)
    assert out.endswith(b"\n") and out.count(b"\n") == 2
    assert [orjson.loads(line) for line in out.splitlines()] == [
        {"id": 1, "name": "a\n\"b", "n": None},
        {"id": 2, "name": "é", "n": {"x": [1]}},
    ]
    assert ndjson(names, []) == b""


def test_compression_pays_only_off_loopback() -> None:
    assert not compression_pays("ws://127.0.0.1:8080/api/v1/agent/connect")
    assert not compression_pays("ws://localhost:1")
    assert not compression_pays("wss://[::1]:443/x")
    assert compression_pays("wss://relay.example.com/x")
    assert compression_pays("wss://10.0.0.5/x")
    assert not compression_pays(["ws://127.0.0.1:1", "ws://localhost:2"])
    assert compression_pays(["ws://127.0.0.1:1", "wss://relay.example.com"])


class _SlowStore:
    """Runs fn(conn, ...) in a thread, slowly, and records each transaction."""

    def __init__(self) -> None:
        self.transactions: list[list[Any]] = []
        self.fail = False

    async def run(self, fn: Any, *args: Any) -> Any:
        def tx() -> Any:
            conn: list[Any] = []
            threading.Event().wait(0.05)
            if self.fail:
                raise RuntimeError("store down")
            out = fn(conn, *args)
            self.transactions.append(conn)
            return out

        return await asyncio.to_thread(tx)


def _item(conn: list[Any], arg_list: list[tuple[Any, ...]]) -> None:
    conn.extend(args[0] for args in arg_list)


def test_heartbeats_group_commit() -> None:
    async def main() -> None:
        store = _SlowStore()
        writer = HeartbeatWriter(store)
        await writer.write(_item, "first")  # alone: written at once, its own transaction
        assert store.transactions == [["first"]]
        await asyncio.gather(*(writer.write(_item, f"a{i}") for i in range(50)))
        # The first of the 50 starts a write; the other 49 queue behind it and share one.
        assert sum(len(t) for t in store.transactions) == 51
        assert len(store.transactions) <= 3
        assert writer.written == 51 and writer.batches == len(store.transactions)
        store.fail = True
        try:
            await writer.write(_item, "lost")
        except RuntimeError as exc:
            assert "store down" in str(exc)
        else:
            raise AssertionError("a failed write must reach its caller")
        assert writer_for(store) is writer_for(store)

    asyncio.run(main())


def test_each_writer_gets_its_items_of_a_batch_in_one_call() -> None:
    calls: list[list[Any]] = []

    def bulk(conn: list[Any], arg_list: list[tuple[Any, ...]]) -> None:
        calls.append([a[0] for a in arg_list])
        conn.extend(("bulk", a[0]) for a in arg_list)

    async def main() -> None:
        store = _SlowStore()
        writer = HeartbeatWriter(store)
        await writer.write(_item, "first")
        await asyncio.gather(*(writer.write(bulk, f"a{i}") for i in range(20)), writer.write(_item, "plain"))
        written = [x for t in store.transactions for x in t]
        assert sorted(x for x in written if isinstance(x, tuple)) == sorted(("bulk", f"a{i}") for i in range(20))
        assert "plain" in written and writer.written == 22
        assert len(calls) <= 2 and sum(len(c) for c in calls) == 20  # one call per batch

    asyncio.run(main())


def test_ndjson_fast_path_and_its_fallback_agree() -> None:
    names = ["id", "doc"]
    tricky = [[1, '},{"id":'], [2, [{"id": 3}, {"id": 4}]], [3, {"id": {"id": 5}}], [4, None]]
    out = ndjson(names, tricky)
    assert [orjson.loads(line) for line in out.splitlines()] == [dict(zip(names, r, strict=False)) for r in tricky]
    assert ndjson([], [[], []]) == b"{}\n{}\n"
    assert ndjson(["a", "a"], [[1, 2]]) == b'{"a":2}\n'
