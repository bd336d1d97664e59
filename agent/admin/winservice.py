"""The agent as a Windows service (pywin32): ``mini-connector service install|uninstall|run``.

``install`` registers the service ``MiniConnector`` (automatic start, LocalSystem, restart
on failure) whose command line is this program with ``--config <path> service run``;
the service manager then starts ``service run``, which hands the process to
``servicemanager`` and runs the agent in it until the manager says stop. Stopping cancels
the agent's session: jobs in flight are redelivered by the relay after their lease, so
no row is lost or doubled.

Windows only. pywin32 is a Windows-only dependency; on other systems this module still
imports (``AVAILABLE`` is False) and every command says Windows is needed. It has not
been run here: this project is built and tested on Linux (see docs/OPERATIONS.md).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
from pathlib import Path
from typing import Any

from ..paths import StatePaths
from .errors import EXIT_NEEDS_ADMIN, EXIT_SERVICE, OpsError

SERVICE_NAME = "MiniConnector"
DISPLAY_NAME = "Mini Connector agent"
DESCRIPTION = "Runs read-only jobs for the Mini Connector relay over one outbound connection."

try:  # pragma: no cover - Windows only
    import servicemanager
    import win32event
    import win32service
    import win32serviceutil

    AVAILABLE = True
except ImportError:
    AVAILABLE = False


def _require() -> None:
    if not AVAILABLE:
        raise OpsError("the Windows service needs Windows and pywin32 (pip install pywin32).",
                       EXIT_SERVICE)  # fmt: skip


def service_command_line(exe: str, config: Path, *, frozen: bool = True, python: str = "") -> tuple[str, str]:
    """(program, arguments) the service manager runs: pure, so it can be checked anywhere.
    ``exe`` is what started this process (``sys.argv[0]``, or the one-file build). When it
    is not a Windows program (``python -m agent.cli`` gives a .py path there, which the
    service manager cannot start) the service runs ``python -m agent.cli`` instead."""
    if frozen or exe.lower().endswith(".exe"):
        return exe, f'--config "{config}" service run'
    return python, f'-m agent.cli --config "{config}" service run'


class _AgentThread(threading.Thread):
    """Runs ``run_agent`` in its own event loop; ``stop()`` cancels it from any thread."""

    def __init__(self, config: Path) -> None:
        super().__init__(name="mini-connector-agent", daemon=True)
        self.config = config
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[Any] | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        import logging

        from ..app import run_agent
        from ..config import load_config
        from ..logs import setup_logging

        paths = StatePaths(self.config)
        try:
            cfg = load_config(paths.config)
            ship = setup_logging(paths.log_file, level=logging.INFO, stderr=False)
            self.loop = asyncio.new_event_loop()
            self.task = self.loop.create_task(run_agent(cfg, paths, ship=ship))
            self.loop.run_until_complete(self.task)
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # noqa: BLE001 - reported to the service manager's event log
            self.error = exc
        finally:
            if self.loop is not None:
                self.loop.close()

    def stop(self) -> None:
        if self.loop is not None and self.task is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.task.cancel)


if AVAILABLE:  # pragma: no cover - Windows only

    class MiniConnectorService(win32serviceutil.ServiceFramework):
        _svc_name_ = SERVICE_NAME
        _svc_display_name_ = DISPLAY_NAME
        _svc_description_ = DESCRIPTION
        config_path: Path = Path()

        def __init__(self, args: Any) -> None:
            super().__init__(args)
            self.stop_event = win32event.CreateEvent(None, 0, 0, None)
            self.agent = _AgentThread(self.config_path)

        def SvcStop(self) -> None:
            self.ReportServiceStatus(win32service.SERVICE_STOP_PENDING)
            self.agent.stop()
            win32event.SetEvent(self.stop_event)

        def SvcDoRun(self) -> None:
            servicemanager.LogInfoMsg(f"{SERVICE_NAME}: starting, config {self.config_path}")
            self.agent.start()
            while self.agent.is_alive():
                if win32event.WaitForSingleObject(self.stop_event, 1000) == win32event.WAIT_OBJECT_0:
                    break
            self.agent.join(timeout=40)
            if self.agent.error is not None:
                servicemanager.LogErrorMsg(f"{SERVICE_NAME}: stopped on an error: {self.agent.error}")


def install(paths: StatePaths, *, dry_run: bool) -> int:
    frozen = bool(getattr(sys, "frozen", False))
    exe = sys.executable if frozen else str(Path(sys.argv[0]).resolve())
    program, arguments = service_command_line(exe, paths.config, frozen=frozen, python=sys.executable)
    if dry_run:
        print(f"would register the service {SERVICE_NAME} (automatic start, LocalSystem, "
              f"restart on failure): {program} {arguments}")  # fmt: skip
        return 0
    _require()
    from ..config import load_config

    load_config(paths.config)
    try:  # pragma: no cover - Windows only
        win32serviceutil.InstallService(
            None, SERVICE_NAME, DISPLAY_NAME, startType=win32service.SERVICE_AUTO_START,
            exeName=program, exeArgs=arguments, description=DESCRIPTION,
        )  # fmt: skip
        # restart after 5 s, 30 s, then every 60 s; reset the count after a quiet day
        import subprocess

        sc = ["sc.exe", "failure", SERVICE_NAME, "reset=", "86400",
              "actions=", "restart/5000/restart/30000/restart/60000"]  # fmt: skip
        subprocess.run(sc, check=False)  # noqa: S603
        _start_when_unlocked(SERVICE_NAME)
    except Exception as exc:
        code = EXIT_NEEDS_ADMIN if getattr(exc, "winerror", 0) == 5 else EXIT_SERVICE
        raise OpsError(f"cannot install the service {SERVICE_NAME}: {exc}.", code) from exc
    print(f"service {SERVICE_NAME} installed and started")
    return 0


# Answers to a StartService just after CreateService that mean "not yet": the manager is
# busy (ERROR_SERVICE_DATABASE_LOCKED), or has not published the new service yet
# (ERROR_SERVICE_DOES_NOT_EXIST; Wine's manager lags by a few seconds, Windows' does not).
NOT_YET = frozenset({1055, 1060})


def _start_when_unlocked(name: str, seconds: float = 30.0) -> None:  # pragma: no cover - Windows only
    """StartService, again while the manager answers ``NOT_YET`` (seen under Wine just
    after CreateService and a failure-actions change), for up to ``seconds``."""
    from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_fixed

    not_yet = retry_if_exception(lambda exc: getattr(exc, "winerror", 0) in NOT_YET)
    for attempt in Retrying(retry=not_yet, stop=stop_after_delay(seconds), wait=wait_fixed(0.5), reraise=True):
        with attempt:
            win32serviceutil.StartService(name)


def uninstall(paths: StatePaths, *, dry_run: bool) -> int:
    if dry_run:
        print(f"would stop and remove the service {SERVICE_NAME}")
        return 0
    _require()
    try:  # pragma: no cover - Windows only
        try:
            win32serviceutil.StopService(SERVICE_NAME)
        except Exception:  # noqa: BLE001, S110 - already stopped is fine
            pass
        win32serviceutil.RemoveService(SERVICE_NAME)
    except Exception as exc:
        code = EXIT_NEEDS_ADMIN if getattr(exc, "winerror", 0) == 5 else EXIT_SERVICE
        raise OpsError(f"cannot remove the service {SERVICE_NAME}: {exc}.", code) from exc
    print(f"service {SERVICE_NAME} removed; the config and keys in {paths.folder} are kept")
    return 0


def run_as_service(config: Path) -> int:  # pragma: no cover - Windows only
    """What the service manager starts: hand the process to servicemanager."""
    _require()
    MiniConnectorService.config_path = config
    servicemanager.Initialize()
    servicemanager.PrepareToHostSingle(MiniConnectorService)
    servicemanager.StartServiceCtrlDispatcher()
    return 0


def cmd_service(args: argparse.Namespace, paths: StatePaths) -> int:
    if args.action == "install":
        return install(paths, dry_run=args.dry_run)
    if args.action == "uninstall":
        return uninstall(paths, dry_run=args.dry_run)
    return run_as_service(paths.config)
