"""The agent against a relay that misbehaves: it stays up, says so once, and backs off."""

from __future__ import annotations

import io
import logging

import pytest

from agent.logs import HumanFormatter, RedactFilter, StderrHandler

from ..fake_relay import FakeRelay

SLOW_SQL = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"


def _highest(lo: float, hi: float) -> float:
    return hi  # the jitter's top: the backoff's cap, deterministically


async def test_a_relay_that_drops_every_session_after_its_welcome_gets_a_growing_backoff(
    start_agent, api_key, caplog
):
    """A welcome followed at once by a close is a failed attempt, not a reset of the
    backoff: the agent must not redial such a relay every second, nor log each time."""
    caplog.set_level(logging.INFO, logger="agent.session")
    async with FakeRelay(api_key) as relay:
        relay.close_after_welcome = 1000
        agent = await start_agent(relay.url, backoff_min=0.05, backoff_max=0.4, rand=_highest)
        await relay.wait_for(lambda: relay.connections >= 5, 10, "five sessions")
        assert agent.session.last_delay == pytest.approx(0.4)  # grew to the cap
        assert not agent.task.done()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "relay closed" in r.getMessage()]
    connected = [r for r in caplog.records if r.levelno == logging.INFO and "connected to" in r.getMessage()]
    assert len(warnings) == 1 and len(connected) == 1


async def test_a_session_that_lasted_resets_the_backoff(start_agent, api_key):
    async with FakeRelay(api_key) as relay:
        agent = await start_agent(relay.url, backoff_min=0.05, backoff_max=0.4, rand=_highest, stable_after=0.2)
        await relay.wait_for(lambda: relay.ws, 5)
        await relay.wait_for(lambda: agent.session._stable(), 5, "a stable session")
        await relay.close(1000)
        await relay.wait_for(lambda: relay.connections == 2 and relay.ws, 5, "reconnected")
        assert agent.session.last_delay == pytest.approx(0.05)


async def test_a_link_that_drops_often_while_chunks_are_taken_is_redialled_at_once(start_agent, api_key):
    """A network that cuts the connection every second or two while rows flow is not a
    relay refusing the agent: each session moved the job on (the relay took chunks), so
    the agent redials at the shortest delay. A growing backoff outlasts the job's lease
    and loses its attempt (found by the durability test's proxy cutting every 1.5 s)."""
    async with FakeRelay(api_key, window=1) as relay:
        agent = await start_agent(relay.url, backoff_min=0.05, backoff_max=0.4, rand=_highest)
        await relay.wait_for(lambda: relay.ws, 5)
        sql = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 3000000)"
               " SELECT x, 'a row of some length to fill the chunks' FROM c")  # fmt: skip
        await relay.assign("job_flaky", "lite", query={"sql": sql})
        for n in range(2, 6):
            seen = len(relay.got.chunks)
            # window 1: a second chunk means the agent took the ack of the first
            await relay.wait_for(lambda s=seen: len(relay.got.chunks) >= s + 2, 10, "two chunks in this session")
            relay.drop()
            await relay.wait_for(lambda n=n: relay.connections == n and relay.ws, 5, f"session {n}")
            assert agent.session.last_delay == pytest.approx(0.05), f"session {n}"


async def test_while_it_holds_a_job_the_agent_redials_within_a_heartbeat_interval(start_agent, api_key):
    """Sessions that end at once with nothing taken grow the backoff, but never past one
    heartbeat interval while a job is held: its lease lasts three."""
    async with FakeRelay(api_key, heartbeat=0.15) as relay:
        agent = await start_agent(relay.url, backoff_min=0.05, backoff_max=0.4, rand=_highest)
        await relay.wait_for(lambda: relay.ws, 5)
        await relay.assign("job_held", "lite", query={"sql": SLOW_SQL})
        await relay.wait_for(lambda: agent.session.runner.active_jobs, 5, "the job to run")
        relay.close_after_welcome = 1000
        await relay.close(1000)
        await relay.wait_for(lambda: relay.connections >= 6, 10, "five more sessions")
        assert agent.session.last_delay == pytest.approx(0.15)  # not the 0.4 cap


