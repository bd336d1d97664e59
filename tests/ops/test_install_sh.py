"""installers/linux/install.sh's own messages (issue 16): --help is a success, and an
error is its sentence only (the exit code was appended to every message)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "installers" / "linux" / "install.sh"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=30, check=False)


def test_help_is_a_success_and_shows_the_usage() -> None:
    done = _run("--help")
    assert done.returncode == 0 and done.stderr == ""
    assert "install.sh --api-key vmc_... --relay-url" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "install.sh: unknown option --bogus (see --help)"),
        (["--relay-url", "wss://r"], "install.sh: --api-key is required (the key shown when the connector was created)"),
        (["--api-key", "vmc_x"], "install.sh: --relay-url is required (for example wss://relay.example.com)"),
        (["--api-key", "nope", "--relay-url", "wss://r"], "install.sh: the API key must start with 'vmc_'"),
    ],
)
def test_a_usage_error_is_one_sentence_and_exit_2(args: list[str], message: str) -> None:
    done = _run(*args)
    assert done.returncode == 2
    assert done.stderr == message + "\n"
