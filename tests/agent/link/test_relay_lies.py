"""The agent against a relay whose messages are valid but wrong: acks for chunks it was
never sent, older attempts, done messages it never acknowledges, a bad welcome, numbers
at the edges. The agent's state stays right and nothing it holds is lost.
(Malformed frames and a relay that drops sessions: test_hostile_relay.py.)"""

from __future__ import annotations

import logging

import pytest

from agent.jobs.runner import MAX_TIMEOUT, _positive
from agent.jobs.spool import SpooledJob

from ..fake_relay import FakeRelay

SLOW_SQL = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"


async def _sync(relay: FakeRelay, name: str) -> None:
    """Everything the relay sent before this has been handled by the agent: the agent reads
    its socket in order, and this job's done comes only after its assign was read."""
    await relay.assign(name, "lite", query={"sql": "SELECT 1"})
    await relay.wait_for(lambda: relay.done(name), 10, f"the done of {name}")


async def test_an_ack_for_a_chunk_never_sent_drops_nothing(start_agent, api_key, caplog):
    """Believing it would drop chunks the relay does not have and open the window: the
    ack is ignored with one warning, and the job still delivers every row once the relay
    acknowledges honestly."""
    caplog.set_level(logging.DEBUG, logger="agent.runner")
    async with FakeRelay(api_key, window=2, max_chunk_bytes=1024, auto_ack=False) as relay:
        agent = await start_agent(relay.url)
        await relay.wait_for(lambda: relay.ws, 5)
        await relay.assign("job_big", "lite", query={"sql": "SELECT id, name FROM items"})
        await relay.wait_for(lambda: len(relay.got.chunks) >= 2, 10, "a full window")
        assert [c.seq for c in relay.got.chunks] == [0, 1]
        await relay.ack("job_big", 1, 50)  # never sent
        await relay.ack("job_big", 1, 2**63 - 1)  # ditto, at the edge of what a spool holds
        await relay.send("job.done.ack.v1", jobId="job_big", attempt=1)  # not finished yet
        await relay.send("job.cancel.v1", jobId="job_none", attempt=1)  # not held
        await relay.ack("job_none", 1, 0)
        await _sync(relay, "job_sync")
        job = agent.runner.jobs["job_big"]
        assert list(job.unacked) == [0, 1] and job.running
        assert [c.seq for c in relay.got.chunks if c.job_id == "job_big"] == [0, 1]  # the window did not open
        lies = [r for r in caplog.records if r.levelno == logging.WARNING and "was never sent" in r.getMessage()]
        assert len(lies) == 1  # once per job, not once per ack
        # Now honestly: the relay acknowledges what it has, and each chunk as it comes.
        relay.auto_ack = True
        await relay.ack("job_big", 1, 1)
        await relay.wait_for(lambda: relay.done("job_big"), 20, "the job's end")
        assert relay.done("job_big")["status"] == "succeeded"
        assert [r[0] for r in relay.rows("job_big")] == list(range(3000))
        assert not agent.task.done()


async def test_an_older_attempt_never_replaces_a_newer_one(start_agent, api_key, caplog):
    caplog.set_level(logging.WARNING, logger="agent.runner")
    async with FakeRelay(api_key) as relay:
        agent = await start_agent(relay.url)
        await relay.wait_for(lambda: relay.ws, 5)
        await relay.assign("job_o", "lite", query={"sql": SLOW_SQL}, attempt=2)
        await relay.wait_for(lambda: "job_o" in agent.runner.jobs, 5)
        await relay.assign("job_o", "lite", query={"sql": "SELECT 1"}, attempt=1)  # stale
        await _sync(relay, "job_sync")
        held = agent.runner.jobs["job_o"]
        assert (held.attempt, held.running) == (2, True)
        await relay.send("job.cancel.v1", jobId="job_o", attempt=2)
        await relay.wait_for(lambda: relay.done("job_o"), 10)
        assert [(m["attempt"], m["status"]) for m in relay.of_type("job.done.v1", "job_o")] == [(2, "cancelled")]
        assert all(m["attempt"] == 2 for m in relay.of_type("job.started.v1", "job_o"))
    assert any("holds its newer attempt 2" in r.getMessage() for r in caplog.records)


