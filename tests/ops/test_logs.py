"""``mini-connector logs``: the local JSON-lines log in human form, by level, followed."""

from __future__ import annotations

import json
import logging
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
