"""The connector status table (relay/agents/connector_status.py): pure, no database."""

from __future__ import annotations

import pytest

from relay.agents import connector_status as cs


def test_every_status_and_event_is_in_the_vocabulary() -> None:
    for (status, event), new in cs.TRANSITIONS.items():
        assert status in cs.STATUSES and new in cs.STATUSES and event in cs.EVENTS
    assert cs.INITIAL == cs.PENDING


@pytest.mark.parametrize("status", [cs.PENDING, cs.ONLINE, cs.OFFLINE])
def test_a_live_connector_connects_leaves_and_is_revoked(status: str) -> None:
    assert cs.after(status, cs.CONNECT) == cs.ONLINE
    assert cs.after(status, cs.LEAVE) == cs.OFFLINE
    assert cs.after(status, cs.REVOKE) == cs.REVOKED


@pytest.mark.parametrize("event", cs.EVENTS)
def test_revoked_is_final(event: str) -> None:
    with pytest.raises(cs.IllegalTransition) as caught:
        cs.after(cs.REVOKED, event)
    assert (caught.value.status, caught.value.event) == (cs.REVOKED, event)


def test_unknown_status_or_event_raises() -> None:
    with pytest.raises(cs.IllegalTransition):
        cs.after("deleted", cs.CONNECT)
    with pytest.raises(cs.IllegalTransition):
        cs.after(cs.ONLINE, "wake")


def test_from_is_what_a_conditional_update_allows() -> None:
    assert cs.FROM[cs.CONNECT] == {cs.PENDING, cs.ONLINE, cs.OFFLINE}
    assert cs.FROM[cs.REVOKE] == {cs.PENDING, cs.ONLINE, cs.OFFLINE}
    assert cs.REVOKED not in cs.FROM[cs.LEAVE]


def test_changed_is_the_event_data() -> None:
    assert cs.changed("con_1", cs.OFFLINE, None) == {
        "connectorId": "con_1",
        "status": "offline",
        "lastSeen": None,
    }
    assert cs.changed("con_1", cs.ONLINE, 0.0)["lastSeen"].startswith("1970-01-01T00:00:00")
    with pytest.raises(ValueError):
        cs.changed("con_1", "gone", None)
