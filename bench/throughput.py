"""Throughput: a 1,000,000-row x 6-column PostgreSQL table end to end, against a direct read.

Creates the table in a fresh ``mc_bench_*`` schema, reads it as NDJSON through a real relay
and agent (submit -> last byte of GET /jobs/{id}/results), then directly with a psycopg2
server-side cursor in the same run, and prints rows/s for both and their ratio, once per
relay store (``--store sqlite|postgresql|both``; the PostgreSQL store gets a fresh
``mc_bench_relay_*`` database, dropped afterwards). The schema is dropped at the end.
Needs MC_TEST_POSTGRES_URL (default the local test database).

``--matrix`` (issue 14): every common PostgreSQL type one column at a time (``TYPES``), a
wide table of all of them, and a MariaDB table (``MC_TEST_MYSQL_URL``) of 7 mixed
columns, each read through one warm relay + agent and then directly, printed side by side
(``--rows``, default 200,000 a case; ``--types int4,text,wide,mariadb`` for some cases
only; ``--repeat N``: best of N). The **direct read**, the same for every case: what a customer's own script does
with the raw driver. PostgreSQL: psycopg2, a server-side (named) cursor, ``itersize``
10,000, ``fetchmany(10_000)`` until empty; MariaDB: PyMySQL's ``SSCursor``,
``fetchmany(10_000)`` until empty; then every row of each batch becomes
``json.dumps(dict(zip(column_names, row)), default=str)`` (standard library json), the
lines joined with newlines. The ratio is relay rows/s over that direct read's rows/s; the
fetch alone (no JSON) is printed too, with its ratio, and the CPU of each process during the
relay read (agent, relay, PostgreSQL, and this client reading the results).
"""

from __future__ import annotations

import argparse
import contextlib
import json
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

from tests.harness import Api, HarnessError, Source, Stack, fresh_pg_database

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_MYSQL = "mysql+pymysql://root@127.0.0.1:3306/test"
EXTRA_CASES = ("wide", "mariadb")  # --types names of the two cases that are not one type


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


def open_results(api: Api, job_id: str, timeout: float = 900) -> Any:
    """``GET /jobs/{id}/results`` opened right after the submit, as docs/API.md's example
    does: the relay holds the response until the job has started (its columns are known)
    and streams until the job ends. Use it as a context manager; ``read`` blocks. (Until
    2026-12 this polled the job every 10 ms until it ran: up to ~15 ms a run that no
    platform spends, ~5 % of a 1M-row int4 read.)"""
    import urllib.request

    req = urllib.request.Request(
        f"{api.base_url}/api/v1/jobs/{job_id}/results",
        headers={"Authorization": f"Bearer {api.jobs_token}", "X-Tenant-ID": api.tenant or ""},
    )
    return urllib.request.urlopen(req, timeout=timeout)


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
        with open_results(api, job_id) as resp:
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


# ------------------------------------------------------------------ per-type matrix (issue 14)

