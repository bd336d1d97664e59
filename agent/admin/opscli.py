"""The admin commands of ``mini-connector``: ``diagnose``, ``logs`` and ``service``.

``agent.cli`` registers them with ``add_ops_commands`` and hands them to ``run_ops_command``;
the work itself lives in ``diagnose``, ``bundle``, ``logview`` and ``service``. Each failure
is one sentence on stderr and one of the exit codes below (distinct from ``agent.cli``'s
1-7), raised as ``OpsError`` by the modules and turned into output here.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from ..paths import StatePaths
from .errors import LEVELS, OpsError

OPS_COMMANDS = ("diagnose", "logs", "service")


def add_ops_commands(
    sub: Any, config_option: Callable[[argparse.ArgumentParser], None]
) -> None:
    """Register ``diagnose``, ``logs`` and ``service`` on the CLI's subparsers."""
    p = sub.add_parser("diagnose", help="check DNS, TCP, proxy, TLS, the API key and the clock")
    config_option(p)
    p.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    p.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                   help="time allowed for each network check (default 5)")  # fmt: skip
    p.add_argument("--bundle", metavar="FILE.zip",
                   help="also write a support bundle (logs, config without secrets, facts)")  # fmt: skip

    p = sub.add_parser("logs", help="show the agent's local log")
    config_option(p)
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.add_argument("--level", type=str.upper, choices=LEVELS, help="this level and above")
    p.add_argument("-n", "--lines", type=int, default=100, metavar="N",
                   help="how many of the newest lines to show first (0: all; default 100)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the JSON lines as stored")

    p = sub.add_parser("service", help="install or uninstall the system service")
    config_option(p)
    p.add_argument("action", choices=("install", "uninstall", "run"),
                   help="install or uninstall ('run' is what the Windows service manager calls)")  # fmt: skip
    p.add_argument("--user", default=None, metavar="NAME",
                   help="the account the service runs as (Linux; default mini-connector)")  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="print what would be done, change nothing")


def run_ops_command(args: argparse.Namespace, paths: StatePaths) -> int:
    """Run one admin command; an ``OpsError`` becomes its sentence and exit code."""
    try:
        if args.command == "diagnose":
            from .diagnose import cmd_diagnose

            return cmd_diagnose(args, paths)
        if args.command == "logs":
            from .logview import cmd_logs

            return cmd_logs(args, paths)
        from .service import cmd_service

        return cmd_service(args, paths)
    except OpsError as exc:
        print(f"mini-connector: {exc.message}", file=sys.stderr)
        return exc.code
