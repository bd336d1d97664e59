"""An IT admin's slips at the ``mini-connector`` command line, against the real console
script: one sentence on stderr, the documented exit code, the config untouched, no
traceback, no secret echoed, and nothing from a file obeyed by the terminal."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from shared.keys import generate_key
from tests.agent.conftest import make_sample_db
from tests.harness import command, scaled
from tests.ops.conftest import run_agent_cli

EXIT_USAGE = 2


def _configured(tmp_path: Path) -> Path:
    config = tmp_path / "agent.toml"
    r = run_agent_cli(config, "configure", "--relay-url", "ws://127.0.0.1:9", "--api-key", generate_key())
    assert r.code == 0, r.err
    return config


def _one_sentence(err: str) -> None:
    assert err.count("\n") == 1 and err.startswith("mini-connector: ")
    assert "Traceback" not in err and "unexpected error" not in err


def test_a_password_on_stdin_that_is_not_utf8_is_refused_by_name(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 on stdin (a file saved in a legacy code page) were an
    'unexpected error: UnicodeEncodeError' (exit 1); now a usage error naming the cause,
    in a C locale (surrogateescape) and a UTF-8 one (strict) alike, the password unshown."""
    config = _configured(tmp_path)
    before = config.read_bytes()
    for locale in ("C", "C.UTF-8"):
        done = subprocess.run(
            [*command("mini-connector"), "source", "add", "erp", "--type", "postgres",
             "--url", "postgresql://reader@127.0.0.1:9/erp", "--password-stdin", "--config", str(config)],
            input=b"s\xe9cret\xff\n", capture_output=True, timeout=scaled(60), check=False,
            env={"PATH": "/usr/bin:/bin", "LC_ALL": locale, "PYTHONUTF8": "0"},
        )  # fmt: skip
        err = done.stderr.decode("utf-8", "replace")
        assert done.returncode == EXIT_USAGE, err
        _one_sentence(err)
        assert "the password on stdin is not UTF-8 text" in err
        assert "cret" not in err and done.stdout == b""
        assert config.read_bytes() == before


def test_an_option_given_twice_is_refused_not_silently_overwritten(tmp_path: Path) -> None:
    """``--option read_timeout=30 --option read_timeout=300`` kept the last value without a
    word; now it is refused and nothing is written."""
    config = _configured(tmp_path)
    db = make_sample_db(tmp_path / "sample.db")
    before = config.read_bytes()
    r = run_agent_cli(config, "source", "add", "erp", "--type", "sqlite", "--url", f"sqlite:///{db}",
                      "--option", "read_timeout=30", "--option", "read_timeout=300")  # fmt: skip
    assert r.code == EXIT_USAGE
    _one_sentence(r.err)
    assert "--option 'read_timeout' was given twice" in r.err
    assert config.read_bytes() == before
    # once is fine
    ok = run_agent_cli(config, "source", "add", "erp", "--type", "sqlite", "--url", f"sqlite:///{db}",
                       "--option", "read_timeout=30")  # fmt: skip
    assert ok.code == 0, ok.err


ESC = "\x1b]0;pwned\x07\x1b[2J\x9b31m\u2028"


def test_logs_never_send_control_characters_to_the_terminal(tmp_path: Path) -> None:
    """A log line's message (a database's error text, a job's name) or a damaged line of the
    file with ESC/BEL/CSI in it reached the terminal raw from ``mini-connector logs``; now
    they are shown escaped, and ``--json`` stays valid JSON with the same values."""
    config = tmp_path / "agent.toml"
    logs = tmp_path / "logs"
    logs.mkdir()
    record = {"timestamp": "2026-12-05T03:00:00.000Z", "level": "ERROR", "logger": "agent.job",
              "message": f"query failed: {ESC}end", "jobId": f"job_{ESC}"}  # fmt: skip
    (logs / "agent.log").write_bytes(
        b"\xff\xfe\x00garbage \x1b[31m\n" + json.dumps(record).encode() + b"\n"
        + ('{"timestamp": "2026-12-05T03:00:01Z", "level": "INFO", "message": "raw \x9b C1"}').encode() + b"\n"
        + b'{"timestamp": "2026-12-05T03:00:02Z", "lev'  # a line cut short by a crash
    )  # fmt: skip
    r = run_agent_cli(config, "logs", "-n", "0")
    assert r.code == 0, r.err
    for bad in ("\x1b", "\x07", "\x9b", "\x00", "\u2028"):
        assert bad not in r.out
    lines = r.out.splitlines()
    assert lines[0] == "\ufffd\ufffd\\x00garbage \\x1b[31m"
    # (U+2028 in a message is a line break there: indented, as before)
    assert lines[1] == "2026-12-05 03:00:00.000 ERROR   agent.job: query failed: \\x1b]0;pwned\\x07\\x1b[2J\\x9b31m"
    assert lines[2] == "    end [job_\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m\\u2028]"
    assert lines[3].endswith("INFO    : raw \\x9b C1")
    assert lines[4] == '{"timestamp": "2026-12-05T03:00:02Z", "lev'

    j = run_agent_cli(config, "logs", "--json", "--level", "ERROR")
    assert j.code == 0, j.err
    assert "\x1b" not in j.out and "\x9b" not in j.out and "\u2028" not in j.out
    assert json.loads(j.out) == record