# name -> (column type, expression of g = 1..rows): one column at a time, same table shape.
TYPES: dict[str, tuple[str, str]] = {
    "int4": ("int4", "g::int4"),
    "int8": ("int8", "g::int8 * 1000003"),
    "numeric": ("numeric(12,2)", "(g % 100000) / 100.0"),
    "float8": ("float8", "g / 7.0"),
    "bool": ("bool", "g % 2 = 0"),
    "text": ("text", "md5(g::text)"),  # 32 characters
    "varchar": ("varchar(40)", "'customer ' || g"),
    "uuid": ("uuid", "md5(g::text)::uuid"),
    "date": ("date", "date '2000-01-01' + g % 20000"),
    "timestamp": ("timestamp", "timestamp '2025-01-01' + g * interval '1.25 second'"),
    "timestamptz": ("timestamptz", "timestamptz '2025-01-01 00:00:00+00' + g * interval '1.25 second'"),
    "time": ("time", "time '00:00' + (g % 86400) * interval '1.5 second'"),
    "interval": ("interval", "(g % 1000) * interval '1 day 1.5 second'"),
    "jsonb": ("jsonb", "jsonb_build_object('id', g, 'name', 'item ' || g, 'tags', jsonb_build_array('a', g % 10))"),
    "json": ("json", "json_build_object('id', g, 'name', 'item ' || g, 'tags', json_build_array('a', g % 10))"),
    "bytea": ("bytea", "decode(md5(g::text), 'hex')"),
    "int4[]": ("int4[]", "ARRAY[g, g + 1, g + 2]"),
    "text[]": ("text[]", "ARRAY['a' || g, 'b' || g % 10]"),
    # types psycopg2 read as text (agent/sources/pgcopy.py, _as_text)
    "inet": ("inet", "('10.' || g % 256 || '.' || g / 256 % 256 || '.' || g % 200)::inet"),
    "enum": ("mood", "(ARRAY['sad', 'ok', 'happy'])[1 + g % 3]"),  # the schema's enum (create_type_tables)
}  # fmt: skip

MARIADB_TABLE = (
    "CREATE TABLE t (id bigint PRIMARY KEY, name varchar(40), amount decimal(12,2),"
    " created datetime(6), flag bool, score double, code char(32))"
)
MARIADB_FILL = (
    "INSERT INTO t SELECT seq, CONCAT('customer ', seq), (seq % 100000) / 100.0,"
    " TIMESTAMP '2025-01-01 00:00:00' + INTERVAL seq SECOND, seq % 2 = 0, seq / 7.0, MD5(seq)"
    " FROM seq_1_to_{rows}"
)


def create_type_tables(url: str, schema: str, rows: int, names: list[str], *, wide: bool = True) -> dict[str, str]:
    """One table per type (``v``: the type's values for g = 1..rows) and ``wide`` (all of
    them); returns case name -> the SELECT that reads it."""
    con = _connect(url)
    out: dict[str, str] = {}
    with con, con.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {schema}")
        cur.execute(f"CREATE TYPE {schema}.mood AS ENUM ('sad', 'ok', 'happy')")
        cur.execute(f"SET search_path = {schema}, public")  # ::mood
        for i, name in enumerate(names):
            kind, expr = TYPES[name]
            cur.execute(f"CREATE TABLE {schema}.t{i} AS SELECT ({expr})::{kind} AS v"
                        f" FROM generate_series(1, {int(rows)}) g")  # fmt: skip
            out[name] = f"SELECT v FROM {schema}.t{i}"
        if wide:
            cols = ", ".join(f"({TYPES[n][1]})::{TYPES[n][0]} AS c{i}" for i, n in enumerate(TYPES))
            cur.execute(f"CREATE TABLE {schema}.wide AS SELECT {cols} FROM generate_series(1, {int(rows)}) g")
            out[f"wide ({len(TYPES)} cols)"] = f"SELECT * FROM {schema}.wide"
        cur.execute("ANALYZE")
    con.close()
    return out


def _my_connect(url: str, db: str | None = None):
    import pymysql

    u = urlsplit(url)
    return pymysql.connect(host=u.hostname or "127.0.0.1", port=u.port or 3306, user=u.username or "root",
                           password=u.password or "", database=db, connect_timeout=5)  # fmt: skip


def to_json_lines(names: list[str], rows: list[Any]) -> int:
    """The direct read's JSON step (the same for every type and driver): each row as
    ``json.dumps(dict(zip(names, row)), default=str)`` plus a newline, joined."""
    dumps = json.dumps
    return len("\n".join([dumps(dict(zip(names, row, strict=True)), default=str) for row in rows]))


def direct_json(fetch_batches: Any, json_too: bool) -> tuple[int, float]:
    t0 = time.monotonic()
    n = 0
    for names, batch in fetch_batches():
        n += len(batch)
        if json_too:
            to_json_lines(names, batch)
    return n, time.monotonic() - t0


