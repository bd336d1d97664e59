"""Platform clients that read results slowly or not at all, against a real relay and agent
(PostgreSQL source, ``generate_series``) over real sockets: the relay's memory stays
bounded, the job finishes and is stored, other readers and calls stay fast, a reader that
takes no byte for ``MC_RELAY_SEND_TIMEOUT`` is cut (quietly: one INFO line, no traceback),
a slow reader that keeps reading is not, and ``MC_RELAY_RESULT_STREAMS`` caps a tenant's
open streams (docs/API.md, "Results")."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator

import pytest

from tests import conftest as root
from tests.harness import Api, Source, Stack, wait_until
from tests.system.slowclient import drain_until_closed, open_results, read_head, rss, timed

pytestmark = pytest.mark.system

SEND_TIMEOUT = 3.0
STREAMS = 60
ROWS = 300_000
SQL = f"SELECT g, md5(g::text) AS h FROM generate_series(1, {ROWS}) g"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str]]:
    url = os.environ.get("MC_TEST_POSTGRES_URL") or root.DEFAULT_PG_URL
    try:
        root._probe(url)
    except Exception:
        pytest.skip(f"PostgreSQL unreachable at {url}")
    env = {"MC_RELAY_SEND_TIMEOUT": str(SEND_TIMEOUT), "MC_RELAY_RESULT_STREAMS": str(STREAMS)}
    with Stack(tmp_path_factory.mktemp("slow") / "stack", tenant="slow", heartbeat=5.0, extra_env=env) as st:
        st.start_relay()
        agent = st.add_agent("slow", [Source("pg", "postgres", url)])
        yield st, agent.connector_id


def _big_job(api: Api, connector_id: str) -> str:
    return api.submit(connector_id, "pg", sql=SQL, options={"timeoutSeconds": 120})


def _relay_log(st: Stack) -> str:
    return (st.workdir / "relay.log").read_text()


def test_readers_that_never_read_hold_nothing_up_and_are_cut(stack: tuple[Stack, str]) -> None:
    st, cid = stack
    api, relay = st.api, st.relay
    assert api is not None and relay is not None
    base = rss(relay.proc.pid)
    job_id = _big_job(api, cid)
    stalled = [open_results(api, relay.port, job_id) for _ in range(40)]
    assert b"200 OK" in read_head(stalled[0])
    peak = base

    def ended() -> bool:
        nonlocal peak
        peak = max(peak, rss(relay.proc.pid))
        return api.job(job_id)["status"] in ("succeeded", "failed", "timed_out")

    wait_until(ended, 60, interval=0.2, what="the big job to end")
    job = api.job(job_id)
    assert job["status"] == "succeeded" and job["rowCount"] == ROWS
    # While 40 readers hold their streams without reading: the relay answers at once, and
    # others read the whole result and run jobs.
    _, health = timed(api.health)
    rows, whole = timed(api.results, job_id)
    small, other_job = timed(api.run_job, cid, "pg", sql="SELECT 1 AS x")
    assert len(rows) == ROWS and rows[-1]["g"] == ROWS and small[1] == [{"x": 1}]
    assert health < 0.3 and other_job < 2.0, (health, other_job)
    assert whole < 20, whole
    peak = max(peak, rss(relay.proc.pid))
    # ~1-3 MB a stalled reader (the chunk in hand), never the result (~15 MB of NDJSON
    # each, 600 MB for 40) -- plus the 32 MB of recent chunks kept for live readers.
    assert peak - base < 200 << 20, (base >> 20, peak >> 20)
    # Ten hang up themselves; the other 30, taking no byte for SEND_TIMEOUT seconds, are
    # cut (a TCP reset): the relay lets go of all of them, quietly.
    for s in stalled[30:]:
        s.close()
    stalled = stalled[:30]
    log = wait_until(lambda: (t := _relay_log(st)).count("connection cut") >= 30 and t, SEND_TIMEOUT * 4,
                     what="the stalled readers cut")  # fmt: skip
    ends = [drain_until_closed(s, 5) for s in stalled]
    assert {end for _, end in ends} == {"reset"}, ends
    for s in stalled:
        s.close()
    assert "Traceback" not in log and '"level":"ERROR"' not in log
    # Their places are free again: a full set of streams opens (the cap is STREAMS).
    again = [open_results(api, relay.port, job_id) for _ in range(STREAMS)]
    try:
        assert all(b"200 OK" in read_head(s) for s in again)
    finally:
        for s in again:
            s.close()


def test_a_slow_reader_that_keeps_reading_is_not_cut(stack: tuple[Stack, str]) -> None:
    """Reading ~40 KB a second, 3 x SEND_TIMEOUT long: every row arrives."""
    st, cid = stack
    api, relay = st.api, st.relay
    assert api is not None and relay is not None
    job_id = _big_job(api, cid)
    sock = open_results(api, relay.port, job_id)
    got = read_head(sock)
    sock.settimeout(10)
    until = time.monotonic() + SEND_TIMEOUT * 3
    while time.monotonic() < until:
        block = sock.recv(4096)
        assert block, "the relay cut a reader that was reading"
        got += block
        time.sleep(0.1)
    while block := sock.recv(1 << 16):
        got += block
        if got.endswith(b"\r\n0\r\n\r\n"):
            break
    sock.close()
    body = got.split(b"\r\n\r\n", 1)[1]
    assert body.endswith(b"0\r\n\r\n")  # the terminating chunk: a whole result
    assert body.count(b'"h":') == ROWS


def test_open_result_streams_are_capped_per_tenant(stack: tuple[Stack, str]) -> None:
    st, cid = stack
    api, relay = st.api, st.relay
    assert api is not None and relay is not None
    # A job whose rows are a minute away: each reader waits for them.
    job_id = api.submit(cid, "pg", sql="SELECT pg_sleep(60) AS z", options={"timeoutSeconds": 90})
    waiting = [open_results(api, relay.port, job_id) for _ in range(STREAMS)]
    try:
        over = wait_until(lambda: (r := api.call("GET", f"/jobs/{job_id}/results", timeout=5)).status == 429 and r,
                          10, what="the stream past the cap refused")  # fmt: skip
        assert over.headers["Retry-After"] == "5"
        assert over.json["error"]["details"]["limit"] == STREAMS
        assert "MC_RELAY_RESULT_STREAMS" in over.json["error"]["message"]
        assert api.call("HEAD", f"/jobs/{job_id}/results", timeout=5).status == 200  # HEAD is not a stream
        other = relay.platform_api("someone-else")
        assert other.call("GET", "/jobs/job_nope/results", timeout=5).status == 404  # not their cap
    finally:
        waiting[0].close()
    # One reader hung up: its place is free within a poll interval.
    sock = wait_until(lambda: _opened(api, relay.port, job_id), 10, what="a place after a reader left")
    for s in [sock, *waiting[1:]]:
        s.close()
    api.cancel(job_id)


def _opened(api: Api, port: int, job_id: str) -> socket.socket | None:
    """A results stream that was not refused (it waits, or began with a 200), else None."""
    sock = open_results(api, port, job_id)
    sock.settimeout(0.3)
    try:
        head = sock.recv(4096)
    except TimeoutError:
        return sock
    if b" 200 " in head.split(b"\r\n", 1)[0]:
        return sock
    sock.close()
    assert b" 429 " in head, head[:200]
    return None
