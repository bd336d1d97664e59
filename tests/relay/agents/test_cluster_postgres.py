"""Two relay apps in one process on one PostgreSQL store: owner leases and NOTIFY wake-ups."""

from __future__ import annotations

import pytest

from relay.app import create_app
from tests.relay.conftest import Api, FakeAgent, wait_until

pytestmark = pytest.mark.postgres


async def test_a_second_node_keeps_the_first_nodes_agents_online_and_wakes_them(
    aiohttp_client: object, make_config: object, pg_database: str
) -> None:
    """Node B starting leaves node A's connector online; a job submitted and cancelled on
    B reaches the agent on A; a disconnection on A marks it offline for B too."""
    node_a = await aiohttp_client(create_app(make_config(database_url=pg_database)))  # type: ignore[operator]
    api_a = Api(node_a)
    con = await api_a.new_connector()
    agent = await FakeAgent(node_a, con["apiKey"]).connect()
    node_b = await aiohttp_client(create_app(make_config(database_url=pg_database)))  # type: ignore[operator]
    api_b = Api(node_b)
    assert (await api_b.connector(con["id"]))["status"] == "online"
    job_id = await api_b.submit(con["id"], "SELECT 1")
    assign = await agent.expect("job.assign.v1", jobId=job_id)
    await agent.start(assign, ["n"])
    await api_b.call("POST", f"/jobs/{job_id}/cancel", expect=200)
    cancel = await agent.expect("job.cancel.v1", jobId=job_id)
    assert cancel["reason"] == "CANCELLED"
    await agent.close()

    async def offline() -> bool:
        return (await api_b.connector(con["id"]))["status"] == "offline"

    await wait_until(offline, what="offline on node B")


async def test_a_grace_zero_rotation_on_one_node_closes_the_agent_on_another(
    aiohttp_client: object, make_config: object, pg_database: str
) -> None:
    """The agent is on node A, the admin rotates its key with grace 0 through node B: the
    session on A (its key no longer works) is closed 4001 at once, not at A's next sweep."""
    node_a = await aiohttp_client(create_app(make_config(database_url=pg_database)))  # type: ignore[operator]
    con = await Api(node_a).new_connector()
    agent = await FakeAgent(node_a, con["apiKey"]).connect()
    node_b = await aiohttp_client(create_app(make_config(database_url=pg_database)))  # type: ignore[operator]
    await Api(node_b).call("POST", f"/connectors/{con['id']}/rotate-key", json={"gracePeriodSeconds": 0},
                           expect=200)  # fmt: skip
    assert await agent.wait_closed(timeout=2.0) == 4001
