"""installers/windows/install.ps1, checked statically (no PowerShell here, issue 16).

In a double-quoted PowerShell string, ``$Name:`` is read as a scope- or drive-qualified
variable (``$env:X``, ``$script:X``), so ``"at $Exe: pass"`` does not parse; a variable
followed by a colon must be written ``${Exe}:``. This test finds every ``$word:`` in the
script's double-quoted strings whose ``word`` is not a PowerShell scope or drive."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).resolve().parents[2] / "installers" / "windows").glob("*.ps1"))
SCOPES = {"env", "global", "local", "script", "private", "using", "variable", "function", "alias"}
DOUBLE_QUOTED = re.compile(r'"(?:[^"`]|`.)*"')
QUALIFIED = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*):")


def bad_references(text: str) -> list[str]:
    found = []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        for literal in DOUBLE_QUOTED.findall(line):
            found += [m.group(0) for m in QUALIFIED.finditer(literal) if m.group(1).lower() not in SCOPES]
    return found


def test_the_check_finds_what_it_is_for() -> None:
    assert bad_references('throw "not found at $Exe: pass -Exe PATH"') == ["$Exe:"]
    assert bad_references('throw "not found at ${Exe}: pass"; $x = "$env:ProgramData"') == []


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_no_variable_reads_as_scope_qualified(script: Path) -> None:
    assert bad_references(script.read_text(encoding="utf-8-sig")) == []
