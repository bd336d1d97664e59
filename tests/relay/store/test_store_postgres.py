"""The same relay, end to end, on PostgreSQL: migrations, a job, its results."""

from __future__ import annotations

import json

import pytest

from relay.app import create_app
from tests.relay.conftest import Api, FakeAgent


@pytest.mark.postgres
async def test_relay_runs_a_job_on_postgres(aiohttp_client: object, make_config: object, pg_database: str) -> None:
    """On a PostgreSQL store the relay migrates, registers, dispatches and serves results."""
    client = await aiohttp_client(create_app(make_config(database_url=pg_database)))
    api = Api(client)
    con = await api.new_connector()
    agent = await FakeAgent(client, con["apiKey"]).connect()
    job_id = await api.submit(con["id"], "SELECT 1", jobKey="pg-1")
    assign = await agent.expect("job.assign.v1", jobId=job_id)
    await agent.start(assign, ["n"])
    await agent.chunk(assign, 0, [[1], [2]])
    await agent.chunk(assign, 1, [[3]])
    await agent.done(assign, 2, 3)
    _, body, _ = await api.call("GET", f"/jobs/{job_id}/results?offset=1", expect=200)
    assert [json.loads(x)["n"] for x in body.splitlines()] == [2, 3]
    await agent.send("agent.logs.v1", lines=[{"timestamp": "2026-01-01T00:00:00Z", "level": "INFO", "message": "hi"}])
    await agent.heartbeat()
    await agent.close()


@pytest.mark.postgres
async def test_a_chunk_that_loses_a_race_to_its_own_resend_is_acked_once(
    aiohttp_client: object, make_config: object, pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fast chunk path fails whole when the same chunk was stored meanwhile
    (IntegrityError); the relay looks again the careful way and acks it, and the job's
    rows are there once."""
    from sqlalchemy import create_engine
    from sqlalchemy.exc import IntegrityError

    from relay.store import chunks as chunk_store

    client = await aiohttp_client(create_app(make_config(database_url=pg_database)))  # type: ignore[operator]
    api = Api(client)
    con = await api.new_connector()
    agent = await FakeAgent(client, con["apiKey"]).connect()
    job_id = await api.submit(con["id"], "SELECT 1")
    assign = await agent.expect("job.assign.v1", jobId=job_id)
    await agent.start(assign, ["n"])
    real, raced = chunk_store.insert_owned, []
    racer = create_engine(pg_database)  # the relay's own pool may hold one connection

    def losing(conn, connector_id, job, attempt, seq, rows, key_id, data):  # type: ignore[no-untyped-def]
        if not raced:  # the other copy commits first, in its own transaction
            raced.append(seq)
            with racer.begin() as other:
                real(other, connector_id, job, attempt, seq, rows, key_id, data)
            raise IntegrityError("COPY result_chunks", None, Exception("duplicate key"))
        return real(conn, connector_id, job, attempt, seq, rows, key_id, data)

    monkeypatch.setattr(chunk_store, "insert_owned", losing)
    await agent.chunk(assign, 0, [[1], [2]])  # waits for its ack
    assert raced == [0]
    await agent.chunk(assign, 1, [[3]])
    await agent.done(assign, 2, 3)
    _, body, _ = await api.call("GET", f"/jobs/{job_id}/results", expect=200)
    assert [json.loads(x)["n"] for x in body.splitlines()] == [1, 2, 3]
    await agent.close()
    racer.dispose()


@pytest.mark.postgres
async def test_a_connection_lost_while_committing_is_503_but_not_an_outage(pg_database: str) -> None:
    """A backend killed while its transaction commits (pg_terminate_backend from another
    session, as a DBA or a failover might) fails that call with StoreUnavailable (its
    outcome is unknown: not retried), but the database was reached, so the store does not
    go into outage mode: the next call runs at once (in outage mode it would be refused
    for up to a second, and every API call with it)."""
    import psycopg2
    from sqlalchemy import event, text
    from sqlalchemy.engine import make_url

    from relay.store.engine import Store
    from relay.store.outage import StoreUnavailable

    store = Store(pg_database)
    await store.open()
    killer = psycopg2.connect(make_url(pg_database).set(drivername="postgresql").render_as_string(hide_password=False))
    killer.autocommit = True
    doomed: list[int] = []

    def kill_before_commit(conn: object) -> None:
        if doomed:
            with killer.cursor() as cur:
                cur.execute("SELECT pg_terminate_backend(%s, 5000)", (doomed.pop(),))

    event.listen(store.engine, "commit", kill_before_commit)
    try:
        def write(conn: object) -> None:
            doomed.append(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())  # type: ignore[attr-defined]

        with pytest.raises(StoreUnavailable):
            await store.run(write)
        assert not store.outage.down
        assert await store.run(lambda conn: conn.execute(text("SELECT 1")).scalar_one()) == 1
    finally:
        killer.close()
        await store.close()
