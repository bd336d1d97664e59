"""Queries, discovery and connection tests through a real relay and agent, checked value by value."""

from __future__ import annotations

import csv
import io
import json

import pytest
from websockets.sync.client import connect as ws_connect

from relay.jobs.csv_cells import FORMULA_STARTS, PLAIN_NUMBER
from tests.harness import scaled, wait_until
from tests.system import dataset
from tests.system.conftest import SystemEnv

pytestmark = pytest.mark.system

SQL = f"SELECT {dataset.SELECT_COLUMNS} FROM items ORDER BY id"


def _assert_same(columns: list[str], expected: list[tuple], rows: list[dict]) -> None:
    problems = dataset.mismatches(columns, expected, rows)
    assert not problems, "\n".join(problems)


def test_sqlite_query_returns_exactly_the_source_rows(system: SystemEnv) -> None:
    """Every row and value of a 3,000-row SQLite read matches a direct read."""
    columns, expected = dataset.sqlite_read(system.sqlite_path, SQL)
    job, rows = system.api.run_job(system.connector_id, "erp", sql=SQL)
    assert job["rowCount"] == len(expected) == dataset.ROWS
    assert [c["name"] for c in job["columns"]] == columns
    _assert_same(columns, expected, rows)


@pytest.mark.postgres
def test_postgres_query_returns_exactly_the_source_rows(system: SystemEnv, pg_url: str) -> None:
    """PostgreSQL numerics, dates, timestamps (with and without zone), bytea, uuid, jsonb."""
    sql = f"SELECT {dataset.SELECT_COLUMNS}, created_tz, uid, doc FROM {system.pg_schema}.items ORDER BY id"
    columns, expected = dataset.pg_read(pg_url, sql)
    job, rows = system.api.run_job(system.connector_id, "pg", sql=sql)
    assert job["rowCount"] == dataset.ROWS
    _assert_same(columns, expected, rows)


@pytest.mark.postgres
def test_postgres_json_values_a_reader_cannot_take_arrive_as_the_cursor_path_writes_them(
    system: SystemEnv, pg_url: str
) -> None:
    """json/jsonb go through the COPY fast path as PostgreSQL's text (agent/sources/pgjson.py):
    raw newlines inside a json value, integers past 64 bits, 1e400, a lone surrogate and
    600 levels of nesting all pass the relay's row check and arrive readable."""
    sql = (
        "SELECT k, j, CASE WHEN k IN (1, 2) THEN j::jsonb END AS jb FROM (VALUES "
        "(1, E'{\\n\\t\"a\" :\\r\\n [1, \"x\\\\ny\"]\\n}'::json), (2, '123456789012345678901234567890'::json), "
        "(3, '\"\\ud800\"'::json), (4, '1e400'::json), (5, (repeat('[', 600) || repeat(']', 600))::json)) v(k, j) "
        "ORDER BY k"
    )
    job, rows = system.api.run_job(system.connector_id, "pg", sql=sql)
    assert job["status"] == "succeeded" and job["rowCount"] == 5
    deep: list = []
    for _ in range(599):
        deep = [deep]
    assert rows == [
        {"k": 1, "j": {"a": [1, "x\ny"]}, "jb": {"a": [1, "x\ny"]}},
        {"k": 2, "j": "123456789012345678901234567890", "jb": "123456789012345678901234567890"},
        {"k": 3, "j": "\ufffd", "jb": None},
        {"k": 4, "j": None, "jb": None},
        {"k": 5, "j": deep, "jb": None},
    ]


@pytest.mark.mysql
def test_mariadb_query_returns_exactly_the_source_rows(system: SystemEnv, mysql_url: str) -> None:
    """MariaDB decimals, dates, datetime(6), varbinary and utf8mb4 text."""
    sql = f"SELECT {dataset.SELECT_COLUMNS} FROM {system.mysql_table} ORDER BY id"
    columns, expected = dataset.mysql_read(mysql_url, sql)
    job, rows = system.api.run_job(system.connector_id, "maria", sql=sql)
    assert job["rowCount"] == dataset.ROWS
    _assert_same(columns, expected, rows)


def test_named_parameters_are_bound(system: SystemEnv) -> None:
    """:name parameters reach the database as bound values, not text."""
    sql = "SELECT id, name FROM items WHERE id > :min_id AND name LIKE :pat ORDER BY id"
    _, rows = system.api.run_job(
        system.connector_id, "erp", sql=sql, params={"min_id": 2990, "pat": "%'%"}
    )
    columns, expected = dataset.sqlite_read(
        system.sqlite_path, "SELECT id, name FROM items WHERE id > 2990 AND name LIKE '%''%' ORDER BY id"
    )
    _assert_same(columns, expected, rows)


BIG = 123456789012345678901234567890  # past 64 bits: orjson alone reads it as a float


