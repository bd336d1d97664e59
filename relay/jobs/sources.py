"""Whether a connector serves a source: the check a job's ``source`` meets at submission
(the relay knows the sources each connector's agent reported at its hello)."""

from __future__ import annotations

import orjson

from shared.errors import MCError


class SourceNotFound(MCError):
    """A job names a source its connector has reported it does not have: 422 at submit
    (the same code an agent reports on a job, there as a job error)."""

    code = "SOURCE_NOT_FOUND"

    @property
    def status(self) -> int:
        return 422


def check_source(sources_json: str, source: str) -> None:
    """Refuse ``source`` if the connector reported sources (its last hello) and it is not
    one of them. A connector that reported none (never connected, or an agent with no
    sources configured yet) is not checked: its agent answers for itself."""
    if sources_json in ("", "[]"):
        return
    try:
        reported = orjson.loads(sources_json)
        names = {s["name"] for s in reported if isinstance(s, dict) and isinstance(s.get("name"), str)}
    except (orjson.JSONDecodeError, TypeError):
        return
    if names and source not in names:
        shown = sorted(names)[:20]
        raise SourceNotFound(
            f"the connector has no source named {source[:100]!r} (it reported: {', '.join(shown)})",
            details={"field": "source", "sources": shown},
        )
