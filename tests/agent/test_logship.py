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
