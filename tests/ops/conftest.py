"""Fixtures for the admin commands' tests: one real relay for the module, agents on it.

``ops_stack`` is a ``mini-relay serve`` process (tests.harness); tests add agents to it
through the real CLI. ``run_agent_cli`` runs ``mini-connector`` as a subprocess and
returns its exit code and output, so exit codes and stderr sentences are tested as an
admin meets them. The ``package`` marker is for the slow build-and-install test, which
runs only with ``MC_TEST_PACKAGE=1``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import Stack, command, scaled


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "package: builds and installs the binary and the .deb (MC_TEST_PACKAGE=1)")


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_agent_cli(config: Path, *args: str, env: dict[str, str] | None = None,
                  timeout: float = 60) -> Result:  # fmt: skip
    done = subprocess.run(
        [*command("mini-connector"), "--config", str(config), *args],
        capture_output=True, text=True, env=env, timeout=scaled(timeout), check=False,
    )  # fmt: skip
    return Result(done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="module")
def ops_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("ops"), tenant="ops", heartbeat=1.0)
    try:
        stack.start_relay()
        yield stack
    finally:
        stack.close()