def pg_batches(url: str, sql: str) -> Any:
    def run() -> Iterator[tuple[list[str], list[Any]]]:
        con = _connect(url)
        try:
            with con, con.cursor(name="bench") as cur:
                cur.itersize = 10_000
                cur.execute(sql)
                while batch := cur.fetchmany(10_000):
                    yield [d[0] for d in cur.description], batch
        finally:
            con.close()

    return run


def my_batches(url: str, db: str, sql: str) -> Any:
    def run() -> Iterator[tuple[list[str], list[Any]]]:
        import pymysql.cursors

        con = _my_connect(url, db)
        try:
            with con.cursor(pymysql.cursors.SSCursor) as cur:
                cur.execute(sql)
                while batch := cur.fetchmany(10_000):
                    yield [d[0] for d in cur.description], batch
        finally:
            con.close()

    return run


@contextlib.contextmanager
def mariadb_table(rows: int, wanted: bool = True) -> Iterator[tuple[str, str] | None]:
    if not wanted:
        yield None
        return
    url = os.environ.get("MC_TEST_MYSQL_URL") or DEFAULT_MYSQL
    db = f"mc_bench_{secrets.token_hex(4)}"
    try:
        con = _my_connect(url)
    except Exception as exc:
        print(f"  MariaDB skipped: unreachable at {url}: {exc}".splitlines()[0])
        yield None
        return
    try:
        with con.cursor() as cur:
            cur.execute(f"CREATE DATABASE {db}")
            cur.execute(f"USE {db}")
            cur.execute(MARIADB_TABLE)
            cur.execute(MARIADB_FILL.format(rows=int(rows)))
        con.commit()
        u = urlsplit(url)
        yield u._replace(path=f"/{db}").geturl(), db
    finally:
        with con.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {db}")
        con.close()


def read_through(api: Api, meter: CpuMeter, connector: str, source: str, sql: str) -> tuple[int, float, dict[str, float]]:
    pg_before = postgres_cpu()
    meter.start()
    t0 = time.monotonic()
    job_id = api.submit(connector, source, sql=sql, options={"timeoutSeconds": 900})
    rows = 0
    with open_results(api, job_id) as resp:
        while block := resp.read(1 << 20):
            rows += block.count(b"\n")
    secs = time.monotonic() - t0
    meter.stop()
    spent = {**meter.spent, "PostgreSQL": postgres_cpu() - pg_before}
    job = api.job(job_id)
    if job["status"] != "succeeded":
        raise HarnessError(f"job ended {job['status']}: {job.get('error')}")
    return rows, secs, spent


