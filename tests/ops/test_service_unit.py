"""``service install|uninstall``: the systemd unit, verified by systemd-analyze; dry runs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.admin.service import unit_text
from tests.conftest import services_required
from tests.harness import command
from tests.ops.conftest import run_agent_cli

HARDENING = ("NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
             "Restart=always", "RestartSec=5", "User=mini-connector")  # fmt: skip


def _exec_path() -> str:
    return command("mini-connector")[0]


def test_unit_has_the_hardening_and_the_state_folder_writable() -> None:
    """The unit runs as the dedicated user, sandboxed, with only the state folder writable."""
    text = unit_text(exec_path="/usr/bin/mini-connector", config_path="/etc/mini-connector/agent.toml")
    for line in (*HARDENING, "ReadWritePaths=/etc/mini-connector",
                 "ExecStart=/usr/bin/mini-connector --config /etc/mini-connector/agent.toml run"):  # fmt: skip
        assert line in text.splitlines(), line
    assert "RestartSteps" not in text  # systemd < 254 does not know it
    newer = unit_text(exec_path="/usr/bin/mini-connector", config_path="/etc/mini-connector/agent.toml",
                      systemd_version=255)  # fmt: skip
    assert "RestartSteps=6" in newer and "RestartMaxDelaySec=300" in newer


@pytest.mark.parametrize("user", ["mini-connector", "svc-agent"])
def test_unit_passes_systemd_analyze_verify(tmp_path: Path, user: str) -> None:
    """systemd-analyze verify accepts the unit (no warnings) for this machine's systemd."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if services_required():
            pytest.fail("MC_REQUIRE_SERVICES=1 but systemd-analyze is missing (apt-get install systemd)")
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    version = subprocess.run([analyze, "--version"], capture_output=True, text=True, check=True).stdout.split()[1]
    unit = tmp_path / "mini-connector.service"
    state = tmp_path / "state"
    state.mkdir()
    unit.write_text(unit_text(exec_path=_exec_path(), config_path=str(state / "agent.toml"), user=user,
                              systemd_version=int(version)))  # fmt: skip
    done = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 0, output
    relevant = [ln for ln in output.splitlines() if "mini-connector.service" in ln]
    assert not relevant, output


def test_dry_run_prints_the_plan_and_changes_nothing(tmp_path: Path) -> None:
    """--dry-run shows the steps and the unit, writes nothing, creates no user."""
    config = tmp_path / "etc" / "agent.toml"
    run_agent_cli(config, "configure", "--relay-url", "wss://relay.example.com",
                  "--api-key", __import__("shared.keys", fromlist=["x"]).generate_key())  # fmt: skip
    r = run_agent_cli(config, "service", "install", "--user", "mc-dry-run-user", "--dry-run")
    assert r.code == 0, r.err
    assert "would do:" in r.out and "create the system user 'mc-dry-run-user'" in r.out
    assert "User=mc-dry-run-user" in r.out and f"ReadWritePaths={config.parent}" in r.out
    import pwd

    with pytest.raises(KeyError):
        pwd.getpwnam("mc-dry-run-user")
    u = run_agent_cli(config, "service", "uninstall", "--dry-run")
    assert u.code == 0 and "systemctl disable --now mini-connector" in u.out


def test_install_needs_a_config_first(tmp_path: Path) -> None:
    """Installing a service with no config is refused (exit 3) before anything is written."""
    r = run_agent_cli(tmp_path / "agent.toml", "service", "install", "--dry-run")
    assert r.code == 3 and "configure" in r.err


def test_config_under_home_is_refused_for_the_hardened_unit() -> None:
    """ProtectHome=yes hides /home and /root: such a config path is refused with the fix."""
    home_cfg = Path("/root/.config/mini-connector-test-nonexistent/agent.toml")
    r = run_agent_cli(home_cfg, "service", "install", "--dry-run")
    assert r.code == 3  # no config there: the config check comes first
    from agent.admin.errors import OpsError
    from agent.admin.service import _check_visible

    with pytest.raises(OpsError) as err:
        _check_visible(str(home_cfg), "config")
    assert err.value.code == 10 and "ProtectHome" in err.value.message


def test_service_run_is_windows_only() -> None:
    """'service run' exists for the Windows service manager; on Linux it says so (exit 10)."""
    r = run_agent_cli(Path(os.devnull), "service", "run")
    assert r.code == 10 and "Windows" in r.err


def test_windows_service_module_is_importable_and_inert_here(tmp_path: Path) -> None:
    """agent.admin.winservice imports on Linux, knows pywin32 is absent, and refuses to act."""
    from agent.admin import winservice
    from agent.admin.errors import OpsError
    from agent.paths import StatePaths

    assert winservice.AVAILABLE is False
    program, arguments = winservice.service_command_line(r"C:\Program Files\MiniConnector\mini-connector.exe",
                                                         Path(r"C:\ProgramData\MiniConnector\agent.toml"))  # fmt: skip
    assert program.endswith("mini-connector.exe") and arguments.endswith("service run")
    # started as `python -m agent.cli`: argv[0] is cli.py, which the service manager cannot run
    program, arguments = winservice.service_command_line(r"C:\src\agent\cli.py", Path(r"C:\a.toml"),
                                                         frozen=False, python=r"C:\Python313\python.exe")  # fmt: skip
    assert (program, arguments) == (r"C:\Python313\python.exe", r'-m agent.cli --config "C:\a.toml" service run')
    launcher = winservice.service_command_line(r"C:\venv\Scripts\mini-connector.exe", Path(r"C:\a.toml"),
                                               frozen=False, python=r"C:\venv\Scripts\python.exe")  # fmt: skip
    assert launcher[0] == r"C:\venv\Scripts\mini-connector.exe"  # pip's launcher
    with pytest.raises(OpsError) as err:
        winservice.uninstall(StatePaths(tmp_path / "agent.toml"), dry_run=False)
    assert "Windows" in err.value.message


def test_a_config_under_tmp_is_warned_about() -> None:
    """PrivateTmp=yes gives the service an empty /tmp (and /var/tmp) of its own: a config
    there would not be found by the installed service, so install says so."""
    from agent.admin.service import private_tmp_warning

    for path in ("/tmp/x/agent.toml", "/var/tmp/agent.toml"):
        warning = private_tmp_warning(path)
        assert warning is not None and "PrivateTmp=yes" in warning and path in warning
    assert private_tmp_warning("/etc/mini-connector/agent.toml") is None
    assert private_tmp_warning("/tmpfoo/agent.toml") is None


def test_dry_run_of_a_config_under_tmp_warns(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    if not str(config.resolve()).startswith("/tmp/"):
        pytest.skip(f"pytest's tmp_path is not under /tmp here ({tmp_path})")
    run_agent_cli(config, "configure", "--relay-url", "wss://relay.example.com",
                  "--api-key", __import__("shared.keys", fromlist=["x"]).generate_key())  # fmt: skip
    r = run_agent_cli(config, "service", "install", "--dry-run")
    assert r.code == 0 and "warning: the config" in r.err and "PrivateTmp=yes" in r.err
