"""The admin command line against damaged or hostile local state: a status file with
nonsense in it, a relay URL with terminal escapes in the config, a config this user may
not read. One clear sentence and the documented exit code, never a traceback or an
escape sequence reaching the terminal."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson
import pytest

from agent import cli
from agent.paths import StatePaths

ESC = "\x1b[2J\x1b]0;pwned\x07"


def _configure(tmp_path: Path, api_key: str) -> Path:
    cfg = tmp_path / "agent.toml"
    assert cli.main(["configure", "--config", str(cfg), "--relay-url", "ws://127.0.0.1:9", "--api-key", api_key]) == 0
    return cfg


@pytest.mark.parametrize("updated", ['"abc"', "[1]", '{"x": 1}', "true", "1e400"])
def test_a_status_file_with_a_bad_updated_at_is_reported_not_a_crash(tmp_path: Path, api_key: str, capsys, updated):
    cfg = _configure(tmp_path, api_key)
    capsys.readouterr()
    status = StatePaths(cfg).status_file
    status.write_text(f'{{"pid": {os.getpid()}, "updatedAt": {updated}, "state": "connected"}}')
    assert cli.main(["status", "--config", str(cfg)]) == cli.EXIT_NOT_RUNNING
    out, err = capsys.readouterr()
    assert err == "" and "not running" in out
    if updated != "1e400":  # (orjson reads that as infinity: a number, only stale)
        assert f"the status file {status} is unreadable" in out
    assert cli.main(["status", "--json", "--config", str(cfg)]) == cli.EXIT_NOT_RUNNING
    shown = orjson.loads(capsys.readouterr().out)
    assert shown["running"] is False


def test_a_status_file_that_is_not_json_is_named(tmp_path: Path, api_key: str, capsys):
    cfg = _configure(tmp_path, api_key)
    capsys.readouterr()
    status = StatePaths(cfg).status_file
    status.write_bytes(b"\x00\xff{")
    assert cli.main(["status", "--config", str(cfg)]) == cli.EXIT_NOT_RUNNING
    assert f"the status file {status} is unreadable: it is not valid JSON" in capsys.readouterr().out


def test_diagnose_shows_a_relay_url_with_escapes_escaped(tmp_path: Path, api_key: str, capsys):
    cfg = _configure(tmp_path, api_key)
    text = cfg.read_text()
    assert 'relay_url = "ws://127.0.0.1:9"' in text
    escaped = ESC.replace("\x1b", "\\u001b").replace("\x07", "\\u0007")
    cfg.write_text(text.replace('relay_url = "ws://127.0.0.1:9"', f'relay_url = "ws://127.0.0.1:9/{escaped}"'))
    capsys.readouterr()
    rc = cli.main(["diagnose", "--config", str(cfg), "--timeout", "0.5"])
    out = capsys.readouterr().out
    assert rc == 8  # the TCP check fails: nothing listens on port 9
    assert "\x1b" not in out and "\x07" not in out
    assert "ws://127.0.0.1:9/\\x1b[2J\\x1b]0;pwned\\x07" in out
    # and status, where the agent is not running, the same
    assert cli.main(["status", "--config", str(cfg)]) == cli.EXIT_NOT_RUNNING
    assert "\x1b" not in capsys.readouterr().out


def test_a_relay_url_python_cannot_split_is_a_config_error_not_a_crash(tmp_path: Path, api_key: str, capsys):
    cfg = _configure(tmp_path, api_key)
    for bad in ("ws://127.0.0.1[:9/x", "ws://127.0.0.1:port/x"):
        cfg.write_text(_with_url(cfg, bad))
        capsys.readouterr()
        rc = cli.main(["diagnose", "--config", str(cfg), "--timeout", "0.5"])
        out, err = capsys.readouterr()
        assert rc == 8 and "unexpected error" not in err
        assert out.startswith("FAIL  config  the relay URL")


def _with_url(cfg: Path, url: str) -> str:
    lines = [ln for ln in cfg.read_text().splitlines() if not ln.startswith("relay_url")]
    at = lines.index("[agent]") + 1
    return "\n".join([*lines[:at], f'relay_url = "{url}"', *lines[at:]]) + "\n"


def _as_another_user() -> list[str]:
    """A command prefix that runs without root's power to read anything (root ignores
    file modes); none when not root."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot drop the right to read any file")
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")
@pytest.mark.parametrize("locked", ["file", "folder"])
def test_a_config_this_user_may_not_read_is_a_config_error_naming_the_file(api_key: str, locked):
    # Outside pytest's own tmp folder (0700, root's): the other user must reach the folder.
    base = Path(tempfile.mkdtemp(prefix="mc-perm-"))
    try:
        base.chmod(0o755)
        cfg = _configure(base, api_key)
        if locked == "file":
            cfg.chmod(0o000)
        else:
            base.chmod(0o700 if os.geteuid() == 0 else 0o000)  # root's folder, or nobody's
        for command in (["status"], ["source", "list"], ["diagnose", "--timeout", "0.5"]):
            proc = subprocess.run(
                [*_as_another_user(), sys.executable, "-m", "agent.cli", "--config", str(cfg), *command],
                capture_output=True, text=True, timeout=60, cwd=Path(cli.__file__).parent.parent,
                env={**os.environ, "HOME": "/nonexistent"},
            )  # fmt: skip
            text = proc.stdout + proc.stderr
            assert "unexpected error" not in text and "Traceback" not in text, text
            assert f"cannot read the agent config {cfg}: Permission denied" in text, text
            assert proc.returncode == (8 if command[0] == "diagnose" else cli.EXIT_CONFIG), text
        if locked == "folder":  # the state beside it too: one sentence naming the file
            proc = subprocess.run(
                [*_as_another_user(), sys.executable, "-m", "agent.cli", "--config", str(cfg), "logs"],
                capture_output=True, text=True, timeout=60, cwd=Path(cli.__file__).parent.parent,
                env={**os.environ, "HOME": "/nonexistent"},
            )  # fmt: skip
            assert proc.returncode == cli.EXIT_CONFIG and "unexpected error" not in proc.stderr, proc.stderr
            assert proc.stderr.startswith(f"mini-connector: permission denied: {base}"), proc.stderr
    finally:
        base.chmod(0o700)
        shutil.rmtree(base, ignore_errors=True)


