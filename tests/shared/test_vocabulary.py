"""One definition of each shared vocabulary (issue 15): log levels and close codes live
in shared/protocol.py; relay/ and agent/ import them instead of spelling them again."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from shared import protocol

ROOT = Path(__file__).resolve().parents[2]
SPELLED_OUT = [
    re.compile(r'"DEBUG",\s*"INFO",\s*"WARNING",\s*"ERROR",\s*"CRITICAL"'),  # the level list
    re.compile(r'"DEBUG":\s*10'),  # the level numbers
    re.compile(r"^CLOSE_\w+\s*=\s*4\d{3}\b", re.MULTILINE),  # a close code by number
]


def test_log_levels_are_pythons() -> None:
    assert protocol.LOG_LEVELS == tuple(protocol.LOG_LEVEL_NUMBERS)
    for name, number in protocol.LOG_LEVEL_NUMBERS.items():
        assert logging.getLevelName(number) == name


def test_no_copy_of_the_vocabulary_in_relay_or_agent() -> None:
    copies = [
        f"{path.relative_to(ROOT)}: {pattern.pattern}"
        for package in ("relay", "agent")
        for path in sorted((ROOT / package).rglob("*.py"))
        for pattern in SPELLED_OUT
        if pattern.search(path.read_text())
    ]
    assert copies == []
