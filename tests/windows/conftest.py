"""tests/windows run the Windows agent under Wine: ``make windows-check`` (and .ci/run)
sets MC_WINDOWS_CHECK=1; a plain ``make test`` skips them (they need wine, mingw-w64 and
a few minutes, docs/OPERATIONS.md "Windows")."""

from __future__ import annotations

import os
import shutil

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("MC_WINDOWS_CHECK") == "1":
        missing = [t for t in ("wine", "x86_64-w64-mingw32-gcc") if shutil.which(t) is None]
        if missing:
            raise pytest.UsageError(f"MC_WINDOWS_CHECK=1 but {', '.join(missing)} is not installed")
        return
    skip = pytest.mark.skip(reason="the Windows agent under Wine: make windows-check")
    for item in items:
        if "tests/windows/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(skip)
