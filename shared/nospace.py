"""Is this error a full disk? One answer for the agent's files and the relay's store.

A write that failed for want of space: ``OSError`` ENOSPC, a quota (EDQUOT) or a file
size limit (EFBIG); SQLite's ``SQLITE_FULL`` ("database or disk is full"); PostgreSQL's
SQLSTATE 53100 ``disk_full``; SQLAlchemy's wrapper of any of them (``.orig``).
"""

from __future__ import annotations

import errno

SQLITE_FULL = 13
PG_DISK_FULL = "53100"
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def is_disk_full(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", None) or exc
    if isinstance(orig, OSError):
        return orig.errno in _NO_SPACE
    if getattr(orig, "sqlite_errorcode", None) == SQLITE_FULL or getattr(orig, "pgcode", None) == PG_DISK_FULL:
        return True
    text = str(orig).lower()
    return "database or disk is full" in text or "no space left on device" in text
