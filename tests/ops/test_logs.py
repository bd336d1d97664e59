"""``mini-connector logs``: the local JSON-lines log in human form, by level, followed."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.logs import setup_logging
from tests.harness import Proc, command, scaled
from tests.ops.conftest import run_agent_cli


@pytest.fixture
def agent_logger(tmp_path: Path, root_logging: logging.Logger) -> Iterator[tuple[Path, logging.Logger]]:
    """The agent's real log handlers writing to ``tmp_path/logs/agent.log``."""
    setup_logging(tmp_path / "logs" / "agent.log", stderr=False, level=logging.DEBUG)
    yield tmp_path / "agent.toml", logging.getLogger("agent.test")


def _flush() -> None:
    for h in logging.getLogger().handlers:
        h.flush()


def test_level_filter_shows_that_level_and_above(agent_logger: tuple[Path, logging.Logger]) -> None:
    """--level WARNING shows WARNING and ERROR lines only, in time order, human form."""
    config, log = agent_logger
    log.debug("debug line")
    log.info("info line")
    log.warning("warning line", extra={"jobId": "job_0123"})
    log.error("error line with key vmc_abcdefghijklmnop")
    _flush()
    r = run_agent_cli(config, "logs", "--level", "warning")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert len(lines) == 2
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} WARNING agent\.test: warning line \[job_0123\]$", lines[0])
    assert "ERROR" in lines[1] and "vmc_abcdefghijklmnop" not in lines[1]

    everything = run_agent_cli(config, "logs", "--json", "-n", "0")
    assert [json.loads(x)["level"] for x in everything.out.splitlines()] == ["DEBUG", "INFO", "WARNING", "ERROR"]
    newest = run_agent_cli(config, "logs", "-n", "1")
    assert newest.out.count("\n") == 1 and "error line" in newest.out


def test_no_log_is_exit_9_with_one_sentence(tmp_path: Path) -> None:
    """No local log yet: one sentence naming the file, exit code 9."""
    r = run_agent_cli(tmp_path / "agent.toml", "logs")
    assert r.code == 9
    assert r.err.count("\n") == 1 and "no local log" in r.err and "agent.log" in r.err


def test_follow_prints_new_lines_as_they_are_written(agent_logger: tuple[Path, logging.Logger]) -> None:
    """logs --follow --level ERROR prints an ERROR written after it started, skips an INFO."""
    config, log = agent_logger
    log.info("before follow")
    _flush()
    argv = [*command("mini-connector"), "--config", str(config), "logs", "--follow", "--level", "ERROR"]
    proc = Proc("logs-follow", argv, {**__import__("os").environ}, config.parent / "follow.out")
    try:
        # the follower has started once it has read the existing file (nothing to show)
        log.info("not shown")
        log.error("shown while following")
        _flush()
        proc.wait_for_line(re.compile(r"ERROR\s+agent\.test: shown while following"), scaled(15))
        assert not any("not shown" in ln for ln in proc.lines)
    finally:
        proc.stop()


def test_a_message_with_line_breaks_cannot_pose_as_another_line(agent_logger: tuple[Path, logging.Logger]) -> None:
    """A message carrying a newline (a driver's multi-line error, a value from a query)
    is shown with its continuation lines indented, as an exception is, so it can never
    look like a line of its own (a forged ERROR) in ``mini-connector logs``."""
    config, log = agent_logger
    log.info("first part\n2026-12-04 10:00:00.000 ERROR   agent.fake: forged\r\nlast")
    _flush()
    r = run_agent_cli(config, "logs")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert len(lines) == 3 and lines[0].endswith("agent.test: first part"), lines
    assert lines[1] == "    2026-12-04 10:00:00.000 ERROR   agent.fake: forged" and lines[2] == "    last"


def test_follow_keeps_lines_written_just_before_a_rotation(tmp_path: Path) -> None:
    """The agent may write to the old file after the follower's read found nothing and
    before the follower sees the rotation: those lines are shown, not skipped. The moment
    is made certain by doing the agent's write and rotation (real files) inside the
    follower's ``stat`` of the path, which comes exactly between the two."""
    from agent.admin.logview import follow

    log = tmp_path / "agent.log"
    log.write_bytes(b"A\n")

    class RotatingNow(type(log)):  # type: ignore[misc]
        rotated = False

        def stat(self, **kw):  # type: ignore[no-untyped-def]
            if not RotatingNow.rotated:
                RotatingNow.rotated = True
                with open(log, "ab") as old:
                    old.write(b"B\n")  # after the follower's empty read of the old file
                os.replace(log, log.with_name("agent.log.1"))
                log.write_bytes(b"C\n")
            return super().stat(**kw)

    shown: list[str] = []
    follow(RotatingNow(log), shown.append, start_at_end=False, should_stop=lambda: shown[-1:] == ["C"], poll=0.01)
    assert shown == ["A", "B", "C"]
