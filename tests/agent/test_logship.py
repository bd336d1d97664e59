"""agent/logship: line ids that only grow, and reading the local log back for catch-up."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from agent.logs import ShipBuffer, setup_logging
from agent.logship import LineIds, newest_id, read_since


def test_line_ids_grow_even_when_the_clock_goes_back() -> None:
    """Ids are increasing microseconds, never repeating, past a seeded floor."""
    now = [1000.0]
    ids = LineIds(clock=lambda: now[0])
    a = ids.next()
    now[0] = 999.0
    b = ids.next()
    ids.seed(b + 50)
    assert a == 1_000_000_000 and b == a + 1 and ids.next() == b + 51


def _write(path: Path, ids: list[int], level: str = "INFO", logger: str = "agent.x") -> None:
    with path.open("a") as f:
        for i in ids:
            f.write(json.dumps({"id": i, "timestamp": "2026-11-24T10:00:00.000Z", "level": level,
                                "logger": logger, "message": f"m{i}"}) + "\n")


def test_read_since_spans_rotations_filters_levels_and_is_bounded(tmp_path: Path) -> None:
    """Catch-up reads agent.log.N .. agent.log oldest first, after the cursor, at or above
    the level, without the transport's lines, the newest ``max_lines`` only."""
    log = tmp_path / "agent.log"
    _write(tmp_path / "agent.log.2", [1, 2, 3])
    _write(tmp_path / "agent.log.1", [4, 5])
    _write(tmp_path / "agent.log.1", [6], level="DEBUG")
    _write(log, [7, 8])
    _write(log, [9], logger="websockets.client")
    with log.open("a") as f:
        f.write("{not json\n")
    got = read_since(log, 2, logging.INFO, max_age=1e12, now=1.0)
    assert [x["id"] for x in got] == [3, 4, 5, 7, 8]
    assert got[0] == {"id": 3, "timestamp": "2026-11-24T10:00:00.000Z", "level": "INFO",
                      "message": "m3", "logger": "agent.x", "jobId": None}
    assert [x["id"] for x in read_since(log, None, logging.DEBUG, max_lines=3, max_age=1e12, now=1.0)] == [6, 7, 8]
    assert newest_id(log) == 9


def test_file_and_buffer_carry_the_same_id_and_a_raise_lowers_the_root(tmp_path: Path) -> None:
    """One record, one id in the file and the buffer; raising the shipped level to DEBUG
    lets agent DEBUG lines through to the buffer but not the INFO-level file."""
    log = tmp_path / "logs" / "agent.log"
    ship: ShipBuffer = setup_logging(log, stderr=False)
    try:
        logging.getLogger("agent.t").info("hello")
        ship.setLevel("DEBUG")
        logging.getLogger("agent.t").debug("detail")
        logging.getLogger("urllib3").debug("library noise")
        for h in logging.getLogger().handlers:
            h.flush()
        lines = ship.take()
        file_lines = [json.loads(x) for x in log.read_text().splitlines()]
        assert lines[0]["id"] == file_lines[0]["id"] and lines[0]["message"] == "hello"
        assert [x["message"] for x in lines] == ["hello", "shipping DEBUG and above to the relay", "detail"]
        assert "detail" not in log.read_text()
        ship.setLevel("INFO")
        assert logging.getLogger().level == logging.INFO
    finally:
        for h in list(logging.getLogger().handlers):
            logging.getLogger().removeHandler(h)
            h.close()
        logging.getLogger().setLevel(logging.WARNING)


async def test_a_buffer_overflow_while_connected_loses_no_line(tmp_path: Path, root_logging: logging.Logger) -> None:
    """More lines than the ship buffer holds, logged between two shipping rounds: the
    oldest are dropped from the buffer, and the shipper must fetch them from the local
    file, not skip past them (every line exactly once, in order)."""
    import asyncio
    import time

    from agent.logship import ship_forever

    log = tmp_path / "logs" / "agent.log"
    ship = setup_logging(log, stderr=False)
    got: list[int] = []

    async def send(batch: list[dict]) -> None:
        got.extend(x["id"] for x in batch)

    log_ = logging.getLogger("agent.burst")
    log_.info("before")
    task = asyncio.create_task(ship_forever(send, ship, None))
    try:
        deadline = time.monotonic() + 10
        while len(got) < 1 or len(ship):
            assert time.monotonic() < deadline, got
            await asyncio.sleep(0.01)
        for i in range(ship._lines.maxlen + 500):  # overflow: 500 dropped from the buffer
            log_.info("burst %d", i)
        assert ship.dropped >= 500
        want = [json.loads(x)["id"] for x in log.read_text().splitlines()]
        while got[-1:] != want[-1:]:
            assert time.monotonic() < deadline, (len(got), len(want))
            await asyncio.sleep(0.01)
        assert got == want
    finally:
        task.cancel()


def test_a_lone_surrogate_in_a_message_is_kept_in_the_file_and_shippable(
    tmp_path: Path, root_logging: logging.Logger
) -> None:
    """A name decoded with ``surrogateescape`` (a non-UTF-8 file name, an ODBC driver's
    bytes) puts a lone surrogate in a message: the line must still reach the local log and
    encode as an ``agent.logs.v1`` frame (orjson refuses lone surrogates), or the line is
    lost and the shipper dies with it."""
    from shared.protocol import encode, make

    log = tmp_path / "logs" / "agent.log"
    ship = setup_logging(log, stderr=False)
    bad = b"caf\xe9.csv".decode("utf-8", "surrogateescape")
    try:
        raise OSError(f"cannot open {bad}")
    except OSError:
        logging.getLogger("agent.t").exception("reading %s failed", bad)
    logging.getLogger("agent.t").info("next")
    [first, second] = [json.loads(x) for x in log.read_text(encoding="utf-8").splitlines()]
    assert first["message"] == "reading caf\\udce9.csv failed" and "caf\\udce9.csv" in first["exception"]
    assert second["message"] == "next"
    lines = ship.take()
    assert [x["message"] for x in lines] == ["reading caf\\udce9.csv failed", "next"]
    encode(make("agent.logs.v1", lines=lines))