async def test_an_older_attempt_does_not_take_over_a_finished_result(start_agent, api_key):
    """A finished job waiting for its ack is handed over to a *newer* attempt (not rerun);
    an older attempt gets nothing."""
    async with FakeRelay(api_key) as relay:
        relay.ack_done = False
        agent = await start_agent(relay.url)
        await relay.wait_for(lambda: relay.ws, 5)
        await relay.assign("job_f", "lite", query={"sql": "SELECT 1"}, attempt=3)
        await relay.wait_for(lambda: relay.done("job_f"), 10)
        await relay.assign("job_f", "lite", query={"sql": "SELECT 1"}, attempt=2)
        await _sync(relay, "job_sync")
        assert [m["attempt"] for m in relay.of_type("job.done.v1", "job_f")] == [3]
        assert agent.runner.jobs["job_f"].attempt == 3


async def test_finished_jobs_the_relay_never_acknowledges_are_bounded(start_agent, api_key, caplog):
    """A relay that never sends job.done.ack.v1: the agent holds at most its bound of
    finished jobs (the newest), names them in the next hello and resends their results."""
    caplog.set_level(logging.WARNING, logger="agent.runner")
    async with FakeRelay(api_key) as relay:
        relay.ack_done = False
        agent = await start_agent(relay.url)
        agent.runner.max_held_finished = 3
        await relay.wait_for(lambda: relay.ws, 5)
        for i in range(6):
            await relay.assign(f"job_{i}", "lite", query={"sql": f"SELECT {i}"})
            await relay.wait_for(lambda i=i: relay.done(f"job_{i}"), 10)
        assert list(agent.runner.jobs) == ["job_3", "job_4", "job_5"]
        relay.drop()
        await relay.wait_for(lambda: relay.connections == 2 and relay.ws, 10, "a reconnect")
        assert relay.hellos[-1]["heldJobs"] == [{"jobId": f"job_{i}", "attempt": 1} for i in (3, 4, 5)]
        await relay.wait_for(lambda: all(len(relay.of_type("job.done.v1", f"job_{i}")) == 2 for i in (3, 4, 5)),
                             10, "the held results resent")  # fmt: skip
        assert all(len(relay.of_type("job.done.v1", f"job_{i}")) == 1 for i in (0, 1, 2))
    dropped = [r for r in caplog.records if "dropping the oldest" in r.getMessage()]
    assert len(dropped) == 3


async def test_more_held_jobs_than_a_hello_may_name_still_connect(start_agent, api_key):
    """After a restart with more finished jobs in the spool than the hello's limit (1000),
    the hello names the newest 1000 instead of failing to be made (which looked like a
    relay breaking the protocol, forever)."""
    async with FakeRelay(api_key) as relay:
        agent = await start_agent(relay.url)  # its session has not run yet: restore first
        agent.runner.max_held_finished = 2000  # (restore applies it: tested in test_spool.py)
        done = {"status": "succeeded", "chunks": 0, "rowCount": 0, "byteCount": 0, "error": None}
        agent.runner.restore([SpooledJob(f"job_{i}", 1, "lite", "query", None,
                                         {"jobId": f"job_{i}", "attempt": 1, **done})
                              for i in range(1200)], [])  # fmt: skip
        await relay.wait_for(lambda: relay.ws, 10, "a welcome")
        held = relay.hellos[-1]["heldJobs"]
        assert len(held) == 1000 and held[-1] == {"jobId": "job_1199", "attempt": 1}
        await relay.wait_for(lambda: not agent.runner.jobs, 20, "every held result acknowledged")


