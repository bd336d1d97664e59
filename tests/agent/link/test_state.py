"""The agent's link state table (agent/link/state.py), pure: every pair, and the paths a
session takes, including events that arrive after the link moved on."""

from __future__ import annotations

import itertools

import pytest

from agent.link import state as ls

EVENTS = sorted({e for _, e in ls.TRANSITIONS})


@pytest.mark.parametrize(("state", "event"), list(itertools.product(ls.STATES, EVENTS)))
def test_every_pair_is_in_the_table_or_raises(state: str, event: str) -> None:
    link = ls.LinkState()
    link.state = state
    target = ls.TRANSITIONS.get((state, event))
    if target is None:
        with pytest.raises(ls.IllegalTransition, match=event):
            link.fire(event)
        assert link.state == state
    else:
        assert link.fire(event) == target == link.state


def test_closed_is_final_and_every_state_has_a_public_name() -> None:
    assert all(t == ls.CLOSED for (s, _), t in ls.TRANSITIONS.items() if s == ls.CLOSED)
    assert set(ls.PUBLIC_STATE) == set(ls.STATES)


def test_a_session_fires_every_event_without_asking_first() -> None:
    changes: list[tuple[str, str, str]] = []
    link = ls.LinkState(lambda old, event, new: changes.append((old, event, new)))
    for event in ("hello", "lost", "hello", "welcome", "lost", "hello", "drain", "welcome", "drain", "stop", "stop"):
        link.fire(event)
    assert link.state == ls.CLOSED
    # late events change nothing and are not reported as changes
    assert changes[-2:] == [(ls.HELLO_SENT, "drain", ls.DRAINING), (ls.DRAINING, "stop", ls.CLOSED)]
    assert [c[2] for c in changes[:5]] == [ls.HELLO_SENT, ls.CONNECTING, ls.HELLO_SENT, ls.READY, ls.CONNECTING]
