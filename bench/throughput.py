"""Throughput: a 1,000,000-row x 6-column PostgreSQL table end to end, against a direct read.

Creates the table in a fresh ``mc_bench_*`` schema, reads it as NDJSON through a real relay
and agent (submit -> last byte of GET /jobs/{id}/results), then directly with a psycopg2
server-side cursor in the same run, and prints rows/s for both and their ratio, once per
relay store (``--store sqlite|postgresql|both``; the PostgreSQL store gets a fresh
``mc_bench_relay_*`` database, dropped afterwards). The schema is dropped at the end.
Needs MC_TEST_POSTGRES_URL (default the local test database).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
from _common import figure
from _load import CpuMeter

from tests.harness import Api, HarnessError, Source, Stack, fresh_pg_database, wait_until

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"


def _connect(url: str):
    import psycopg2

    u = urlsplit(url)
    return psycopg2.connect(host=u.hostname, port=u.port or 5432, user=u.username,
                            password=u.password or None, dbname=u.path.lstrip("/"),
                            connect_timeout=5)  # fmt: skip


def create_table(url: str, schema: str, rows: int) -> None:
    con = _connect(url)
    with con, con.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {schema}")
        cur.execute(
            f"CREATE TABLE {schema}.t (id bigint PRIMARY KEY, name text, amount numeric(12,2),"
            " created timestamp, flag boolean, score double precision)"
        )
        cur.execute(
            f"INSERT INTO {schema}.t SELECT g, 'customer ' || g, (g %% 100000) / 100.0,"
            " timestamp '2025-01-01' + g * interval '1 second', g %% 2 = 0, g / 7.0"
            " FROM generate_series(1, %s) g",
            (rows,),
        )
        cur.execute(f"ANALYZE {schema}.t")
    con.close()


def drop(url: str, schema: str) -> None:
    con = _connect(url)
    with con, con.cursor() as cur:
        cur.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    con.close()


@contextlib.contextmanager
def bench_table(rows: int) -> Iterator[tuple[str, str] | None]:
    """A fresh ``rows`` x 6-column table in its own schema, dropped afterwards; yields
    (database URL, the SELECT that reads it), or None (with a line saying why) when
    PostgreSQL is unreachable."""
    url = os.environ.get("MC_TEST_POSTGRES_URL") or DEFAULT_PG
    try:
        _connect(url).close()
    except Exception as exc:
        print(f"  skipped: PostgreSQL unreachable at {url}: {exc}".splitlines()[0])
        yield None
        return
    schema = f"mc_bench_{secrets.token_hex(4)}"
    t0 = time.monotonic()
    create_table(url, schema, rows)
    print(f"  table {schema}.t created in {time.monotonic() - t0:.1f}s")
    try:
        yield url, f"SELECT id, name, amount, created, flag, score FROM {schema}.t"
    finally:
        drop(url, schema)


def direct(url: str, sql: str) -> tuple[int, float]:
    con = _connect(url)
    t0 = time.monotonic()
    n = 0
    with con, con.cursor(name="bench") as cur:
        cur.itersize = 10_000
        cur.execute(sql)
        while batch := cur.fetchmany(10_000):
            n += len(batch)
    secs = time.monotonic() - t0
    con.close()
    return n, secs


def results_when_running(api: Api, job_id: str, wait: float) -> Any:
    """``GET /jobs/{id}/results`` opened as soon as the job runs (within ``wait`` s): the
    response streams until the job ends. Use it as a context manager; ``read`` blocks."""
    import urllib.request

    wait_until(lambda: api.job(job_id)["status"] in
               {"running", "succeeded", "failed", "cancelled", "timed_out"}, wait, interval=0.01)  # fmt: skip
    req = urllib.request.Request(
        f"{api.base_url}/api/v1/jobs/{job_id}/results",
        headers={"Authorization": f"Bearer {api.jobs_token}", "X-Tenant-ID": api.tenant or ""},
    )
    return urllib.request.urlopen(req, timeout=900)


def through_relay(
    url: str, sql: str, work: Path, store_url: str | None = None
) -> tuple[int, float, int, dict[str, float]]:
    """Rows, seconds, NDJSON bytes and CPU seconds by process through a relay on SQLite
    (``store_url`` None) or on the PostgreSQL store at ``store_url``."""
    with Stack(work / "stack", tenant="bench", heartbeat=5.0) as stack:
        if store_url is None:
            stack.start_relay()
        else:
            stack.start_relay_node(store_url)
        api = stack.api
        assert api is not None
        agent = stack.add_agent("bench", [Source("pg", "postgres", url)])
        api.run_job(agent.connector_id, "pg", sql="SELECT 1")  # warm up imports and the pool
        assert stack.relay is not None and agent.proc is not None
        meter = CpuMeter({"relay": stack.relay.proc.pid, "agent": agent.proc.pid, "client": os.getpid()})
        pg_before = postgres_cpu()
        meter.start()
        t0 = time.monotonic()
        job_id = api.submit(agent.connector_id, "pg", sql=sql, options={"timeoutSeconds": 900})
        rows = size = 0
        with results_when_running(api, job_id, 60) as resp:
            while block := resp.read(1 << 20):
                rows += block.count(b"\n")
                size += len(block)
        secs = time.monotonic() - t0
        meter.stop()
        spent = {**meter.spent, "PostgreSQL": postgres_cpu() - pg_before}
        job = api.job(job_id)
        if job["status"] != "succeeded":
            raise HarnessError(f"job ended {job['status']}: {job.get('error')}")
    return rows, secs, size, spent


def postgres_cpu() -> float:
    """CPU seconds so far of the local PostgreSQL server's processes (the source query's
    backend, the relay store's, the server's own)."""
    total = 0.0
    for proc in psutil.process_iter(["name", "cpu_times"]):
        if (proc.info["name"] or "").startswith("postgres") and proc.info["cpu_times"] is not None:
            total += proc.info["cpu_times"].user + proc.info["cpu_times"].system
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--store", choices=("sqlite", "postgresql", "both"), default="both",
                    help="the relay's store (default both, one after the other)")  # fmt: skip
    args = ap.parse_args(argv)
    stores = ["sqlite", "postgresql"] if args.store == "both" else [args.store]
    print(f"throughput: {args.rows:,} rows x 6 columns from PostgreSQL")
    with bench_table(args.rows) as table:
        if table is None:
            return 0
        url, sql = table
        for store in stores:
            with tempfile.TemporaryDirectory(prefix="mc-bench-") as tmp:
                if store == "sqlite":
                    relay_rows, relay_secs, size, spent = through_relay(url, sql, Path(tmp))
                else:
                    with fresh_pg_database(url, "mc_bench_relay_") as store_url:
                        relay_rows, relay_secs, size, spent = through_relay(url, sql, Path(tmp), store_url)
            direct_rows, direct_secs = direct(url, sql)  # right after, under the same load
            if relay_rows != args.rows or direct_rows != args.rows:
                print(f"  WARNING: row counts relay={relay_rows:,} direct={direct_rows:,}")
            print(f"  relay store: {store}")
            figure("relay + agent (NDJSON, end to end)", relay_rows / relay_secs, "rows/s")
            figure("  bytes of NDJSON", size / relay_secs / 1e6, "MB/s")
            figure("direct psycopg2 server-side cursor", direct_rows / direct_secs, "rows/s")
            figure(
                "ratio relay / direct",
                100 * (relay_rows / relay_secs) / (direct_rows / direct_secs),
                "%",
            )
            for name, secs in spent.items():  # where the end-to-end run's CPU went
                figure(f"  CPU s per 1M rows, {name}", secs * 1e6 / max(1, relay_rows), "s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
