"""The relay's own PostgreSQL store goes away for a while, real processes.

A relay node's store URL goes through a ``StoreProxy`` (tests/system/storeproxy.py); the
agent's source (the machine's PostgreSQL) does not. The store is cut while idle (API
calls answer 503 ``SERVICE_UNAVAILABLE`` at once, ``/health`` 503, one log line, all
works again without a restart), in the middle of a 200,000-row job (every row exactly
once in the end), its connections are killed with ``pg_terminate_backend`` while jobs are
submitted and read (no request fails), and a node is started while it is unreachable
(waits, then starts; or gives up with a clear message and exit 1).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.client
import re
import secrets
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg2
import pytest
from sqlalchemy.engine import make_url

from tests import conftest as root
from tests.harness import Proc, Source, Stack, command, scaled, wait_until
from tests.system.storeproxy import StoreProxy

pytestmark = [pytest.mark.system, pytest.mark.postgres]

ROWS = 200_000
# Streams in a few seconds, pausing twice so the cut lands in the middle.
BIG_SQL = (f"SELECT g, md5(g::text) AS h FROM generate_series(1, {ROWS}) g"
           " WHERE g % 70000 <> 0 OR pg_sleep(1.0) IS NOT NULL")  # fmt: skip


@pytest.fixture
def proxy() -> Iterator[StoreProxy]:
    p = StoreProxy()
    p.start()
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
def source_url() -> str:
    return root._service_url("PostgreSQL", "MC_TEST_POSTGRES_URL", root.DEFAULT_PG_URL)


def _stack(tmp_path: Path, **env: str) -> Stack:
    return Stack(tmp_path / "stack", tenant=f"outage-{secrets.token_hex(3)}", heartbeat=1.0, extra_env=env)


def _psycopg(url: str) -> Any:
    return psycopg2.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False))


def _store_log(stack: Stack) -> str:
    return "\n".join(p.log_path.read_text(errors="replace") for p in stack.procs if p.name.startswith("mini-relay"))


def _timed(api: Any, method: str, path: str, body: Any = None) -> tuple[Any, float]:
    t0 = time.monotonic()
    resp = api.call(method, path, body, timeout=30)
    return resp, time.monotonic() - t0


def _ok(api: Any) -> bool:
    return api.call("GET", "/jobs", timeout=30).status == 200 and api.health().get("status") == "healthy"


def test_idle_outage_answers_503_at_once_and_recovers_without_a_restart(
    tmp_path: Path, pg_database: str, proxy: StoreProxy, source_url: str
) -> None:
    stack = _stack(tmp_path)
    try:
        node = stack.start_relay_node(proxy.via(pg_database))
        api = stack.api
        assert api is not None
        agent = stack.add_agent("idle", [Source("pg", "postgres", source_url)])
        for mode in ("refuse", "hang"):  # a server gone; then packets dropped (connects time out)
            proxy.down(mode)
            for method, path, body in [("GET", "/jobs", None), ("GET", f"/connectors/{agent.connector_id}", None),
                                       ("POST", "/jobs", {"connectorId": agent.connector_id, "source": "pg",
                                                          "operation": "query", "query": {"sql": "SELECT 1"}})]:  # fmt: skip
                resp, took = _timed(api, method, path, body)
                assert resp.status == 503, (mode, path, resp.status, resp.body[:300])
                err = resp.json["error"]
                assert (err["code"], err["details"]["reason"]) == ("SERVICE_UNAVAILABLE", "STORE_UNAVAILABLE"), err
                assert resp.headers.get("Retry-After") == "2"
                assert took < scaled(7.0), f"{method} {path} took {took:.1f} s during the outage ({mode})"
            health, took = _timed(api, "GET", "/health")
            assert health.status == 503 and health.json["status"] == "unhealthy", health.body
            assert took < scaled(4.0)
            proxy.up()
            wait_until(lambda: _ok(api), 20, interval=0.2, what=f"the relay working again after '{mode}'")
            assert node.proc.alive()
            stack.wait_online(agent, 20)  # back by itself if it was ever marked offline
            _, rows = api.run_job(agent.connector_id, "pg", sql="SELECT 41 + 1 AS answer")
            assert rows == [{"answer": 42}], rows
        log = _store_log(stack)
        assert "Traceback" not in log, log[-4000:]
        # Said once (rate-limited), not per request or sweep: two outages, one line.
        assert log.count("the store's database is unreachable") == 1, log[-4000:]
        assert log.count("the store's database is reachable again") == 1, log[-4000:]
    finally:
        stack.close()


def _digest(lines: list[bytes]) -> tuple[int, int, str]:
    """Rows, distinct keys, and a checksum of the NDJSON lines in key order."""
    rows = sorted((orjson.loads(line)["g"], line) for line in lines)
    h = hashlib.sha256()
    for _, line in rows:
        h.update(line + b"\n")
    return len(rows), len({g for g, _ in rows}), h.hexdigest()


def _expected() -> tuple[int, int, str]:
    return _digest([orjson.dumps({"g": g, "h": hashlib.md5(str(g).encode()).hexdigest()}) for g in range(1, ROWS + 1)])


def _chunks_stored(store_url: str, job_id: str) -> int:
    con = _psycopg(store_url)
    try:
        with con.cursor() as cur:
            cur.execute("SELECT count(*) FROM result_chunks WHERE job_id = %s", (job_id,))
            return int(cur.fetchone()[0])
    finally:
        con.close()


def test_store_cut_mid_stream_loses_and_doubles_no_row(
    tmp_path: Path, pg_database: str, proxy: StoreProxy, source_url: str
) -> None:
    stack = _stack(tmp_path)
    try:
        stack.start_relay_node(proxy.via(pg_database))
        api = stack.api
        assert api is not None
        agent = stack.add_agent("stream", [Source("pg", "postgres", source_url)])
        job_id = api.submit(agent.connector_id, "pg", sql=BIG_SQL)
        wait_until(lambda: _chunks_stored(pg_database, job_id) >= 2, 30, interval=0.05, what="chunks stored")
        # A reader following the job live since before the cut: it is kept waiting through
        # the outage and gets every row once, not a stream that ends early.
        streaming = threading.Event()
        live = concurrent.futures.ThreadPoolExecutor(1).submit(_follow, api, job_id, streaming)
        assert streaming.wait(scaled(10)), live.exception(timeout=1) if live.done() else "no answer"
        proxy.down("refuse")
        cut_at = time.monotonic()
        # The outage lasts 4 s (its length, not a synchronisation); the agent keeps reading rows meanwhile.
        while time.monotonic() - cut_at < 4.0:
            assert api.call("GET", f"/jobs/{job_id}", timeout=30).status == 503
            time.sleep(0.5)
        proxy.up()
        job = wait_until(lambda: _final(api, job_id), 60, interval=0.2, what=f"job {job_id} to finish")
        assert job is not None and job["status"] == "succeeded", job
        body = api.call("GET", f"/jobs/{job_id}/results", expect=200, timeout=120).body
        lines = [line for line in body.splitlines() if line.strip()]
        assert _digest(lines) == _expected(), "rows lost, doubled or changed"
        followed = [line for line in live.result(timeout=60).splitlines() if line.strip()]
        assert len(followed) == ROWS and _digest(followed) == _expected(), "the live reader's rows"
        assert job["rowCount"] == ROWS, job
        # The outage (4 s) outlasted the job's lease (3 s): the lease is not taken as lapsed
        # until the agent, sent away while the store was gone, has had a lease to come back;
        # it resumes its first attempt instead of the query running again.
        assert job["attempts"] == 1, (job, stack.logs_text(30))
        assert "Traceback" not in _store_log(stack)
    finally:
        stack.close()


def _follow(api: Any, job_id: str, streaming: threading.Event) -> bytes:
    """GET the job's results as a platform reader does, ``streaming`` set once the answer's
    head is in (the rows follow as the job makes them); the whole body, or the error of
    a stream cut short (http.client: IncompleteRead)."""
    url = urllib.parse.urlsplit(api.base_url)
    con = http.client.HTTPConnection(url.hostname, url.port, timeout=scaled(60))
    try:
        con.request("GET", f"{url.path}/api/v1/jobs/{job_id}/results",
                    headers={"Authorization": f"Bearer {api.jobs_token}", "X-Tenant-ID": api.tenant})  # fmt: skip
        resp = con.getresponse()
        assert resp.status == 200, resp.read()[:300]
        streaming.set()
        return resp.read()
    finally:
        con.close()


def _final(api: Any, job_id: str) -> dict[str, Any] | None:
    resp = api.call("GET", f"/jobs/{job_id}", timeout=30)
    if resp.status != 200:
        return None
    job = resp.json["data"]
    return job if job["status"] in ("succeeded", "failed", "cancelled", "timeout", "expired") else None


def _terminate(admin_url: str, database: str) -> int:
    con = _psycopg(admin_url)
    con.autocommit = True
    try:
        with con.cursor() as cur:
            cur.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                        " WHERE datname = %s AND pid <> pg_backend_pid()", (database,))  # fmt: skip
            return int(cur.fetchone()[0])
    finally:
        con.close()


def test_terminated_store_connections_fail_no_request(tmp_path: Path, pg_database: str, source_url: str) -> None:
    stack = _stack(tmp_path)
    try:
        stack.start_relay_node(pg_database)  # no proxy: the server itself ends the connections
        api = stack.api
        assert api is not None
        agent = stack.add_agent("term", [Source("pg", "postgres", source_url)])
        database = make_url(pg_database).database
        assert database

        def after_kill(method: str, path: str, body: Any = None) -> Any:
            assert _terminate(source_url, database) >= 1, "the relay held no store connection"
            resp = api.call(method, path, body, timeout=30)
            if resp.status not in (200, 202):
                pytest.fail(f"{method} {path} right after pg_terminate_backend -> {resp.status} {resp.body[:300]!r}")
            return resp

        for round_ in range(3):
            query = {"sql": f"SELECT {round_} AS r"}
            resp = after_kill("POST", "/jobs", {"connectorId": agent.connector_id, "source": "pg",
                                                "operation": "query", "query": query})  # fmt: skip
            job_id = resp.json["data"]["id"]
            after_kill("GET", "/jobs")
            assert api.wait_job(job_id, 20)["status"] == "succeeded"
            assert after_kill("GET", f"/jobs/{job_id}/results").ndjson() == [{"r": round_}]
        assert api.health()["status"] == "healthy"
        assert "Traceback" not in _store_log(stack)
    finally:
        stack.close()


_LISTENING = re.compile(r"listening on http://")


def _relay_proc(stack: Stack, database_url: str, wait: str, n: int) -> Proc:
    stack.extra_env.setdefault("MC_RELAY_JWT_SECRET", secrets.token_hex(32))
    stack.extra_env.setdefault("MC_RELAY_DATA_KEY", "A" * 43 + "=")
    env = stack._env()
    env["MC_RELAY_STORE_START_WAIT"] = wait
    argv = [*command("mini-relay"), "serve", "--host", "127.0.0.1", "--port", "0", "--database-url", database_url]
    proc = Proc(f"mini-relay#{n}", argv, env, stack.workdir / f"relay-{n}.log")
    stack.procs.append(proc)
    return proc


def test_a_node_started_while_its_store_is_unreachable_waits_then_starts_or_says_why(
    tmp_path: Path, pg_database: str, proxy: StoreProxy
) -> None:
    stack = _stack(tmp_path)
    try:
        proxy.down("refuse")
        quitter = _relay_proc(stack, proxy.via(pg_database), "1", 1)
        assert quitter.popen.wait(timeout=scaled(20)) == 1
        out = quitter.log_path.read_text()
        assert "cannot reach the store's database" in out and "MC_RELAY_STORE_START_WAIT" in out, out
        assert "Traceback" not in out, out
        waiter = _relay_proc(stack, proxy.via(pg_database), "30", 2)
        waiter.wait_for_line(re.compile(r"the store's database is unreachable .* waiting up to 30 s"), 20)
        proxy.up()
        waiter.wait_for_line(_LISTENING, 30)
        assert "Traceback" not in waiter.log_path.read_text()
    finally:
        stack.close()


def test_the_start_wait_setting_is_checked() -> None:
    """``MC_RELAY_STORE_START_WAIT``: 0 (do not wait) to a day; NaN, which would wait for
    ever, and negatives are refused at start, naming the variable."""
    from relay.config import ConfigError, RelayConfig

    assert RelayConfig().store_start_wait == 30.0
    assert RelayConfig.from_env({"MC_RELAY_STORE_START_WAIT": "0"}, jwt_secret="s" * 32).store_start_wait == 0
    for bad in ("nan", "-1", "inf", "86401"):
        with pytest.raises(ConfigError, match="MC_RELAY_STORE_START_WAIT"):
            RelayConfig.from_env({"MC_RELAY_STORE_START_WAIT": bad}, jwt_secret="s" * 32).check()