def _config_line(out: str) -> str:
    return next(ln for ln in out.splitlines() if ln.split()[1:2] == ["config"])


def test_diagnose_on_a_config_that_is_a_folder_says_so_not_configure(tmp_path: Path, capsys):
    """The config path names a folder: 'configure' cannot help (it cannot read it either);
    the fix is to point --config at the file."""
    folder = tmp_path / "agent.toml"
    folder.mkdir()
    rc = cli.main(["diagnose", "--config", str(folder), "--timeout", "0.5"])
    out, err = capsys.readouterr()
    assert rc == 8 and "unexpected error" not in err
    line = _config_line(out)
    assert line.startswith(f"FAIL  config  cannot read the agent config {folder}: Is a directory"), line
    assert "mini-connector configure" not in line and "--config" in line, line
    assert str(folder / "agent.toml") in line, line


def test_diagnose_on_a_config_that_is_not_valid_toml_names_the_line(tmp_path: Path, api_key: str, capsys):
    cfg = _configure(tmp_path, api_key)
    lines = cfg.read_text().splitlines()
    at = lines.index("[agent]") + 1
    lines.insert(at, "relay_url = ws://unquoted")  # a hand edit that forgot the quotes
    cfg.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    rc = cli.main(["diagnose", "--config", str(cfg), "--timeout", "0.5"])
    out, err = capsys.readouterr()
    assert rc == 8 and "unexpected error" not in err
    line = _config_line(out)
    assert f"the agent config {cfg} is not valid TOML" in line, line
    assert f"(at line {at + 1}, column" in line, line
    # the fix: the line to correct; 'configure' only once the broken file is moved aside
    assert f"Fix: correct line {at + 1} of {cfg}" in line and "move the file aside" in line, line


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")
def test_diagnose_on_a_config_this_user_may_not_read_suggests_the_right_user_not_configure(api_key: str):
    base = Path(tempfile.mkdtemp(prefix="mc-perm-"))
    try:
        base.chmod(0o755)
        cfg = _configure(base, api_key)
        cfg.chmod(0o000)
        proc = subprocess.run(
            [*_as_another_user(), sys.executable, "-m", "agent.cli", "--config", str(cfg), "diagnose", "--timeout", "0.5"],
            capture_output=True, text=True, timeout=60, cwd=Path(cli.__file__).parent.parent,
            env={**os.environ, "HOME": "/nonexistent"},
        )  # fmt: skip
        assert proc.returncode == 8, proc.stdout + proc.stderr
        line = _config_line(proc.stdout)
        assert line.startswith(f"FAIL  config  cannot read the agent config {cfg}: Permission denied. Fix:"), line
        fix = line.split(". Fix: ", 1)[1]
        assert "mini-connector configure" not in fix, line
        assert "as the user the agent runs as" in fix and f"let that user read {cfg}" in fix, line
    finally:
        base.chmod(0o700)
        shutil.rmtree(base, ignore_errors=True)
