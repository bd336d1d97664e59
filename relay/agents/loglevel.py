"""A connector's shipped log level, raised by support for a limited time.

``PATCH /connectors/{id}`` with ``{"logLevel": "DEBUG", "logLevelMinutes": 30}`` stores
the level and when it ends on the connector row (so it survives a relay restart), sends
``agent.config.v1`` to the agent if it is connected to this node, and the welcome of every
hello while it lasts carries it. ``LogLevels`` keeps the raised levels of the agents on
this node; the sweeper calls ``expire`` so an agent goes back to INFO when the time is up.
Minutes may be fractional (0.05 = 3 s), which is what tests use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.errors import ValidationError
from shared.protocol import LOG_LEVELS

from ..store import Store
from ..store import logs as log_store

DEFAULT_LEVEL = "INFO"
DEFAULT_MINUTES = 30.0
MAX_MINUTES = 24 * 60.0
FIELDS = frozenset({"logLevel", "logLevelMinutes"})


def parse_patch(body: dict[str, Any]) -> tuple[str, float] | None:
    """(level, minutes) from a PATCH body, None if it does not touch the level.
    ``logLevelMinutes`` defaults to 30 and is ignored when the level is INFO (a reset)."""
    if "logLevel" not in body:
        if "logLevelMinutes" in body:
            raise ValidationError("logLevelMinutes needs logLevel", field="logLevelMinutes")
        return None
    level = body["logLevel"]
    if not isinstance(level, str) or level.upper() not in LOG_LEVELS:
        raise ValidationError("logLevel must be DEBUG, INFO, WARNING, ERROR or CRITICAL", field="logLevel")
    minutes = body.get("logLevelMinutes", DEFAULT_MINUTES)
    if (
        not isinstance(minutes, (int, float))
        or isinstance(minutes, bool)
        or not 0 < minutes <= MAX_MINUTES
    ):
        raise ValidationError(
            f"logLevelMinutes must be a number above 0 and at most {MAX_MINUTES:g}",
            field="logLevelMinutes",
        )
    return level.upper(), float(minutes)


def store_fields(level: str, minutes: float, at: float) -> dict[str, Any]:
    """The connector columns for a level set at ``at`` (INFO clears the raise)."""
    if level == DEFAULT_LEVEL:
        return {"log_level": None, "log_level_until": None}
    return {"log_level": level, "log_level_until": at + minutes * 60.0}


def effective(row: dict[str, Any], at: float) -> tuple[str, float | None]:
    """(level, until) in force for a connector row at ``at``; INFO once the time is up."""
    level, until = row.get("log_level"), row.get("log_level_until")
    if level and until is not None and until > at:
        return level, until
    return DEFAULT_LEVEL, None


@dataclass
class LogLevels:
    """Raised levels of the agents connected to this node, for the expiry sweep."""

    raised: dict[str, tuple[str, float]] = field(default_factory=dict)

    def note(self, connector_id: str, level: str, until: float | None) -> None:
        if until is None or level == DEFAULT_LEVEL:
            self.raised.pop(connector_id, None)
        else:
            self.raised[connector_id] = (level, until)

    def expired(self, at: float) -> list[str]:
        """Connectors whose raise ended by ``at`` (forgotten here; tell their agents INFO)."""
        done = [cid for cid, (_, until) in self.raised.items() if until <= at]
        for cid in done:
            del self.raised[cid]
        return done


async def welcome_fields(
    levels: LogLevels, store: Store, connector: dict[str, Any], at: float
) -> dict[str, Any]:
    """The log fields of ``relay.welcome.v1``: the level in force (noted in ``levels`` for
    the expiry sweep) and ``logsThrough``, the newest line id stored, where the agent's
    catch-up starts."""
    level, until = effective(connector, at)
    levels.note(connector["id"], level, until)
    through = await store.run(log_store.last_line_id, connector["id"])
    return {"logLevel": level, "logsThrough": through}