async def test_garbage_from_the_relay_is_ignored_and_the_agent_keeps_working(start_agent, api_key, caplog):
    caplog.set_level(logging.WARNING, logger="agent.session")
    async with FakeRelay(api_key, heartbeat=0.1) as relay:
        agent = await start_agent(relay.url, capacity=2)
        await relay.wait_for(lambda: relay.ws, 5)
        bad = [
            b"\x01\x00\x00\x02{}", b"", "[]", "null", '{"type": 5}', '{"type": "x.y.v1"}',
            '{"type": "relay.welcome.v1"}', '{"type": "agent.hello.v1"}',
            '{"type": "job.assign.v1", "jobId": 5, "attempt": "1", "source": "lite", "operation": "query", "sealed": null}',
            '{"type": "job.cancel.v1", "jobId": "nope", "attempt": 1}',
            '{"type": "job.chunk.ack.v1", "jobId": "nope", "attempt": 1, "seq": 99999999999}',
            '{"type": "job.done.ack.v1", "jobId": "nope", "attempt": 1}',
            '{"type": "relay.reconnect.v1", "delaySeconds": "soon"}',
            '{"type": "agent.config.v1", "logLevel": "TRACE"}',
            "x" * (3 << 19),  # over the protocol's 1 MiB, under the socket's limit
        ]
        for frame in bad:
            await relay.ws.send(frame)
        # over the capacity: two run, the others fail at once, retryable
        for i in range(4):
            await relay.assign(f"job_c{i}", "lite", query={"sql": SLOW_SQL})
        await relay.wait_for(lambda: relay.done("job_c2") and relay.done("job_c3"), 5)
        assert {relay.done(j)["error"]["code"] for j in ("job_c2", "job_c3")} == {"INTERNAL_ERROR"}
        assert relay.done("job_c2")["error"]["retryable"] is True
        for i in range(2):
            await relay.send("job.cancel.v1", jobId=f"job_c{i}", attempt=1)
        await relay.wait_for(lambda: relay.done("job_c0") and relay.done("job_c1"), 5)
        await relay.assign("job_dup", "lite", query={"sql": "SELECT 1"})
        await relay.assign("job_dup", "lite", query={"sql": "SELECT 1"})  # a duplicate delivery
        await relay.assign("job_seal", "lite", sealed="bm90IGEgc2VhbA==")
        await relay.wait_for(lambda: relay.done("job_dup") and relay.done("job_seal"), 5)
        assert len(relay.of_type("job.done.v1", "job_dup")) == 1
        assert relay.done("job_seal")["error"]["code"] == "DECRYPTION_FAILED"
        beats = len(relay.of_type("agent.heartbeat.v1"))
        await relay.wait_for(lambda: len(relay.of_type("agent.heartbeat.v1")) > beats + 2, 5, "heartbeats")
        assert relay.connections == 1 and not agent.task.done()
    ignored = [r for r in caplog.records if "ignored a malformed message" in r.getMessage()]
    assert len(ignored) == len(bad) - 3  # the cancel and the acks for no job are valid: ignored quietly


@pytest.mark.parametrize("interval", ["0", "-1", "1e9", '"15"', "true", "null"])
async def test_a_welcome_with_a_bad_heartbeat_interval_is_refused_and_retried_later(start_agent, api_key, interval):
    async with FakeRelay(api_key) as relay:
        relay.welcome_text = (
            '{"type": "relay.welcome.v1", "protocolVersion": 1, "connectorId": "con_x", '
            f'"heartbeatInterval": {interval}, "window": 4, "maxChunkBytes": 65536}}'
        )
        agent = await start_agent(relay.url)
        await relay.wait_for(lambda: agent.session.last_delay >= 5, 5, "a protocol-violation backoff")
        assert "heartbeatInterval" in agent.session.status()["lastError"]
        assert relay.connections == 1 and not agent.task.done()


async def test_a_relay_that_never_answers_the_hello_is_retried_with_backoff(start_agent, api_key):
    async with FakeRelay(api_key) as relay:
        relay.answer_hello = False
        agent = await start_agent(relay.url, open_timeout=0.3)
        await relay.wait_for(lambda: relay.connections >= 2, 10, "a second attempt")
        assert not agent.task.done() and agent.session.state.public == "connecting"
        assert agent.session.status()["lastError"] == "the relay did not answer the hello within 0.3 s"


async def test_text_from_the_relay_cannot_forge_a_line_of_the_agents_stderr_log(start_agent, api_key):
    out = io.StringIO()
    handler = StderrHandler(out)
    handler.setFormatter(HumanFormatter())
    handler.addFilter(RedactFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    old = root.level
    root.setLevel(logging.INFO)
    try:
        async with FakeRelay(api_key) as relay:
            await start_agent(relay.url)
            await relay.wait_for(lambda: relay.ws, 5)
            await relay.send("relay.error.v1", code="X\r\nY", message="boom\n00:00:00 ERROR   agent.session: forged\x1b[2K")
            await relay.assign("job_a\nforged", "lite", query={"sql": "SELECT 1"})
            await relay.wait_for(lambda: relay.done("job_a\nforged"), 5)
            await relay.wait_for(lambda: out.getvalue().count("forged") >= 2, 5, "both lines")
    finally:
        root.removeHandler(handler)
        root.setLevel(old)
    lines = out.getvalue().splitlines()
    assert [ln for ln in lines if "forged" in ln and "agent." not in ln.split("forged")[0]] == []
    assert "\x1b" not in out.getvalue()
    assert any("the relay reported an error: X\\r\\nY: boom\\n00:00:00 ERROR" in ln for ln in lines)


async def test_a_frame_past_the_sockets_limit_closes_the_connection_with_a_clear_reason(start_agent, api_key):
    async with FakeRelay(api_key) as relay:
        agent = await start_agent(relay.url)
        await relay.wait_for(lambda: relay.ws, 5)
        await relay.ws.send("x" * (3 << 20))
        await relay.wait_for(lambda: agent.session.status()["lastError"], 5, "the failure")
        assert agent.session.status()["lastError"] == (
            "the relay sent a message larger than 2097152 bytes; the agent closed the connection"
        )
        await relay.wait_for(lambda: agent.session.last_delay >= 5, 5, "a protocol-violation backoff")
        assert not agent.task.done()