@pytest.mark.parametrize("source", ["pg", "maria"])
def test_integer_parameters_past_64_bits_stay_exact(system: SystemEnv, source: str, request) -> None:
    """A JSON integer parameter past 64 bits (a NUMERIC(30) key) is bound exactly, on the
    relay's reading of the request and the agent's of the sealed query (it was bound as
    1.2345678901234568e+29 and matched other rows or none)."""
    request.getfixturevalue("pg_url" if source == "pg" else "mysql_url")
    text = "(:big)::text" if source == "pg" else "CAST(:big AS CHAR)"
    neg = "(:neg)::text" if source == "pg" else "CAST(:neg AS CHAR)"
    sql = f"SELECT {text} AS big, {neg} AS neg, :small AS small"
    job, rows = system.api.run_job(system.connector_id, source, sql=sql,
                                   params={"big": BIG, "neg": -(2**63) - 1, "small": 7})  # fmt: skip
    assert job["status"] == "succeeded", job
    assert rows == [{"big": str(BIG), "neg": str(-(2**63) - 1), "small": 7}]


def test_csv_matches_the_rows(system: SystemEnv) -> None:
    """?format=csv has a header row and the same values as NDJSON, row for row."""
    job_id = system.api.submit(system.connector_id, "erp", sql=SQL)
    assert system.api.wait_job(job_id)["status"] == "succeeded"
    rows = system.api.results(job_id)
    text = system.api.results_csv(job_id)
    table = list(csv.reader(io.StringIO(text, newline="")))
    assert table[0] == dataset.SELECT_COLUMNS.split(", ")
    assert len(table) - 1 == len(rows)
    for i, (cells, row) in enumerate(zip(table[1:], rows, strict=True)):
        for cell, (col, value) in zip(cells, row.items(), strict=True):
            if value is None:
                assert cell == "", f"row {i} {col}: NULL as {cell!r}"
            elif isinstance(value, float):
                assert float(cell) == value, f"row {i} {col}"
            elif str(value).startswith(FORMULA_STARTS) and not PLAIN_NUMBER.fullmatch(str(value)):
                # A cell a spreadsheet could run is neutralised (docs/SECURITY.md, API hygiene).
                assert cell == "'" + str(value), f"row {i} {col}: {cell!r} not neutralised"
            else:
                assert cell == str(value), f"row {i} {col}: {cell!r} != {value!r}"
    raw = list(csv.reader(io.StringIO(system.api.results_csv(job_id, raw=True), newline="")))
    for cells, row in zip(raw[1:], rows, strict=True):
        for cell, value in zip(cells, row.values(), strict=True):
            if value is not None and not isinstance(value, float):
                assert cell == str(value)


def test_results_offset_starts_at_row_n(system: SystemEnv) -> None:
    job_id = system.api.submit(system.connector_id, "erp", sql="SELECT id FROM items ORDER BY id")
    system.api.wait_job(job_id)
    rows = system.api.results(job_id, offset=2500)
    assert [r["id"] for r in rows] == list(range(2501, dataset.ROWS + 1))


def test_discover_lists_tables_and_columns(system: SystemEnv) -> None:
    """discover returns one row per table with its columns and primary key, no row data."""
    _job, rows = system.api.run_job(system.connector_id, "erp", "discover")
    tables = {r["name"]: r for r in rows}
    assert "items" in tables, rows
    items = tables["items"]
    names = [c["name"] if isinstance(c, dict) else c for c in items["columns"]]
    assert names[:3] == ["id", "name", "amount"]
    assert items["primaryKey"] in (["id"], "id")
    assert "Zoë" not in str(rows)


@pytest.mark.postgres
def test_discover_on_postgres_sees_the_schema(system: SystemEnv, pg_url: str) -> None:
    _, rows = system.api.run_job(system.connector_id, "pg", "discover", timeout=90)
    assert any(r["name"] == "items" and r.get("schema") == system.pg_schema for r in rows)


@pytest.mark.parametrize("source", ["erp", "pg", "maria"])
def test_test_operation_reports_a_connection(system: SystemEnv, source: str, request) -> None:
    """test returns one row: connected, latencyMs, serverVersion, tablesFound."""
    if source == "pg":
        request.getfixturevalue("pg_url")
    if source == "maria":
        request.getfixturevalue("mysql_url")
    _, rows = system.api.run_job(system.connector_id, source, "test")
    assert len(rows) == 1
    row = rows[0]
    assert row["connected"] is True
    assert isinstance(row["latencyMs"], (int, float)) and row["latencyMs"] >= 0
    assert row["serverVersion"]
    assert row["tablesFound"] >= 1


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM items",
        "UPDATE items SET name = 'x'",
        "INSERT INTO items (id, name) VALUES (999999, 'x')",
        "DROP TABLE items",
        "SELECT 1; DELETE FROM items",
        "WITH x AS (SELECT 1) DELETE FROM items",
    ],
)
def test_write_statement_is_rejected_and_changes_nothing(system: SystemEnv, sql: str) -> None:
    job_id = system.api.submit(system.connector_id, "erp", sql=sql)
    job = system.api.wait_job(job_id)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "WRITE_OPERATION_REJECTED", job["error"]
    _, rows = dataset.sqlite_read(system.sqlite_path, "SELECT count(*), sum(length(name)) FROM items")
    _, fresh = dataset.sqlite_read(system.sqlite_path, "SELECT count(*) FROM items WHERE name = 'x'")
    assert rows[0][0] == dataset.ROWS and fresh[0][0] == 0


