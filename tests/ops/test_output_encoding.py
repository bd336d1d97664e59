"""The CLI prints any character, whatever the output's encoding (agent/cli.py).

On Windows a redirected stdout is in the ANSI code page (cp1252 and the like); found by
running the agent under Wine without UTF-8 mode, a source path in Japanese made
``source add`` and ``source list`` die with UnicodeEncodeError. PYTHONIOENCODING=cp1252
gives Linux the same stream (strict errors, as Windows has)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from shared import keys
from tests.ops.conftest import run_agent_cli


def test_characters_the_encoding_lacks_are_escaped_not_fatal(tmp_path: Path) -> None:
    db = tmp_path / "名前.db"
    sqlite3.connect(db).close()
    config = tmp_path / "agent.toml"
    env = {**os.environ, "PYTHONIOENCODING": "cp1252", "HOME": str(tmp_path)}
    done = run_agent_cli(config, "configure", "--relay-url", "ws://127.0.0.1:9", "--api-key", keys.generate_key(),
                         env=env)  # fmt: skip
    assert done.code == 0, done
    added = run_agent_cli(config, "source", "add", "erp", "--type", "sqlite", "--url", f"sqlite:///{db}", env=env)
    listed = run_agent_cli(config, "source", "list", env=env)
    for done in (added, listed):
        assert done.code == 0 and "Traceback" not in done.err, done
        assert "\\u540d\\u524d.db" in done.out, done.out  # escaped, not lost
