"""Windows-only file protection: restrict a secret file to SYSTEM and Administrators.

POSIX gets 0600 from ``shared.crypto.write_secret_file``; Windows ignores mode bits, so
secret files get an ACL instead, set with ``icacls`` (part of every Windows install).
Importable everywhere; on other systems every function does nothing.
"""

from __future__ import annotations

import ntpath
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

IS_WINDOWS = os.name == "nt"


def restrict_to_owner(path: Path) -> bool:
    """Give only SYSTEM, Administrators and the current user access to ``path``.

    Returns True when an ACL was applied, False when there is nothing to do (not Windows)
    or ``icacls`` failed (the caller decides whether that matters).
    """
    if not IS_WINDOWS:
        return False
    cmd = icacls_argv(path, os.environ.get("USERNAME", ""))
    try:
        subprocess.run(cmd, check=True, capture_output=True, timeout=30)  # noqa: S603
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def icacls_path(env: Mapping[str, str] = os.environ) -> str:
    """``icacls.exe`` in System32, by full path: a bare name would be looked up on PATH
    (and in the current folder first), where anyone who can write a folder could plant one."""
    root = env.get("SystemRoot") or env.get("SYSTEMROOT") or r"C:\Windows"
    return ntpath.join(root, "system32", "icacls.exe")


def icacls_argv(path: Path, user: str) -> list[str]:
    """The ``icacls`` command: inheritance removed, full control to SYSTEM, Administrators
    (by SID: locale-proof) and ``user`` (the account the agent runs as) only."""
    grants = ["*S-1-5-18:F", "*S-1-5-32-544:F"]
    if user:
        grants.append(f"{user}:F")
    cmd = [icacls_path(), str(path), "/inheritance:r"]
    for g in grants:
        cmd += ["/grant:r", g]
    return cmd
