"""``mini-connector logs [--follow] [--level L] [-n N] [--json]``: read the local log.

The agent writes JSON lines (``agent.logs``) to ``logs/agent.log`` beside its config,
rotated to ``agent.log.1`` .. ``agent.log.N`` (1 is the newest rotation). This shows the
newest ``N`` lines at or above ``--level`` across the rotations, in time order, in a human
form (``--json``: the stored lines), then with ``--follow`` keeps printing new lines,
reopening the file when the agent rotates it. Reading works while the agent runs.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from ..paths import StatePaths
from .errors import EXIT_NO_LOG, LEVELS, OpsError

FOLLOW_POLL = 0.25
_RANK = {name: i for i, name in enumerate(LEVELS)}
_BLOCK = 64 * 1024
# What a terminal could obey (ESC, BEL, C1 CSI, ...): a log line may carry text from a
# database's error, a job or a damaged file. Tabs are harmless and kept.
_CONTROLS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def shown(text: str) -> str:
    """``text`` with control characters written as escapes (``\\x1b``), never obeyed."""
    return _CONTROLS.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def shown_json(line: str) -> str:
    """A stored line for ``--json``: a control character becomes ``\\u001b``, which in a
    JSON string is the same character (orjson leaves C1 and U+2028 raw), so valid JSON
    stays valid and equal."""
    return _CONTROLS.sub(lambda m: f"\\u{ord(m.group()):04x}", line)


def parse(line: str) -> dict[str, Any] | None:
    """One stored line as a dict, or None when it is not one of ours."""
    try:
        rec = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return rec if isinstance(rec, dict) and "message" in rec else None


def level_ok(rec: dict[str, Any] | None, minimum: str | None) -> bool:
    if minimum is None:
        return True
    if rec is None:
        return False
    return _RANK.get(str(rec.get("level", "INFO")).upper(), 1) >= _RANK[minimum]


def human(rec: dict[str, Any] | None, raw: str) -> str:
    """``2026-11-24 10:00:00.123 INFO    agent.session: message [job_…]``."""
    if rec is None:
        return shown(raw)
    stamp = shown(str(rec.get("timestamp", "")).replace("T", " ").rstrip("Z"))
    # a message's own line breaks are indented, as an exception's: no line can pose as another
    message = "\n    ".join(shown(part) for part in str(rec.get("message", "")).splitlines())
    text = f"{stamp} {shown(str(rec.get('level', ''))):<7} {shown(str(rec.get('logger', '')))}: {message}"
    if rec.get("jobId"):
        text += f" [{shown(str(rec['jobId']))}]"
    if rec.get("exception"):
        text += "".join("\n    " + shown(part) for part in str(rec["exception"]).splitlines())
    return text


def log_files(log_file: Path) -> list[Path]:
    """The log and its rotations, oldest first."""
    rotated = []
    for i in range(1, 100):
        p = log_file.with_name(f"{log_file.name}.{i}")
        if not p.exists():
            break
        rotated.append(p)
    return [*reversed(rotated), *([log_file] if log_file.exists() else [])]


def _reverse_lines(path: Path) -> Iterator[str]:
    """The file's lines, last first, reading blocks from the end."""
    with path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        pos, tail = fh.tell(), b""
        while pos > 0:
            step = min(_BLOCK, pos)
            pos -= step
            fh.seek(pos)
            chunk = fh.read(step) + tail
            lines = chunk.split(b"\n")
            tail = lines.pop(0)
            for raw in reversed(lines):
                if raw.strip():
                    yield raw.decode("utf-8", "replace")
        if tail.strip():
            yield tail.decode("utf-8", "replace")


def newest(files: list[Path], count: int, minimum: str | None) -> list[str]:
    """The newest ``count`` lines at or above ``minimum`` (all when 0), oldest first."""
    if count <= 0:
        out = []
        for f in files:
            with f.open("r", encoding="utf-8", errors="replace") as fh:
                out += [ln.rstrip("\n") for ln in fh if ln.strip() and level_ok(parse(ln), minimum)]
        return out
    picked: deque[str] = deque()
    for f in reversed(files):
        for line in _reverse_lines(f):
            if level_ok(parse(line), minimum):
                picked.appendleft(line)
                if len(picked) >= count:
                    return list(picked)
    return list(picked)


def _emit_lines(data: bytes, emit: Callable[[str], None]) -> bytes:
    """``emit`` each whole line of ``data``; return the unfinished rest."""
    lines = data.split(b"\n")
    for raw in lines[:-1]:
        if raw.strip():
            emit(raw.decode("utf-8", "replace"))
    return lines[-1]


def follow(
    path: Path, emit: Callable[[str], None], *, start_at_end: bool = True,
    should_stop: Callable[[], bool] = lambda: False, poll: float = FOLLOW_POLL,
) -> None:  # fmt: skip
    """Print lines appended to ``path`` until ``should_stop``; survives rotation."""
    fh: IO[bytes] | None = None
    inode: int | None = None
    partial = b""
    first = True
    while not should_stop():
        if fh is None:
            try:
                fh = path.open("rb")
            except FileNotFoundError:
                time.sleep(poll)
                continue
            inode = os.fstat(fh.fileno()).st_ino
            if first and start_at_end:
                fh.seek(0, os.SEEK_END)
            first = False
        data = fh.read()
        if data:
            partial = _emit_lines(partial + data, emit)
            continue
        try:
            st = path.stat()
            rotated = st.st_ino != inode or st.st_size < fh.tell()
        except FileNotFoundError:
            rotated = True
        if rotated:
            # the agent rotated the file: lines it wrote to the old one between the empty
            # read above and the rotation are read now, or they were never shown
            _emit_lines(partial + fh.read(), emit)
            fh.close()
            fh, partial = None, b""
            continue
        time.sleep(poll)
    if fh is not None:
        fh.close()


def cmd_logs(args: argparse.Namespace, paths: StatePaths) -> int:
    minimum: str | None = args.level

    def show(line: str) -> None:
        rec = parse(line)
        if level_ok(rec, minimum):
            sys.stdout.write((shown_json(line) if args.json else human(rec, line)) + "\n")
            sys.stdout.flush()

    files = log_files(paths.log_file)
    if not files and not args.follow:
        raise OpsError(
            f"there is no local log at {paths.log_file} yet: the agent has not run with the "
            f"config {paths.config} (check --config, or start the agent).",
            EXIT_NO_LOG,
        )
    for line in newest(files, args.lines, minimum):
        show(line)
    if args.follow:
        if not files:
            print(f"waiting for {paths.log_file} to appear…", file=sys.stderr, flush=True)
        try:
            follow(paths.log_file, show, start_at_end=bool(files))
        except KeyboardInterrupt:
            pass
    return 0
