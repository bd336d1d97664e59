"""``mini-connector service install|uninstall``: run the agent as a system service.

Linux: a systemd unit, written to ``/etc/systemd/system/mini-connector.service`` and
enabled with ``systemctl enable`` + ``restart`` when systemd runs (in a container it
usually does not: the unit is still written and the command says so, exit 12). The unit
text comes from the pure function ``unit_text`` so tests check it with
``systemd-analyze verify``: a dedicated system user, ``NoNewPrivileges``,
``ProtectSystem=strict`` with the state folder as the one writable path, ``ProtectHome``,
``PrivateTmp`` and the other sandboxing switches, ``Restart=always`` with a back-off
(``RestartSteps``/``RestartMaxDelaySec`` where systemd is 254 or newer), except after exit
7 (``EXIT_REPLACED``: another machine runs this connector's key and took its session;
restarting would take it back, and the two would displace each other for ever).
Windows: ``agent.admin.winservice`` (pywin32). ``--dry-run`` prints the plan and changes nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..config import load_config
from ..paths import StatePaths
from .errors import EXIT_NEEDS_ADMIN, EXIT_NO_SERVICE_MANAGER, EXIT_REPLACED, EXIT_SERVICE, OpsError

SERVICE_NAME = "mini-connector"
DEFAULT_USER = "mini-connector"
UNIT_DIR = Path("/etc/systemd/system")
STOP_TIMEOUT = 45  # the agent drains for up to 30 s on SIGTERM, then acknowledges
_HIDDEN_ROOTS = ("/home", "/root", "/run/user")  # what ProtectHome=yes hides
_PRIVATE_TMP = ("/tmp", "/var/tmp")  # noqa: S108 - PrivateTmp=yes gives the service its own, empty ones


def unit_text(
    *, exec_path: str, config_path: str, user: str = DEFAULT_USER, systemd_version: int | None = None
) -> str:
    """The systemd unit for the agent (pure: same inputs, same text)."""
    state = str(Path(config_path).parent)
    backoff = ""
    if systemd_version is not None and systemd_version >= 254:
        backoff = "RestartSteps=6\nRestartMaxDelaySec=300\n"
    return f"""\
# Mini Connector agent: written by 'mini-connector service install'; remove it with
# 'mini-connector service uninstall'. The agent only dials out; it opens no port.
[Unit]
Description=Mini Connector agent (outbound link to the Mini Connector relay)
After=network-online.target
Wants=network-online.target
StartLimitIntervalSec=0

[Service]
Type=simple
User={user}
Group={user}
ExecStart={_quote(exec_path)} --config {_quote(config_path)} run
Environment=PYTHONUNBUFFERED=1
Restart=always
RestartSec=5
RestartPreventExitStatus={EXIT_REPLACED}
{backoff}TimeoutStopSec={STOP_TIMEOUT}
KillSignal=SIGTERM
KillMode=mixed
UMask=0077
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ReadWritePaths={_quote(state)}
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
RestrictNamespaces=yes
LockPersonality=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
SystemCallArchitectures=native
CapabilityBoundingSet=
AmbientCapabilities=

