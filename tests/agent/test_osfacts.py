"""The agent asks the system what it is without the ``platform`` module (agent/osfacts.py):
on Windows that module goes through WMI, slow there and fatal under Wine 8."""

from __future__ import annotations

import ast
import platform
from pathlib import Path

from agent import osfacts

ROOT = Path(__file__).resolve().parents[2]


def test_no_agent_module_imports_platform() -> None:
    users = []
    for path in [*(ROOT / "agent").rglob("*.py"), *(ROOT / "shared").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])  # fmt: skip
            if "platform" in names:
                users.append(str(path.relative_to(ROOT)))
    assert users == []


def test_facts_agree_with_the_platform_module_here() -> None:
    """On Linux both read uname: the same answers, without WMI's cost elsewhere."""
    facts = osfacts.facts()
    assert (facts["system"], facts["release"], facts["machine"]) == (
        platform.system(), platform.release(), platform.machine())  # fmt: skip
    assert osfacts.os_name() == "linux" and not osfacts.is_windows()
