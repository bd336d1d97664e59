"""How an admin command fails: one sentence (``OpsError``) and an exit code distinct from
``agent.cli``'s 1-7. The command modules raise these; ``opscli`` turns them into output."""

from __future__ import annotations

from shared.protocol import LOG_LEVELS

EXIT_REPLACED = 7  # run: another agent took over this connector's session (the unit does not restart it)
EXIT_CHECK_FAILED = 8  # diagnose: at least one check failed
EXIT_NO_LOG = 9  # logs: there is no local log to read
EXIT_SERVICE = 10  # service: the service manager refused or failed
EXIT_NEEDS_ADMIN = 11  # service: needs root / Administrator
EXIT_NO_SERVICE_MANAGER = 12  # service: unit written, but systemd is not running here
EXIT_BUNDLE = 13  # diagnose --bundle: the zip could not be written

LEVELS = LOG_LEVELS


class OpsError(Exception):
    """A failure an admin can act on: one sentence and an exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.message, self.code = message, code