@pytest.mark.postgres
def test_write_disguised_in_a_function_fails_on_postgres(system: SystemEnv, pg_url: str) -> None:
    """Even a write the statement check cannot see is stopped by the read-only transaction."""
    fn = f"{system.pg_schema}.sneaky"
    dataset.pg_read(pg_url, "SELECT 1")
    con = dataset._pg_connect(pg_url)
    try:
        with con, con.cursor() as cur:
            cur.execute(
                f"CREATE FUNCTION {fn}() RETURNS int LANGUAGE sql AS "
                f"$$ DELETE FROM {system.pg_schema}.items WHERE id = 1 RETURNING 1 $$"
            )
    finally:
        con.close()
    job = system.api.wait_job(system.api.submit(system.connector_id, "pg", sql=f"SELECT {fn}()"))
    assert job["status"] == "failed"
    assert job["error"]["code"] in ("WRITE_OPERATION_REJECTED", "QUERY_FAILED"), job["error"]
    assert dataset.pg_scalar(pg_url, f"SELECT count(*) FROM {system.pg_schema}.items") == dataset.ROWS


def test_unknown_source_fails_source_not_found(system: SystemEnv) -> None:
    """A source the agent does not have fails SOURCE_NOT_FOUND (at submit or as a job)."""
    body = {"connectorId": system.connector_id, "source": "nope", "operation": "query",
            "query": {"sql": "SELECT 1", "params": {}}}  # fmt: skip
    resp = system.api.call("POST", "/jobs", body)
    if resp.status >= 400:
        assert resp.json["error"]["code"] == "SOURCE_NOT_FOUND", resp.json
        return
    job = system.api.wait_job(resp.data["id"])
    assert job["status"] == "failed"
    assert job["error"]["code"] == "SOURCE_NOT_FOUND"


@pytest.mark.parametrize(
    ("source", "table"),
    [
        ("erp", None),  # SQLite: the cursor path
        pytest.param("pg", "pg", marks=pytest.mark.postgres),  # the COPY path
        pytest.param("pg-cursor", "pg", marks=pytest.mark.postgres),  # numeric[]: the cursor path
        pytest.param("maria", "maria", marks=pytest.mark.mysql),
    ],
)
def test_a_result_cut_by_max_rows_says_so(system: SystemEnv, source: str, table: str | None) -> None:
    """maxRows below the row count: ``truncated`` on the job, in ``job_completed`` and in
    the results' ``X-Result-Truncated``; at the row count or above, or with no maxRows, not."""
    name = {"pg": f"{system.pg_schema}.items", "maria": system.mysql_table}.get(table or "", "items")
    extra = ", ARRAY[id::numeric] AS arr" if source == "pg-cursor" else ""
    sql = f"SELECT id{extra} FROM {name} WHERE id <= 10 ORDER BY id"
    src = "pg" if source == "pg-cursor" else source
    relay = system.stack.relay
    assert relay is not None
    token = relay.token(system.stack.tenant, "admin")
    url = f"{relay.ws_url}/api/v1/events?token={token}"
    with ws_connect(url, additional_headers={"X-Tenant-ID": system.stack.tenant}) as events:
        for max_rows, rows, cut in ((3, 3, True), (9, 9, True), (10, 10, False), (11, 10, False), (None, 10, False)):
            options = {} if max_rows is None else {"maxRows": max_rows}
            job, got = system.api.run_job(system.connector_id, src, sql=sql, options=options)
            assert [r["id"] for r in got] == list(range(1, rows + 1)), max_rows
            assert (job["rowCount"], job["truncated"]) == (rows, cut), max_rows
            resp = system.api.call("GET", f"/jobs/{job['id']}/results", expect=200)
            assert resp.headers.get("X-Result-Truncated") == ("true" if cut else "false")

            def completed(job_id: str = job["id"]) -> dict | None:
                msg = json.loads(events.recv(timeout=scaled(10)))
                ok = msg["type"] == "job_completed" and msg["data"]["jobId"] == job_id
                return msg["data"] if ok else None

            data = wait_until(completed, 10, what="job_completed")
            assert (data["rowCount"], data["truncated"]) == (rows, cut), max_rows
