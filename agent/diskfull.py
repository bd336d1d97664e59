"""A full disk under the agent's state folder: said once, never fatal.

Jobs do not need the disk: their rows stream to the relay from memory. What the disk
holds is for after a restart (``spool.db``: finished jobs' unacknowledged results), for
``mini-connector status`` (``status.json``) and the local log. When a write there fails
for want of space (ENOSPC, a quota, SQLite's "database or disk is full"), the agent says
so once per file (a WARNING, which also reaches the relay's copy of its log), carries on
without it, and says once more when writing works again (docs/OPERATIONS.md, "A full disk").
"""

from __future__ import annotations

import logging
import threading

from shared.nospace import is_disk_full

__all__ = ["SaidOnce", "is_disk_full"]


class SaidOnce:
    """One WARNING when a file's writes start failing for want of space, one INFO when
    they work again; nothing in between (a write every second must not flood the log)."""

    def __init__(self, log: logging.Logger, what: str, consequence: str) -> None:
        self.log, self.what, self.consequence = log, what, consequence
        self.failing = False
        self._lock = threading.Lock()

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            if self.failing:
                return
            self.failing = True
        self.log.warning("the disk of the agent's state folder is full: cannot write %s (%s); %s "
                         "until space is freed", self.what, exc, self.consequence)  # fmt: skip

    def worked(self) -> None:
        if not self.failing:  # the usual case: one attribute read
            return
        with self._lock:
            if not self.failing:
                return
            self.failing = False
        self.log.info("%s is written again: there is space on the disk", self.what)
