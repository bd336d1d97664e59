"""A closed output pipe (``mini-connector status | head -1``, ``mini-relay token | ...``)
ends a command quietly with 141, like a Unix tool ended by SIGPIPE, never "unexpected
error: BrokenPipeError" or Python's "Exception ignored" and 120 (shared/closedpipe.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent import cli
from agent.paths import StatePaths
from shared.closedpipe import EXIT_BROKEN_PIPE


def _closed_reader(args: list[str], *, buffered: bool, module: str = "agent.cli",
                   extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    # stdout is a pipe whose reading end is closed before the child writes: the child's
    # first write fails with EPIPE (Python ignores SIGPIPE, so it is BrokenPipeError).
    # ``buffered``: as from an ordinary shell, where the write happens at the final flush
    # (PYTHONUNBUFFERED, set in some CI shells, makes every print write at once).
    import os

    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"} | (extra_env or {})
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-c", f"import sys; from {module} import main; sys.exit(main())", *args],
            stdout=write_end, stderr=subprocess.PIPE, timeout=60, check=False, env=env,
        )
    finally:
        os.close(write_end)


@pytest.mark.parametrize("buffered", [True, False])
@pytest.mark.parametrize("args", [["--help"], ["status"], ["source", "list"], ["logs"]])
def test_a_closed_pipe_ends_quietly(args: list[str], buffered: bool, tmp_path: Path, api_key: str) -> None:
    cfg = tmp_path / "agent.toml"
    assert cli.main(["configure", "--config", str(cfg), "--relay-url", "ws://127.0.0.1:9", "--api-key", api_key]) == 0
    log = StatePaths(cfg).logs_dir / "agent.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("".join(
        f'{{"timestamp": "2026-12-04T00:00:0{i}Z", "level": "INFO", "logger": "agent.session", "message": "line {i}"}}\n'
        for i in range(5)
    ))  # fmt: skip
    done = _closed_reader([*args, "--config", str(cfg)] if args != ["--help"] else args, buffered=buffered)
    # --help's text sits in stdout's buffer until exit, where Python drops it silently
    expected = (0, EXIT_BROKEN_PIPE) if args == ["--help"] else (EXIT_BROKEN_PIPE,)
    assert done.returncode in expected, done.stderr
    assert b"BrokenPipe" not in done.stderr and b"Traceback" not in done.stderr and b"unexpected" not in done.stderr


@pytest.mark.parametrize("buffered", [True, False])
@pytest.mark.parametrize("args", [["--help"], ["token", "--tenant", "t1", "--role", "admin"]])
def test_mini_relay_ends_quietly_on_a_closed_pipe_too(args: list[str], buffered: bool) -> None:
    done = _closed_reader(args, buffered=buffered, module="relay.cli", extra_env={"MC_RELAY_JWT_SECRET": "s" * 32})
    expected = (0, EXIT_BROKEN_PIPE) if args == ["--help"] else (EXIT_BROKEN_PIPE,)
    assert done.returncode in expected, done.stderr
    assert b"BrokenPipe" not in done.stderr and b"Traceback" not in done.stderr
