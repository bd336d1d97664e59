"""The status file: how ``mini-connector status`` learns about a running agent.

The agent opens no listening port, so the running agent writes ``status.json`` beside its
config about once a second (atomically), and ``status`` reads it and checks that the
process that wrote it is still alive.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import orjson
import psutil

STALE_AFTER = 15.0  # seconds without an update: the writer is hung or gone


def write_status(path: Path, data: dict[str, Any]) -> None:
    """Atomically replace the status file (0600: it names sources and the relay)."""
    payload = {**data, "pid": os.getpid(), "updatedAt": time.time()}
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, orjson.dumps(payload, option=orjson.OPT_INDENT_2))
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_status(path: Path, *, now: float | None = None) -> dict[str, Any]:
    """The last status written, with ``running`` saying whether its writer is alive."""
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {"running": False, "state": "not running"}
    if not isinstance(data, dict):
        return {"running": False, "state": "not running"}
    pid = data.get("pid")
    alive = isinstance(pid, int) and pid > 0 and _alive(pid)
    fresh = (now or time.time()) - float(data.get("updatedAt") or 0) < STALE_AFTER
    running = alive and fresh and data.get("linkState") != "closed"
    data["running"] = running
    if not running:
        data["state"] = "not running"
    return data


def _alive(pid: int) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, OSError):
        return False
