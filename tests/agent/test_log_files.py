"""The agent's log handlers made cheaper per line (agent/logs.py): ``RotatingJsonFile``
rotates exactly where ``logging.handlers.RotatingFileHandler`` did and keeps as many
backups, the JSON lines and the human stderr lines are what they were, and
``setup_logging`` still wires the same sizes, ids and redaction."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import logging.handlers
import math
import random
from pathlib import Path

import pytest

from agent import logs
from agent.logs import (
    LOG_BACKUPS,
    LOG_MAX_BYTES,
    HumanFormatter,
    JsonFormatter,
    RotatingJsonFile,
    StderrHandler,
    setup_logging,
)


def _record(i: int, message: str, *, created: float | None = None) -> logging.LogRecord:
    rec = logging.LogRecord("agent.runner", logging.INFO, __file__, 1, message, None, None)
    rec.created = 1_795_500_000.0 + i * 0.0137 if created is None else created
    rec.lineId = 1_795_500_000_000_000 + i
    rec.jobId = f"job_{i:032x}" if i % 3 else None
    return rec


def _messages(n: int, seed: int) -> list[str]:
    rnd = random.Random(seed)
    return [f"job {i} succeeded: " + "x" * rnd.randrange(0, 400) for i in range(n)]


def _files(base: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(base.parent.iterdir()) if p.name.startswith(base.name)}


@pytest.mark.parametrize("existing", [0, 700])
def test_rotation_matches_the_standard_handler_line_for_line(tmp_path: Path, existing: int) -> None:
    """The same records through the stdlib handler and ours: the same files, byte for byte
    (the same rotation points, the same number of backups, the oldest dropped), also when
    the log already holds some lines at start."""
    ours, theirs = tmp_path / "ours" / "agent.log", tmp_path / "theirs" / "agent.log"
    for path in (ours, theirs):
        path.parent.mkdir()
        path.write_bytes(b"{}\n" * (existing // 3))
    std = logging.handlers.RotatingFileHandler(theirs, maxBytes=2000, backupCount=3, encoding="utf-8")
    new = RotatingJsonFile(ours, 2000, 3)
    for h in (std, new):
        h.setFormatter(JsonFormatter())
    try:
        for i, message in enumerate(_messages(200, seed=existing)):
            rec = _record(i, message)
            std.handle(rec)
            new.handle(rec)
    finally:
        std.close()
        new.close()
    got, want = _files(ours), _files(theirs)
    assert list(got) == ["agent.log", "agent.log.1", "agent.log.2", "agent.log.3"]
    assert got == want
    assert all(len(data) < 2000 for data in got.values())
    ids = [json.loads(line)["id"] for name in reversed(list(got)) for line in got[name].splitlines()]
    assert ids == sorted(ids) and ids[-1] == 1_795_500_000_000_000 + 199  # newest kept, in order


def test_rotation_counts_bytes_and_rechecks_a_file_someone_truncated(tmp_path: Path) -> None:
    """Sizes are bytes as written (non-ASCII too); if the file shrank behind the handler's
    back (an operator truncated it), the count is corrected instead of rotating early."""
    path = tmp_path / "agent.log"
    fmt = JsonFormatter()

    def rec(i: int) -> logging.LogRecord:
        r = _record(i, "é" * 40)  # 80 bytes, 40 characters
        r.jobId = "job_" + "0" * 32  # every line the same size
        return r

    size = len(fmt.line(rec(0)))
    per_file = math.ceil(1000 / size) - 1  # lines before the one that would reach 1000 bytes
    assert per_file * (size - 40) < 1000 <= (per_file + 1) * size  # counted in characters: more
    h = RotatingJsonFile(path, 1000, 2)
    h.setFormatter(fmt)
    try:
        for i in range(per_file):
            h.handle(rec(i))
        assert path.stat().st_size == per_file * size and not (tmp_path / "agent.log.1").exists()
        h.handle(rec(per_file))
        assert (tmp_path / "agent.log.1").stat().st_size == per_file * size
        backup = (tmp_path / "agent.log.1").read_bytes()
        with path.open("r+b") as f:
            f.truncate(0)  # the handler still counts one line in it
        for i in range(per_file):
            h.handle(rec(100 + i))
        assert (tmp_path / "agent.log.1").read_bytes() == backup  # not rotated early
        assert len(path.read_bytes().splitlines()) == per_file
    finally:
        h.close()


def test_a_line_longer_than_the_limit_goes_into_the_current_file_once(tmp_path: Path) -> None:
    path = tmp_path / "agent.log"
    h = RotatingJsonFile(path, 300, 2)
    h.setFormatter(JsonFormatter())
    try:
        h.handle(_record(0, "y" * 500))  # an empty file is never rotated away
        assert not (tmp_path / "agent.log.1").exists()
        h.handle(_record(1, "short"))
        assert "y" * 500 in (tmp_path / "agent.log.1").read_text() and "short" in path.read_text()
    finally:
        h.close()


def test_json_line_is_the_formatted_text_with_its_line_end() -> None:
    fmt = JsonFormatter()
    for i, message in enumerate(["plain", "ünïcode ✓", 'quote " and \\ backslash', "new\nline"]):
        rec = _record(i, message)
        assert fmt.line(rec) == (fmt.format(rec) + "\n").encode("utf-8")
        line = json.loads(fmt.line(rec))
        assert line["message"] == message and line["id"] == rec.lineId
        assert list(line) == ["timestamp", "level", "logger", "message", *(["jobId"] if rec.jobId else []), "id"]


def _old_timestamp(created: float) -> str:
    stamp = dt.datetime.fromtimestamp(created, dt.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def test_timestamps_are_what_datetime_made_including_rounding_at_the_second() -> None:
    rnd = random.Random(7)
    values = [1_795_500_000 + rnd.random() * 10_000_000 for _ in range(20_000)]
    values += [1_795_500_000.9999995, 1_795_500_000.9995, 1_795_500_001.0, 1_795_499_999.9999996,
               1_795_500_000.0004999, 0.0, 1e9 + 0.5]  # fmt: skip
    values += [math.nextafter(v, 0) for v in values[-7:]] + [math.nextafter(v, math.inf) for v in values[-7:]]
    for v in values:
        assert logs._timestamp(v) == _old_timestamp(v), v


def test_human_lines_are_the_plain_formatter_s(monkeypatch: pytest.MonkeyPatch) -> None:
    ours = HumanFormatter()
    plain = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
    t = 1_795_500_000.2
    for i in range(300):  # crosses many seconds, back and forth
        rec = _record(i, f"line {i}", created=t + ((i * 37) % 90) * 0.31)
        want = plain.format(rec)
        want = f"{want} [{rec.jobId}]" if rec.jobId else want
        assert ours.format(rec) == want


def test_stderr_handler_writes_one_human_line_each() -> None:
    buf = io.StringIO()
    h = StderrHandler(buf)
    h.setFormatter(HumanFormatter())
    h.handle(_record(1, "first"))
    h.handle(_record(2, "second"))
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].endswith("agent.runner: first [job_00000000000000000000000000000001]")


def test_setup_logging_wires_the_same_limits_ids_and_redaction(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], root_logging: logging.Logger
) -> None:
    root = root_logging
    log_file = tmp_path / "logs" / "agent.log"
    ship = setup_logging(log_file)
    [err] = [h for h in root.handlers if isinstance(h, StderrHandler)]
    [fh] = [h for h in root.handlers if isinstance(h, RotatingJsonFile)]
    assert (fh.maxBytes, fh.backupCount) == (LOG_MAX_BYTES, LOG_BACKUPS) == (10 << 20, 5)
    logging.getLogger("agent.t").info("connecting with password=hunter2 to %s", "db", extra={"jobId": "job_x"})
    [shipped] = ship.take()
    [line] = [json.loads(x) for x in log_file.read_text().splitlines()]
    assert line["id"] == shipped["id"] and line["jobId"] == shipped["jobId"] == "job_x"
    assert line["message"] == shipped["message"] == "connecting with password=**** to db"
    assert "hunter2" not in capsys.readouterr().err
    assert err.level == fh.level == logging.INFO
