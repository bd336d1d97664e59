"""A connector's status, as the relay sets it: one transition table.

Every status the relay writes comes from ``after(status, event)``; an event with no
entry for the current status is a bug and raises ``IllegalTransition`` (the h11 habit:
the table is the documentation, and it is tested without a database).

    (registered) -> pending
    pending/offline/online --connect--> online   (a welcome; online again: a reconnect
                                                  that replaced the session, here or on
                                                  another relay node)
    pending/offline/online --leave--> offline    (the agent's socket closed, it went
                                                  silent, its owner node died, a restart)
    pending/offline/online --revoke--> revoked   (final: nothing moves a revoked one)

The store writes these conditionally (``UPDATE ... WHERE status ...``), so two relay
nodes never undo each other; ``FROM[event]`` is the statuses such a condition allows and
``TO[event]`` the status it writes (relay/store/owners.py and connectors.py write nothing
else).
``changed`` is the ``connector_status_changed`` event's data.
"""

from __future__ import annotations

from typing import Any, Final

from ..ids_and_times import iso

PENDING: Final = "pending"  # registered; its agent never connected
ONLINE: Final = "online"
OFFLINE: Final = "offline"
REVOKED: Final = "revoked"
STATUSES: Final = (PENDING, ONLINE, OFFLINE, REVOKED)
INITIAL: Final = PENDING

CONNECT: Final = "connect"
LEAVE: Final = "leave"
REVOKE: Final = "revoke"
EVENTS: Final = (CONNECT, LEAVE, REVOKE)

TRANSITIONS: Final[dict[tuple[str, str], str]] = {
    (PENDING, CONNECT): ONLINE,
    (OFFLINE, CONNECT): ONLINE,
    (ONLINE, CONNECT): ONLINE,
    (PENDING, LEAVE): OFFLINE,  # a welcome that failed before its write
    (ONLINE, LEAVE): OFFLINE,
    (OFFLINE, LEAVE): OFFLINE,  # marked offline by another node (its owner died) first
    (PENDING, REVOKE): REVOKED,
    (ONLINE, REVOKE): REVOKED,
    (OFFLINE, REVOKE): REVOKED,
}

# event -> the statuses it may start from (what a conditional UPDATE's WHERE allows)
FROM: Final[dict[str, frozenset[str]]] = {
    event: frozenset(s for (s, e) in TRANSITIONS if e == event) for event in EVENTS
}

# event -> the one status it leads to, from every status it may start from
TO: Final[dict[str, str]] = {event: after_all for event in EVENTS
                             for after_all in {TRANSITIONS[(s, event)] for s in FROM[event]}}
assert all(len({TRANSITIONS[(s, e)] for s in FROM[e]}) == 1 for e in EVENTS)


class IllegalTransition(RuntimeError):
    """An event the table has no entry for in the connector's current status."""

    def __init__(self, status: str, event: str) -> None:
        super().__init__(f"a connector that is {status!r} cannot {event!r}")
        self.status, self.event = status, event


def after(status: str, event: str) -> str:
    """The status a connector in ``status`` has after ``event``."""
    new = TRANSITIONS.get((status, event))
    if new is None:
        raise IllegalTransition(status, event)
    return new


def changed(connector_id: str, status: str, last_seen: float | None) -> dict[str, Any]:
    """The data of a ``connector_status_changed`` event."""
    if status not in STATUSES:
        raise ValueError(f"{status!r} is not a connector status")
    return {"connectorId": connector_id, "status": status, "lastSeen": iso(last_seen)}
