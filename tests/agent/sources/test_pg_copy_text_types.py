"""Types psycopg2 did not know on the COPY fast path (``pgcopy._as_text``): the cursor path
reads PostgreSQL's text of them as a str (``pgconn.PSYCOPG2_LIKE``), and the COPY writes
the same text as a JSON string. Held to the cursor path (tests/agent/sources/test_pg_copy.py's
rule) on enums, network and bit types, money, xml, geometry, records (one of NULL fields
too), tsvector, pg_lsn, arrays of an enum, beside listed types and alone, with NULLs."""

from __future__ import annotations

import uuid

import pytest

from agent.sources import pgcopy
from tests.agent.sources.test_pg_copy import _exec, _source, assert_same, fast_rows

pytestmark = pytest.mark.postgres

LABELS = ["plain", 'quo"te', "back\\slash", "new\nline", "tab\tx", "é 漢字 😀", "\u2028", "null", ""]


def test_types_psycopg2_did_not_know_match_the_cursor_path(pg_url: str) -> None:
    schema = "mc_copy_tt_" + uuid.uuid4().hex[:10]
    labels = ", ".join("'" + label.replace("'", "''") + "'" for label in LABELS)
    _exec(
        pg_url,
        f"CREATE SCHEMA {schema}",
        f"CREATE TYPE {schema}.mood AS ENUM ({labels})",
        f"CREATE TYPE {schema}.pair AS (a int, b text)",
        f"CREATE TABLE {schema}.t (k int, e {schema}.mood, ip inet, net cidr, mac macaddr, m money, "
        f"b bit(3), vb varbit, x xml, p point, r {schema}.pair, ts tsvector, lsn pg_lsn, ea {schema}.mood[])",
    )
    values = [
        "'192.168.0.1', '10.0.0.0/8', '08:00:2b:01:02:03', 12.5, B'101', B'1', '<a>x&amp;y</a>', point(1, 2), "
        "ROW(1, 'a\"b'), 'a & b', '0/16B3748'",
        "'::1', '2001:db8::/32', 'ff:ff:ff:ff:ff:ff', -0.01, B'000', B'', E'<b>\\n\\t\"q\" \\\\ </b>', point(-1.5, 1e300), "
        "ROW(NULL, NULL), '', '0/0'",
        "'10.1.2.3/16', '10.1.0.0/16', '00:00:00:00:00:00', 0, B'111', B'10101010101', '<c/>', point(0, 0), "
        "ROW(NULL, E'x\\ny'), 'x:1 y:2', 'FFFFFFFF/FFFFFFFF'",
    ]
    inserts = [
        f"INSERT INTO {schema}.t VALUES ({k}, CAST(:e{k} AS {schema}.mood), {v}, ARRAY[CAST(:e{k} AS {schema}.mood)])"
        for k, v in enumerate(values)
    ]
    try:
        for k, statement in enumerate(inserts):
            _exec(pg_url, statement, params=[{f"e{k}": LABELS[k]}])
        _exec(pg_url, f"INSERT INTO {schema}.t (k, e) VALUES (10, :e)", params=[{"e": label} for label in LABELS[3:]])
        _exec(pg_url, f"INSERT INTO {schema}.t (k) VALUES (99)")  # NULL in every column
        src = _source(pg_url)
        try:
            rows = assert_same(src, {"sql": f"SELECT * FROM {schema}.t ORDER BY k, e"})
            assert rows[0]["ip"] == "192.168.0.1"  # the output function's text, not inet's ::text (/32)
            assert rows[1]["r"] == "(,)" and rows[0]["m"].endswith("12.50") and rows[0]["b"] == "101"
            assert rows[1]["x"] == '<b>\n\t"q" \\ </b>' and rows[-1]["e"] is None and rows[-1]["r"] is None
            assert sorted(r["e"] for r in rows if 10 <= r["k"] < 99) == sorted(LABELS[3:])
            for col in ("e", "ip", "r", "x", "ea"):
                assert_same(src, {"sql": f"SELECT {col} FROM {schema}.t ORDER BY k, e"})
            columns, _ = fast_rows(src, {"sql": f"SELECT e, ip, m FROM {schema}.t"})
            assert [c["type"] for c in columns] == ["string"] * 3
        finally:
            src.close()
    finally:
        _exec(pg_url, f"DROP SCHEMA {schema} CASCADE")


def test_types_psycopg2_made_values_of_stay_on_the_cursor_path() -> None:
    """Only types read as text take ``_as_text``: a range, timetz or numeric[] (psycopg2
    made Python values of them) has no expression; a listed type keeps its own."""
    for oid in (3904, 1266, 1231, 3807, 18):  # int4range, timetz, numeric[], jsonb[], "char"
        assert pgcopy.expression(oid) is None
    assert pgcopy.expression(23) is pgcopy.EXPRESSIONS[23]
    assert pgcopy.expression(869) is pgcopy._as_text  # inet
    assert pgcopy.expression(987654) is pgcopy._as_text  # an enum or extension type's oid
