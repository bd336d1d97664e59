"""The status file: how ``mini-connector status`` learns about a running agent.

The agent opens no listening port, so the running agent writes ``status.json`` beside its
config about once a second (atomically), and ``status`` reads it and checks that the
process that wrote it is still alive.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import orjson
import psutil

from shared.nospace import is_disk_full

STALE_AFTER = 15.0  # seconds without an update: the writer is hung or gone


def write_status(path: Path, data: dict[str, Any]) -> None:
    """Atomically replace the status file (0600: it names sources and the relay)."""
    payload = {**data, "pid": os.getpid(), "updatedAt": time.time()}
    body = orjson.dumps(payload, option=orjson.OPT_INDENT_2)
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, body)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        if not is_disk_full(exc) or not path.exists():
            raise
        # A full disk has no block for a new file, but the old one's blocks are still
        # ours: rewrite it in place (a reader may meet a half-written file for a moment;
        # ``status`` reads it again then), so status never says a running agent is gone.
        with contextlib.suppress(OSError):
            tmp.unlink()
        fd = os.open(path, os.O_WRONLY)
        try:
            _write_all(fd, body)
            os.ftruncate(fd, len(body))
        finally:
            os.close(fd)


def _write_all(fd: int, body: bytes) -> None:
    view = memoryview(body)
    while view:
        view = view[os.write(fd, view) :]


def read_status(path: Path, *, now: float | None = None) -> dict[str, Any]:
    """The last status written, with ``running`` saying whether its writer is alive."""
    try:
        try:
            data = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError:  # rewritten in place this moment (a full disk): once more
            time.sleep(0.05)
            data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return {"running": False, "state": "not running"}
    except OSError as exc:
        return _unreadable(path, exc.strerror or str(exc))
    except orjson.JSONDecodeError:
        return _unreadable(path, "it is not valid JSON")
    if not isinstance(data, dict):
        return _unreadable(path, "it is not a JSON object")
    pid = data.get("pid")
    updated = data.get("updatedAt", 0)
    if updated is None:
        updated = 0
    if not isinstance(updated, (int, float)) or isinstance(updated, bool) or updated != updated:
        return _unreadable(path, "its updatedAt is not a number")
    alive = isinstance(pid, int) and not isinstance(pid, bool) and 0 < pid < 2**31 and _alive(pid)
    fresh = (now or time.time()) - float(updated) < STALE_AFTER
    running = alive and fresh and data.get("linkState") != "closed"
    data["running"] = running
    if not running:
        data["state"] = "not running"
    return data


def _unreadable(path: Path, why: str) -> dict[str, Any]:
    """A status file that cannot be used: the agent is taken as not running, and why is said."""
    return {"running": False, "state": "not running", "statusProblem": f"the status file {path} is unreadable: {why}"}


def _alive(pid: int) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, OSError):
        return False
