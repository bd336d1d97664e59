"""MariaDB/MySQL values as the agent writes them, and the column types it reports.

Each test makes its own database on the real MariaDB server, runs the query through the
source as a job would (guard, ``SqlStream``, the connection's decoders) and checks both
the JSON the rows become and the ``columns`` the relay is told, so the two cannot
disagree. The tables are filled from a separate PyMySQL connection, with ``sql_mode``
relaxed on that session only where MariaDB would refuse a zero date.
"""

from __future__ import annotations

from typing import Any

import pytest

from agent.sources import create_source
from agent.sources.sql import SqlSource

from .conftest import fill, job_rows

pytestmark = pytest.mark.mysql


def job(url: str, sql: str) -> tuple[dict[str, str], list[dict[str, Any]], bytes]:
    """Run ``sql`` as a job: the column types, the rows as the relay gets them, the payload."""
    src = create_source("mc_types", "mysql", url)
    assert isinstance(src, SqlSource)
    try:
        return job_rows(src, sql)
    finally:
        src.close()


def test_bit_columns_are_numbers_and_bit_1_is_a_boolean(maria_db: tuple[str, Any]) -> None:
    """BIT(1) is a boolean column of true/false, BIT(n) an integer column; BIT(64)'s
    largest value is the exact integer (PyMySQL's raw bytes went out as base64)."""
    url, conn = maria_db
    fill(conn, "CREATE TABLE t (id int PRIMARY KEY, flag bit(1), b8 bit(8), b64 bit(64))",
          "INSERT INTO t VALUES (1, b'1', b'10000001', b'" + "1" * 64 + "'), "
          "(2, b'0', b'0', b'0'), (3, NULL, NULL, NULL)")  # fmt: skip
    sql = "SELECT flag, b8, b64, MAX(flag) OVER () AS m FROM t ORDER BY id"
    types, rows, payload = job(url, sql)
    assert types == {"flag": "boolean", "b8": "integer", "b64": "integer", "m": "boolean"}
    assert rows == [
        {"flag": True, "b8": 129, "b64": 2**64 - 1, "m": True},
        {"flag": False, "b8": 0, "b64": 0, "m": True},
        {"flag": None, "b8": None, "b64": None, "m": True},
    ]
    assert b'"b64":18446744073709551615,' in payload


def test_zero_dates_are_null_and_partial_dates_are_iso_shaped(maria_db: tuple[str, Any]) -> None:
    """'0000-00-00' (and its datetime and timestamp forms) is null; a partial date is the
    server's text with the ISO 'T', in the same date/datetime column (it was the raw text,
    '2024-05-00 10:00:00')."""
    url, conn = maria_db
    fill(conn, "CREATE TABLE t (id int PRIMARY KEY, d date, dt datetime, dt6 datetime(6), ts timestamp NULL)",
          "INSERT INTO t VALUES (1, '0000-00-00', '0000-00-00 00:00:00', '0000-00-00 00:00:00', "
          "'0000-00-00 00:00:00'), (2, '2024-00-00', '2024-05-00 10:00:00', '2024-05-00 10:00:00.25', NULL), "
          "(3, '2024-05-01', '2024-05-01 10:00:00', '2024-05-01 10:00:00.25', '2024-05-01 10:00:00')")  # fmt: skip
    types, rows, _ = job(url, "SELECT d, dt, dt6, ts FROM t ORDER BY id")
    assert types == {"d": "date", "dt": "datetime", "dt6": "datetime", "ts": "datetime"}
    assert rows == [
        {"d": None, "dt": None, "dt6": None, "ts": None},
        {"d": "2024-00-00", "dt": "2024-05-00T10:00:00", "dt6": "2024-05-00T10:00:00.250000", "ts": None},
        {"d": "2024-05-01", "dt": "2024-05-01T10:00:00", "dt6": "2024-05-01T10:00:00.250000",
         "ts": "2024-05-01T10:00:00"},
    ]  # fmt: skip


def test_binary_columns_are_bytes_when_the_first_rows_are_null(maria_db: tuple[str, Any]) -> None:
    """BINARY, VARBINARY, BLOB (and GEOMETRY, WKB bytes) are typed from the column's
    metadata (charset 63), not from the first rows' values: 300 NULL rows first were
    typed string (the text columns stay string)."""
    url, conn = maria_db
    fill(conn, "CREATE TABLE t (id int PRIMARY KEY, bin binary(2), vb varbinary(4), bl blob, "
                "g geometry NULL, tx text, vc varchar(4))",
          "INSERT INTO t (id) SELECT seq FROM seq_1_to_300",
          "INSERT INTO t VALUES (301, x'0102', x'ff', x'00', ST_GeomFromText('POINT(1 1)'), 'a', 'b')")  # fmt: skip
    sql = "SELECT bin, vb, bl, g, tx, vc, CAST(vc AS BINARY) AS cb FROM t ORDER BY id"
    types, rows, _ = job(url, sql)
    assert types == {"bin": "bytes", "vb": "bytes", "bl": "bytes", "g": "bytes", "tx": "string",
                     "vc": "string", "cb": "bytes"}  # fmt: skip
    last = rows[-1]
    got = (last["bin"], last["vb"], last["bl"], last["tx"], last["cb"])
    assert got == ("AQI=", "/w==", "AA==", "a", "Yg==")
    assert len(rows) == 301 and rows[0]["bin"] is None


def test_neighbour_types_keep_their_values(maria_db: tuple[str, Any]) -> None:
    """The neighbours already right, held: YEAR an integer, TIME an exact duration past
    24 h and below zero, DECIMAL(65,30) exact, BIGINT UNSIGNED's max a number, MariaDB's
    JSON (LONGTEXT with a check) a string column of the JSON text."""
    url, conn = maria_db
    fill(conn, "CREATE TABLE t (id int PRIMARY KEY, y year, t time(6), d decimal(65,30), "
                "u bigint unsigned, j json)",
          "INSERT INTO t VALUES (1, 2024, '-838:59:59', '12345678901234567890123456789012345.123456789012345678901234567890', "
          "18446744073709551615, '{\"a\": 1}'), (2, 0, '25:00:00.5', '-0.000000000000000000000000000001', 0, NULL), "
          "(3, NULL, '-00:00:00.5', NULL, NULL, NULL)")  # fmt: skip
    types, rows, payload = job(url, "SELECT y, t, d, u, j FROM t ORDER BY id")
    assert types == {"y": "integer", "t": "interval", "d": "decimal", "u": "integer", "j": "string"}
    assert rows == [
        {"y": 2024, "t": "-P34DT22H59M59S", "d": "12345678901234567890123456789012345.123456789012345678901234567890",
         "u": 2**64 - 1, "j": '{"a": 1}'},
        {"y": 0, "t": "P1DT1H0M0.5S", "d": "-0.000000000000000000000000000001", "u": 0, "j": None},
        {"y": None, "t": "-P0DT0H0M0.5S", "d": None, "u": None, "j": None},
    ]  # fmt: skip
    assert b'"u":18446744073709551615,' in payload