@pytest.mark.parametrize("welcome", [
    '{"type": "relay.welcome.v1", "protocolVersion": 1, "connectorId": "con_x", "heartbeatInterval": 0,'
    ' "window": 4, "maxChunkBytes": 65536}',
    '{"type": "job.assign.v1", "jobId": "j", "attempt": 1, "source": "lite", "operation": "query", "sealed": null}',
    "not json",
])  # fmt: skip
async def test_a_welcome_that_breaks_the_protocol_is_closed_as_a_protocol_violation(start_agent, api_key, welcome):
    async with FakeRelay(api_key) as relay:
        relay.welcome_text = welcome
        agent = await start_agent(relay.url)
        await relay.wait_for(lambda: relay.close_codes, 5, "the agent to close")
        assert relay.close_codes[0] == 4008  # PROTOCOL_VIOLATION, shared/protocol.py
        assert agent.session.status()["lastError"].startswith("the relay broke the protocol")


async def test_a_second_welcome_is_ignored_with_a_warning(start_agent, api_key, caplog):
    caplog.set_level(logging.WARNING, logger="agent.session")
    async with FakeRelay(api_key) as relay:
        agent = await start_agent(relay.url)
        await relay.wait_for(lambda: relay.ws, 5)
        await relay.send("relay.welcome.v1", protocolVersion=1, connectorId="con_other", heartbeatInterval=0.05,
                         window=1, maxChunkBytes=1024)  # fmt: skip
        await _sync(relay, "job_sync")
        assert agent.session.connector_id == relay.connector_id and agent.runner.window == 4
        assert relay.connections == 1 and not agent.task.done()
    assert [r.getMessage() for r in caplog.records if "unexpected" in r.getMessage()] == [
        "ignored an unexpected relay.welcome.v1 from the relay"
    ]


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
async def test_options_at_the_edges_do_not_break_a_job(start_agent, api_key):
    """Wrong types are ignored; a timeout of 1e300 s is bounded (it killed the agent's
    deadline thread with an OverflowError); a negative maxRows gives no rows."""
    assert _positive(1e300) == MAX_TIMEOUT and _positive(-1) is None and _positive(True) is None
    async with FakeRelay(api_key) as relay:
        await start_agent(relay.url)
        await relay.wait_for(lambda: relay.ws, 5)
        cases = {
            "job_e1": {"timeoutSeconds": "soon", "maxRows": "ten"},
            "job_e2": {"timeoutSeconds": 1e300, "maxRows": 2**63 - 1},
            "job_e3": {"timeoutSeconds": -5, "maxRows": -5},
            "job_e4": {"timeoutSeconds": True, "maxRows": True},
        }
        for job_id, options in cases.items():
            await relay.assign(job_id, "lite", query={"sql": "SELECT id FROM items WHERE id < 3"}, options=options)
        await relay.wait_for(lambda: all(relay.done(j) for j in cases), 10)
        assert {j: relay.done(j)["status"] for j in cases} == dict.fromkeys(cases, "succeeded")
        assert relay.rows("job_e2") == [[0], [1], [2]] and relay.rows("job_e3") == []


async def test_a_held_job_keeps_only_the_options_it_reads(start_agent, api_key):
    """Finished jobs wait for the relay's ack (up to the bound above): a relay's megabyte
    of unknown options must not be held with each of them."""
    async with FakeRelay(api_key) as relay:
        relay.ack_done = False
        agent = await start_agent(relay.url)
        await relay.wait_for(lambda: relay.ws, 5)
        await relay.assign("job_p", "lite", query={"sql": "SELECT 1"},
                           options={"pad": "x" * 500_000, "maxRows": 1, "timeoutSeconds": 30})  # fmt: skip
        await relay.wait_for(lambda: relay.done("job_p"), 10)
        assert agent.runner.jobs["job_p"].options == {"maxRows": 1, "timeoutSeconds": 30}

