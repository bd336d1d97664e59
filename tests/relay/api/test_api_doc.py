"""docs/API.md keeps up with the code (issue 16): every error code the product defines and
every event type the relay publishes is explained there."""

from __future__ import annotations

import re
from pathlib import Path

from relay.web import middleware
from shared import errors

ROOT = Path(__file__).resolve().parents[3]
DOC = (ROOT / "docs" / "API.md").read_text()


def test_every_error_code_is_in_the_api_page() -> None:
    codes = set(errors._CODES) | set(middleware._HTTP_CODES.values())
    missing = sorted(c for c in codes if f"`{c}`" not in DOC)
    assert missing == [], f"docs/API.md does not explain {missing}"


def test_every_event_type_is_in_the_api_page() -> None:
    published = set()
    for path in (ROOT / "relay").rglob("*.py"):
        published |= set(re.findall(r'"(job_[a-z_]+|connector_[a-z_]+)"', path.read_text()))
    published = {e for e in published if e.endswith(("_changed", "_started", "_completed"))}
    assert published >= {"job_started", "job_completed", "connector_status_changed"}
    assert sorted(e for e in published if f'"type": "{e}"' not in DOC) == []
