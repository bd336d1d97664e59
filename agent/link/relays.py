"""Several relay URLs: which one the agent dials, and moving on when one fails.

An agent may be configured with several relay nodes (``configure --relay-url URL1
--relay-url URL2``, or one comma-separated value) or with one load-balanced URL. The
session dials the current one; when a connection fails or ends it moves to the next, so
a dead node costs one failed dial (refused at once, or ``open_timeout``) plus the usual
jittered reconnect delay. The reconnect backoff grows only after a whole round of URLs
has failed. ``mini-connector status`` shows the current one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..config import InvalidInput


def split_urls(values: Iterable[str]) -> list[str]:
    """``--relay-url`` values (repeated, or comma-separated) as one list, in order, once each."""
    out: list[str] = []
    for value in values:
        for part in value.split(","):
            url = part.strip()
            if url and url not in out:
                out.append(url)
    if not out:
        raise InvalidInput("--relay-url needs at least one URL")
    return out


@dataclass
class Endpoint:
    shown: str  # the URL as configured (for status and logs)
    url: str  # the WebSocket URL dialled
    options: dict[str, Any] = field(default_factory=dict)  # connect() keyword arguments


class RelayChoice:
    """The configured relays, in order, and the one being used."""

    def __init__(self, endpoints: list[Endpoint]) -> None:
        if not endpoints:
            raise ValueError("at least one relay endpoint")
        self.endpoints = endpoints
        self.index = 0

    @property
    def current(self) -> Endpoint:
        return self.endpoints[self.index]

    def advance(self) -> bool:
        """Move to the next relay; True when that starts a new round (back at the first)."""
        self.index = (self.index + 1) % len(self.endpoints)
        return self.index == 0

    def __len__(self) -> int:
        return len(self.endpoints)
