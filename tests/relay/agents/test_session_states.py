"""The relay's agent session lifecycle (relay/agents/session.py SESSION_TRANSITIONS), pure."""

from __future__ import annotations

import itertools

import pytest

from relay.agents import session as s

EVENTS = sorted({e for _, e in s.SESSION_TRANSITIONS})


def _session(state: str) -> s.AgentSession:
    sess = s.AgentSession("con_1", "t", None, "pk", 4, "h", "1", 0.0, 0.0)  # type: ignore[arg-type]
    sess.state = state
    return sess


@pytest.mark.parametrize(("state", "event"), list(itertools.product(s.SESSION_STATES, EVENTS)))
def test_every_pair_is_in_the_table_or_raises(state: str, event: str) -> None:
    sess = _session(state)
    target = s.SESSION_TRANSITIONS.get((state, event))
    if target is None:
        with pytest.raises(s.IllegalSessionStep):
            sess.to(event)
        assert sess.state == state
    else:
        assert sess.to(event) == target == sess.state


def test_only_an_open_session_takes_jobs_and_death_is_final() -> None:
    for state in s.SESSION_STATES:
        sess = _session(state)
        assert sess.takes_jobs == (state == s.OPEN)
        assert sess.draining == (state == s.DRAINING)
        if sess.dead:  # no event brings a dead session back
            for event in EVENTS:
                target = s.SESSION_TRANSITIONS.get((state, event))
                assert target is None or _session(target).dead


def test_a_drained_session_still_ends_and_closes() -> None:
    sess = _session(s.OPEN)
    assert [sess.to(e) for e in ("drain", "drain", "end", "drain", "close", "end", "closed")] == [
        s.DRAINING, s.DRAINING, s.ENDING, s.ENDING, s.CLOSING, s.CLOSING, s.CLOSED,
    ]  # fmt: skip
    assert sess.dead and sess.closing and not sess.takes_jobs


def test_a_session_being_welcomed_takes_no_job_until_welcomed() -> None:
    """Until its welcome is committed (this node written as the owner) a session takes no
    job, and the cluster's renewal leaves it out (relay/agents/cluster.py): the dead
    previous owner's row would otherwise read as a takeover and close it."""
    sess = s.AgentSession("con_1", "t", None, "pk", 4, "h", "1", 0.0, 0.0)  # type: ignore[arg-type]
    assert sess.state == s.WELCOMING and not sess.takes_jobs and not sess.welcomed and not sess.dead
    assert sess.to("welcomed") == s.OPEN and sess.takes_jobs and sess.welcomed
    draining = _session(s.WELCOMING)
    assert [draining.to(e) for e in ("drain", "welcomed")] == [s.DRAINING, s.DRAINING]
    assert not draining.takes_jobs
