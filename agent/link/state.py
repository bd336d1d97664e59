"""The life of the agent's link to the relay, as one transition table.

Everything that changes the link's state goes through ``LinkState.fire``; an event with no
entry for the current state is a bug and raises ``IllegalTransition`` with both names
(the h11 habit: the machine can be read, drawn and tested at a glance).

    connecting --hello--> hello_sent --welcome--> ready
    hello_sent/ready --lost--> connecting            (the reconnect loop takes over)
    connecting/hello_sent/ready --drain--> draining  (SIGTERM: finish jobs, take no more)
    draining --lost/idle--> closed
    any but closed --terminal/stop--> closed         (4010 SESSION_REPLACED, second signal)

An event that arrives after the link has moved on (a welcome read while SIGTERM was
already draining, a second stop) is in the table too and leaves the state as it is, so
the session fires every event where it happens and never asks first; only a pair
missing from the table raises.
"""

from __future__ import annotations

from collections.abc import Callable

CONNECTING = "connecting"
HELLO_SENT = "hello_sent"
READY = "ready"
DRAINING = "draining"
CLOSED = "closed"
STATES = (CONNECTING, HELLO_SENT, READY, DRAINING, CLOSED)

TRANSITIONS: dict[tuple[str, str], str] = {
    (CONNECTING, "hello"): HELLO_SENT,
    (HELLO_SENT, "welcome"): READY,
    (HELLO_SENT, "lost"): CONNECTING,
    (READY, "lost"): CONNECTING,
    (CONNECTING, "lost"): CONNECTING,  # a failed attempt: still connecting
    (CONNECTING, "drain"): DRAINING,
    (HELLO_SENT, "drain"): DRAINING,
    (READY, "drain"): DRAINING,
    (DRAINING, "lost"): CLOSED,
    (DRAINING, "idle"): CLOSED,
    (DRAINING, "drain"): DRAINING,
    # late events: the link already moved on; nothing changes
    (DRAINING, "hello"): DRAINING,
    (DRAINING, "welcome"): DRAINING,
    (CLOSED, "hello"): CLOSED,
    (CLOSED, "welcome"): CLOSED,
    (CLOSED, "drain"): CLOSED,
    (CLOSED, "stop"): CLOSED,
}
for _state in (CONNECTING, HELLO_SENT, READY, DRAINING):
    TRANSITIONS[(_state, "terminal")] = CLOSED
    TRANSITIONS[(_state, "stop")] = CLOSED

# What `mini-connector status` shows for each state.
PUBLIC_STATE = {
    CONNECTING: "connecting",
    HELLO_SENT: "connecting",
    READY: "connected",
    DRAINING: "draining",
    CLOSED: "disconnected",
}


class IllegalTransition(RuntimeError):
    pass


class LinkState:
    def __init__(self, on_change: Callable[[str, str, str], None] | None = None) -> None:
        self.state = CONNECTING
        self._on_change = on_change

    def fire(self, event: str) -> str:
        new = TRANSITIONS.get((self.state, event))
        if new is None:
            raise IllegalTransition(f"event {event!r} is not allowed in state {self.state!r}")
        old, self.state = self.state, new
        if old != new and self._on_change is not None:
            self._on_change(old, event, new)
        return new

    @property
    def public(self) -> str:
        return PUBLIC_STATE[self.state]
