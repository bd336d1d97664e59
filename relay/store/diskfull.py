"""A full disk under the store: said once, answered as 503, survived, and left when space is back.

A write that fails because the store's disk is full (SQLite's ``SQLITE_FULL``, "database
or disk is full"; PostgreSQL's SQLSTATE 53100 ``disk_full``) raises ``StoreFull``: a
``SERVICE_UNAVAILABLE`` (503, retryable), so an API call gets the contract's envelope and
no stack, and an agent's chunk ends its attempt with that code (relay/agents/messages.py).

On SQLite the relay keeps a **reserve** beside the database (``relay.db.reserve``, 4 MiB
of zeros written at start). The first disk-full error deletes it and puts the store in
*full mode*: the space it frees lets the small writes that keep the relay's word go
through (a job ending failed, heartbeats, leases, cancels), while the writes that fill a
disk are refused before they are tried: result chunks, new jobs (``POST /jobs``: 503) and
agents' log lines (dropped: the agent sends them again at its next connection). One ERROR
line says so. Full mode ends by itself once the disk has room for the reserve again
(checked at most once a second, when asked): the reserve is written back, one line says
space is back, and everything works as before. Nothing already stored is touched.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path

from shared.errors import MCError
from shared.nospace import is_disk_full

log = logging.getLogger("relay.store")
__all__ = ["DiskGuard", "StoreFull", "is_disk_full", "sqlite_path"]

RESERVE_BYTES = 4 << 20
RECHECK_SECONDS = 1.0
SAY_EVERY = 60.0  # at most one "disk is full" line a minute, however often it fills again


class StoreFull(MCError):
    """The store's disk is full: nothing more can be written until space is freed."""

    code = "SERVICE_UNAVAILABLE"

    def __init__(self, message: str = "the relay's store is out of disk space; try again later") -> None:
        super().__init__(message, details={"reason": "STORE_FULL"})


class DiskGuard:
    """Full mode and the reserve of one store (the reserve on SQLite only: ``path`` None
    for PostgreSQL, whose server owns its disk)."""

    def __init__(self, db_path: Path | None, reserve_bytes: int = RESERVE_BYTES) -> None:
        self.db_path = db_path
        self.reserve = db_path.with_name(db_path.name + ".reserve") if db_path else None
        self.reserve_bytes = reserve_bytes
        self._full = False
        self._checked = 0.0
        self._said = -SAY_EVERY
        self._announced = False  # the last entry was logged: its end will be too

    def start(self) -> None:
        """Write the reserve (best effort: a disk already full has none to keep; in full
        mode, its space is for the writes that end jobs)."""
        if self.reserve is not None and not self._full and not self.reserve.exists():
            self._write_reserve()

    @property
    def full(self) -> bool:
        """In full mode? Leaves it when the disk has room again (looked at once a second)."""
        if self._full and time.monotonic() - self._checked >= RECHECK_SECONDS:
            self._checked = time.monotonic()
            if self._room() >= 2 * self.reserve_bytes and self._write_reserve():
                self._full = False
                if self._announced:
                    self._announced = False
                    log.warning("space is back on the store's disk (%s): taking new jobs, results "
                                "and agent logs again", self._where())  # fmt: skip
        return self._full

    def noticed(self) -> StoreFull:
        """A write failed for want of space: enter full mode (said once), free the reserve."""
        if not self._full:
            self._full = True
            self._checked = time.monotonic()
            freed = self._release()
            if time.monotonic() - self._said < SAY_EVERY:
                return StoreFull()
            self._said, self._announced = time.monotonic(), True
            log.error(
                "the store's disk is full (%s): new jobs are refused with 503 SERVICE_UNAVAILABLE, "
                "results cannot be stored (their jobs fail) and agents' log lines are dropped until "
                "space is freed%s", self._where(),
                f"; released the {freed // 1024} KiB reserve so running jobs can still end" if freed else "",
            )  # fmt: skip
        return StoreFull()

    def reserve_kept(self) -> bool:
        return self.reserve is not None and self.reserve.exists()

    def short_of_room(self) -> bool:
        """Less room on the disk than the reserve holds (a failure there is likely for want
        of space, whatever SQLite called it)."""
        return self.db_path is not None and self._room() < self.reserve_bytes

    def refuse(self, what: str) -> None:
        """Raise ``StoreFull`` for ``what`` while in full mode."""
        if self.full:
            raise StoreFull(f"the relay's store is out of disk space: {what}; try again once space is freed")

    def _where(self) -> str:
        if self.db_path is None:
            return "the PostgreSQL server's"
        return f"{self.db_path}, {self._room() // 1024} KiB free"

    def _room(self) -> int:
        if self.db_path is None:
            return 2 * self.reserve_bytes  # PostgreSQL: try again; the next failure says
        try:
            st = os.statvfs(self.db_path.parent)
        except OSError:
            return 0
        return st.f_bavail * st.f_frsize

    def _release(self) -> int:
        if self.reserve is None:
            return 0
        try:
            size = self.reserve.stat().st_size
            self.reserve.unlink()
        except OSError:
            return 0
        return size

    def _write_reserve(self) -> bool:
        if self.reserve is None:
            return True
        try:
            fd = os.open(self.reserve, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                try:  # blocks really taken (zeros written may be compressed away)
                    fallocate = getattr(os, "posix_fallocate", None)  # not on macOS or Windows
                    if fallocate is None:
                        raise OSError(errno.EOPNOTSUPP, "no posix_fallocate")
                    fallocate(fd, 0, self.reserve_bytes)
                except OSError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                        raise
                    block = b"\0" * 65536
                    for _ in range(self.reserve_bytes // len(block)):
                        os.write(fd, block)
                os.fsync(fd)
            finally:
                os.close(fd)
            return True
        except OSError:
            try:
                self.reserve.unlink()
            except OSError:
                pass
            return False


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL (None in memory or for another dialect)."""
    if not url.startswith("sqlite") or "///" not in url:
        return None
    path = url.split("///", 1)[1].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None

