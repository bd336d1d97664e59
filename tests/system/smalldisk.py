"""A small disk for the disk-full tests: a tmpfs mounted on a temp folder, filled by a file.

``small_disk(folder, size)`` mounts a tmpfs of ``size`` bytes there (root only: the
tests skip where mounting is not permitted) and unmounts it afterwards; ``fill(disk)``
writes a filler file until the disk is full (ENOSPC, as on a real full disk, unlike a
file-size rlimit), and ``free(disk)`` deletes it: space comes back without a restart.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

FILLER = "filler.bin"


class MountRefused(RuntimeError):
    """Mounting a tmpfs is not permitted here (not root, or in a restricted container)."""


@contextlib.contextmanager
def small_disk(folder: Path, size: int) -> Iterator[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(folder)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        raise MountRefused(done.stderr.strip() or f"mount exited {done.returncode}")
    try:
        yield folder
    finally:
        # The processes writing there are stopped by now; lazily, should one linger.
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)


def fill(disk: Path, leave: int = 0) -> int:
    """Write a filler file until the disk is full (or ``leave`` bytes are left); its size."""
    block, written = b"\0" * 65536, 0
    fd = os.open(disk / FILLER, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while (room := free_bytes(disk) - leave) > 0:
            try:
                written += os.write(fd, block[: min(len(block), room)])
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    finally:
        os.close(fd)
    return written


def free(disk: Path) -> None:
    """Space comes back: the filler file is deleted."""
    (disk / FILLER).unlink(missing_ok=True)


def free_bytes(disk: Path) -> int:
    st = os.statvfs(disk)
    return st.f_bavail * st.f_frsize