def matrix(rows: int, only: list[str] | None, store: str, repeat: int) -> int:
    """Every case through one warm relay + agent, then its two direct reads, side by side."""
    pg_url = os.environ.get("MC_TEST_POSTGRES_URL") or DEFAULT_PG
    names = [t for t in only if t in TYPES] if only else list(TYPES)
    wide = only is None or "wide" in only
    schema = f"mc_bench_{secrets.token_hex(4)}"
    print(f"per-type throughput: {rows:,} rows a case, relay store {store}, best of {repeat}")
    print("  ratio = relay / direct (fetch + JSON); fetch-only = the driver's fetch alone")
    print(f"  {'case':<22}{'relay rows/s':>13}{'direct':>11}{'ratio':>7}{'fetch-only':>12}{'ratio':>7}"
          f"{'agent':>7}{'relay':>7}{'PG':>7}{'client':>7}  (CPU s/1M rows)")  # fmt: skip
    t0 = time.monotonic()
    cases = create_type_tables(pg_url, schema, rows, names, wide=wide)
    print(f"  tables created in {time.monotonic() - t0:.1f}s", flush=True)
    try:
        with mariadb_table(rows, only is None or "mariadb" in only) as my, tempfile.TemporaryDirectory(prefix="mc-bench-") as tmp, \
                contextlib.ExitStack() as stack_cm:  # fmt: skip
            store_url = None
            if store == "postgresql":
                store_url = stack_cm.enter_context(fresh_pg_database(pg_url, "mc_bench_relay_"))
            stack = stack_cm.enter_context(Stack(Path(tmp) / "stack", tenant="bench", heartbeat=5.0))
            stack.start_relay() if store_url is None else stack.start_relay_node(store_url)
            api = stack.api
            assert api is not None and stack.relay is not None
            sources = [Source("pg", "postgres", pg_url)]
            if my is not None:
                sources.append(Source("my", "mysql", my[0]))
            agent = stack.add_agent("bench", sources)
            assert agent.proc is not None
            meter = CpuMeter({"relay": stack.relay.proc.pid, "agent": agent.proc.pid, "client": os.getpid()})
            runs: list[tuple[str, str, str, Any]] = [
                (case, "pg", sql, pg_batches(pg_url, sql)) for case, sql in cases.items()
            ]
            if my is not None:
                my_sql = "SELECT id, name, amount, created, flag, score, code FROM t"
                runs.append(("MariaDB mixed (7 cols)", "my", my_sql, my_batches(my[0], my[1], my_sql)))
            for _, src, sql, _ in runs[:1] + runs[-1:]:
                api.run_job(agent.connector_id, src, sql=sql + " LIMIT 1000")  # warm both sources
            for case, src, sql, batches in runs:
                best: tuple[float, float, float, dict[str, float]] | None = None
                for _ in range(repeat):
                    n, secs, spent = read_through(api, meter, agent.connector_id, src, sql)
                    dn, dsecs = direct_json(batches, True)  # right after, under the same load
                    fn, fsecs = direct_json(batches, False)
                    if n != rows or dn != rows or fn != rows:
                        print(f"  WARNING {case}: rows relay={n:,} direct={dn:,} fetch={fn:,}")
                    ratio = (n / secs) / (dn / dsecs)
                    if best is None or ratio > best[0] / best[1]:
                        best = (n / secs, dn / dsecs, fn / fsecs, spent)
                assert best is not None
                relay_rate, direct_rate, fetch_rate, spent = best
                print(f"  {case:<22}{relay_rate:>13,.0f}{direct_rate:>11,.0f}{relay_rate / direct_rate:>7.2f}"
                      f"{fetch_rate:>12,.0f}{relay_rate / fetch_rate:>7.2f}"
                      f"{spent['agent'] * 1e6 / rows:>7.2f}{spent['relay'] * 1e6 / rows:>7.2f}"
                      f"{spent['PostgreSQL'] * 1e6 / rows:>7.2f}{spent['client'] * 1e6 / rows:>7.2f}", flush=True)  # fmt: skip
    finally:
        drop(pg_url, schema)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=None,
                    help="rows (default 1,000,000; with --matrix 200,000 a case)")
    ap.add_argument("--matrix", action="store_true", help="the per-type matrix (issue 14)")
    ap.add_argument("--types", default="", help="with --matrix: these cases only (comma-separated types, "
                    "'wide', 'mariadb'); default every case")
    ap.add_argument("--repeat", type=int, default=1, help="with --matrix: best of N runs a case")
    ap.add_argument("--store", choices=("sqlite", "postgresql", "both"), default="both",
                    help="the relay's store (default both, one after the other)")  # fmt: skip
    args = ap.parse_args(argv)
    if args.matrix:
        only = [t for t in args.types.split(",") if t] or None
        for t in only or []:
            if t not in TYPES and t not in EXTRA_CASES:
                ap.error(f"unknown case {t!r}; one of {', '.join([*TYPES, *EXTRA_CASES])}")
        for store in ["sqlite", "postgresql"] if args.store == "both" else [args.store]:
            matrix(args.rows or 200_000, only, store, max(1, args.repeat))
        return 0
    args.rows = args.rows or 1_000_000
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