[Install]
WantedBy=multi-user.target
"""


def _quote(value: str) -> str:
    return f'"{value}"' if any(c.isspace() for c in value) else value


def systemd_running() -> bool:
    """What sd_booted() checks: systemd is PID 1 and manages this machine."""
    return Path("/run/systemd/system").is_dir()


def systemd_version() -> int | None:
    try:
        cmd = ["systemctl", "--version"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False).stdout  # noqa: S603
    except (OSError, subprocess.SubprocessError):
        return None
    fields = out.split()
    return int(fields[1]) if len(fields) > 1 and fields[1].isascii() and fields[1].isdigit() else None


def agent_executable() -> str:
    """The command the service manager should start: this binary or this console script."""
    if getattr(sys, "frozen", False):
        return str(Path(sys.executable).resolve())
    argv0 = Path(sys.argv[0])
    if argv0.name.startswith("mini-connector") and argv0.is_file():
        return str(argv0.resolve())
    found = shutil.which("mini-connector")
    if found:
        return str(Path(found).resolve())
    raise OpsError("cannot find the mini-connector command to put in the service: install "
                   "the package or the binary first.", EXIT_SERVICE)  # fmt: skip


@dataclass
class Plan:
    """What install or uninstall will do, in order: shown by --dry-run, then done."""

    steps: list[str] = field(default_factory=list)
    unit: str = ""


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _check_visible(path: str, what: str) -> None:
    if any(path == r or path.startswith(r + "/") for r in _HIDDEN_ROOTS):
        raise OpsError(
            f"the {what} {path} is under a home folder, which the hardened service cannot "
            "see (ProtectHome=yes): use /etc/mini-connector/agent.toml and /usr/bin.",
            EXIT_SERVICE,
        )


def private_tmp_warning(path: str) -> str | None:
    """A warning when ``path`` is under /tmp or /var/tmp, which the service does not see
    (a warning, not a refusal: a dry run from a test folder is fine)."""
    root = next((r for r in _PRIVATE_TMP if path == r or path.startswith(r + "/")), None)
    if root is not None:
        return (f"warning: the config {path} is under {root}, "
                "which the service does not see (PrivateTmp=yes gives it an empty one of its own): "
                "the installed service would not find it; use /etc/mini-connector/agent.toml")
    return None


def install(paths: StatePaths, *, user: str, dry_run: bool) -> int:
    load_config(paths.config)  # a service without a config would only restart in a loop
    exe, config = agent_executable(), str(paths.config.resolve())
    _check_visible(config, "config")
    _check_visible(exe, "program")
    warning = private_tmp_warning(config)
    if warning:
        print(warning, file=sys.stderr)
    unit_path = UNIT_DIR / f"{SERVICE_NAME}.service"
    plan = Plan(unit=unit_text(exec_path=exe, config_path=config, user=user,
                               systemd_version=systemd_version()))  # fmt: skip
    plan.steps = [
        f"create the system user {user!r} if it does not exist",
        f"give {user!r} sole ownership of {paths.folder} (mode 0700)",
        f"write {unit_path}",
        "systemctl daemon-reload; systemctl enable mini-connector; systemctl restart mini-connector",
    ]
    if dry_run:
        print("would do:")
        for s in plan.steps:
            print(f"  - {s}")
        print(f"--- {unit_path}\n{plan.unit}", end="")
        return 0
    if not _is_root():
        raise OpsError("installing the service needs root: run it again with sudo.", EXIT_NEEDS_ADMIN)
    ensure_user(user, paths.folder)
    own_folder(paths.folder, user)
    UNIT_DIR.mkdir(parents=True, exist_ok=True)
    unit_path.write_text(plan.unit, encoding="utf-8")
    unit_path.chmod(0o644)
    print(f"wrote {unit_path} (runs as {user!r}, config {config})")
    if not systemd_running():
        print("systemd is not running on this machine (a container?), so the service was not "
              "enabled or started; run 'mini-connector run' under your own supervisor instead.",
              file=sys.stderr)  # fmt: skip
        return EXIT_NO_SERVICE_MANAGER
    _systemctl("daemon-reload")
    _systemctl("enable", SERVICE_NAME)
    _systemctl("restart", SERVICE_NAME)
    print("service mini-connector enabled and started; see 'systemctl status mini-connector' "
          "and 'mini-connector status'")  # fmt: skip
    return 0


def uninstall(*, dry_run: bool) -> int:
    unit_path = UNIT_DIR / f"{SERVICE_NAME}.service"
    steps = ["systemctl disable --now mini-connector", f"remove {unit_path}", "systemctl daemon-reload"]
    if dry_run:
        print("would do:")
        for s in steps:
            print(f"  - {s}")
        return 0
    if not _is_root():
        raise OpsError("removing the service needs root: run it again with sudo.", EXIT_NEEDS_ADMIN)
    running = systemd_running()
    if running and unit_path.exists():
        _systemctl("disable", "--now", SERVICE_NAME)
    existed = unit_path.exists()
    unit_path.unlink(missing_ok=True)
    if running:
        _systemctl("daemon-reload")
    print(f"{'removed' if existed else 'there was no'} {unit_path}; the config, its keys and the "
          "service user are kept (remove them by hand, or purge the package)")  # fmt: skip
    return 0


def ensure_user(user: str, home: Path) -> None:
    import pwd

    try:
        pwd.getpwnam(user)
        return
    except KeyError:
        pass
    shell = "/usr/sbin/nologin" if Path("/usr/sbin/nologin").exists() else "/bin/false"
    cmd = ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", str(home),
           "--shell", shell, user]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode != 0:
        raise OpsError(f"cannot create the user {user!r}: {done.stderr.strip()[:200]}.", EXIT_SERVICE)


def own_folder(folder: Path, user: str) -> None:
    import pwd

    entry = pwd.getpwnam(user)
    folder.chmod(0o700)
    for root, dirs, files in os.walk(folder):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in [*dirs, *files]:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid, follow_symlinks=False)


def _systemctl(*args: str) -> None:
    try:
        cmd = ["systemctl", *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)  # noqa: S603
    except (OSError, subprocess.SubprocessError) as exc:
        raise OpsError(f"systemctl {' '.join(args)} could not run: {exc}.", EXIT_SERVICE) from exc
    if done.returncode != 0:
        first = (done.stderr or done.stdout).strip().splitlines()[:1]
        raise OpsError(f"systemctl {' '.join(args)} failed: {first[0] if first else done.returncode}.",
                       EXIT_SERVICE)  # fmt: skip


def cmd_service(args: argparse.Namespace, paths: StatePaths) -> int:
    if sys.platform == "win32":
        from . import winservice

        return winservice.cmd_service(args, paths)
    if args.action == "run":
        raise OpsError("'service run' is for the Windows service manager; on Linux systemd runs "
                       "'mini-connector run'.", EXIT_SERVICE)  # fmt: skip
    if not sys.platform.startswith("linux"):
        raise OpsError(f"service install is not supported on {sys.platform}: run "
                       "'mini-connector run' under your own supervisor.", EXIT_SERVICE)  # fmt: skip
    if args.action == "install":
        return install(paths, user=args.user or DEFAULT_USER, dry_run=args.dry_run)
    return uninstall(dry_run=args.dry_run)
