"""json and jsonb columns on the COPY fast path (agent/sources/pgjson.py) against the real
database: the rule of tests/agent/sources/test_pg_copy.py (every row's object equals the
cursor path's, after parsing, int vs float included), on the values a JSON reader cannot
take as PostgreSQL keeps them (integers past 64 bits, ``1e400``, lone surrogates, deep
nesting), on whitespace that would end a line (a ``json`` value's raw newlines), and on
generated documents; every line the fast path writes passes the relay's own row check."""

from __future__ import annotations

import json
import uuid
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.sources import pgjson
from shared.errors import JobError
from shared.rows import object_lines_count
from tests.agent.sources.test_pg_copy import _canon, _exec, _source, cursor_rows

pytestmark = pytest.mark.postgres


def fast_body(src: Any, request: dict[str, Any]) -> bytes:
    """The object lines the COPY fast path writes (fails if it was not taken)."""
    stream = src.prepare(request)
    try:
        stream.start()
        assert stream.copy is not None and stream.payloads is not None, "the COPY fast path was not taken"
        assert stream.copy.json_values
        out: list[bytes] = []
        stream.payloads(lambda payload, rows: out.append(payload) or True)
    finally:
        stream.close()
    return b"".join(out)


def assert_same(src: Any, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
    request = {"sql": sql, **({"params": params} if params else {})}
    body = fast_body(src, request)
    fast = [orjson.loads(line) for line in body.splitlines()]
    if body:
        assert object_lines_count(body) == len(fast)  # what the relay checks on intake
    _, slow = cursor_rows(src, request)
    assert [_canon(r) for r in fast] == [_canon(r) for r in slow], (fast, slow)
    return fast


# (the json text, whether jsonb takes it too)
EDGE_JSON: list[tuple[str, bool]] = [
    ("{}", True), ("[]", True), ("null", True), ('"str"', True), ("1", True), ("1.0", True),
    ("-0", True), ("-0.0", True), ("1E2", True), ("1e-7", True), ("0.1000", True),
    ("1e308", True), ("1e400", True), ("-1e400", True), ("1e-400", True),
    ("18446744073709551615", True), ("18446744073709551616", True),
    ("123456789012345678901234567890", True), ("-9223372036854775809", True),
    ("123456789012345678901234567890.5", True),
    ('"\\ud800"', False), ('"x \\udfff y"', False), ('"\\ud83d\\ude00"', True), ('"\\u0000"', False),
    ('"\\u0001 \\t \\n \\\\ \\" \\/"', True), ('"漢字 😀 \u2028 é"', True),
    ('{"a":1,"a":2}', True), ('{"b": 1, "a": 2}', True), ('{"k": [1, {"x": null}, "y"]}', True),
    ("{\n\t\"a\" :\r\n [1,\n 2]\n}", True), ("\n[1, 2]\n", True), ('[1,\t"a\\tb"]', True),
    ('"12345678901234567890123 e000 e+123 E-400"', True), ('"\\\\ud800"', True),
    ('"back\\\\slash \\\\n"', True), ('{"},{\\"k\\":": 1}', True),
]  # fmt: skip


def test_json_and_jsonb_match_the_cursor_path_on_edge_values(pg_url: str) -> None:
    """Each edge text as json, as jsonb where jsonb takes it, beside an int and a text,
    and each json column alone: equal to the cursor path; a few values spelled out."""
    schema = "mc_copy_json_" + uuid.uuid4().hex[:10]
    _exec(pg_url, f"CREATE SCHEMA {schema}", f"CREATE TABLE {schema}.j (k int, j json, jb jsonb, t text)")
    _exec(pg_url, f"INSERT INTO {schema}.j VALUES (:k, CAST(:j AS json), CAST(:jb AS jsonb), :t)",
          params=[{"k": k, "j": text, "jb": text if both else None, "t": text}
                  for k, (text, both) in enumerate(EDGE_JSON)])  # fmt: skip
    _exec(pg_url, f"INSERT INTO {schema}.j (k) VALUES ({len(EDGE_JSON)})")  # NULL everywhere
    src = _source(pg_url)
    try:
        rows = assert_same(src, f"SELECT k, j, jb, t FROM {schema}.j ORDER BY k")
        assert len(rows) == len(EDGE_JSON) + 1
        got = {text: r["j"] for (text, _), r in zip(EDGE_JSON, rows, strict=False)}
        assert got["1e400"] is None and got["1e-400"] == 0.0 and got["-0.0"] == -0.0
        assert got["123456789012345678901234567890"] == "123456789012345678901234567890"
        assert got["18446744073709551615"] == 18446744073709551615
        assert got['"\\ud800"'] == "\ufffd" and got['"\\ud83d\\ude00"'] == "😀"
        assert got["{\n\t\"a\" :\r\n [1,\n 2]\n}"] == {"a": [1, 2]}
        assert got['{"a":1,"a":2}'] == {"a": 2} and got['"\\\\ud800"'] == "\\ud800"
        assert rows[-1] == {"k": len(EDGE_JSON), "j": None, "jb": None, "t": None}
        for col in ("j", "jb"):
            assert_same(src, f"SELECT {col} FROM {schema}.j ORDER BY k")
    finally:
        src.close()
        _exec(pg_url, f"DROP SCHEMA {schema} CASCADE")


_key = st.lists(st.sampled_from(['"', "\\", "\n", "\t", "k", "},{", "é", "😀", "\u2028", "0"]), max_size=4).map("".join)
_scalar = (
    st.none() | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.sampled_from(['"', "\\", "\n", "\r", "\t", "\x01", "\x7f", "u", "d", "8", "e", "1", " ",
                               "\u00a0", "\u2028", "é", "漢", "😀", "\U0010fffd"]), max_size=10)
)  # fmt: skip
_documents = st.recursive(_scalar, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_key, inner, max_size=4),
                          max_leaves=12)  # fmt: skip
_layouts = st.sampled_from([{}, {"indent": 2}, {"indent": "\t"}, {"separators": (",", ":")},
                            {"indent": 1, "ensure_ascii": False}, {"ensure_ascii": False}])  # fmt: skip


def test_generated_documents_match_the_cursor_path(pg_url: str) -> None:
    """Documents of nasty strings, big integers and floats, laid out with newlines and
    tabs or compact, escaped or not, as json and as jsonb: equal to the cursor path and to
    the document itself (big integers as the cursor path writes them: strings)."""
    schema = "mc_copy_json_g_" + uuid.uuid4().hex[:10]
    _exec(pg_url, f"CREATE SCHEMA {schema}", f"CREATE TABLE {schema}.v (k int, j json, jb jsonb)")
    src = _source(pg_url)

    @given(docs=st.lists(st.tuples(_documents, _layouts), min_size=1, max_size=8))
    @settings(max_examples=60, deadline=None)
    def check(docs: list[tuple[Any, dict[str, Any]]]) -> None:
        _exec(pg_url, f"DELETE FROM {schema}.v")
        texts = [json.dumps(doc, **layout) for doc, layout in docs]
        _exec(pg_url, f"INSERT INTO {schema}.v VALUES (:k, CAST(:j AS json), CAST(:j AS jsonb))",
              params=[{"k": k, "j": t} for k, t in enumerate(texts)])  # fmt: skip
        rows = assert_same(src, f"SELECT k, j, jb FROM {schema}.v ORDER BY k")
        for (doc, _), row in zip(docs, rows, strict=True):
            assert _canon(row["j"]) == _canon(_as_written(doc))  # jsonb: numbers as numeric, keys sorted

    try:
        check()
    finally:
        src.close()
        _exec(pg_url, f"DROP SCHEMA {schema} CASCADE")


def _as_written(value: Any) -> Any:
    """A document as the cursor path writes it: integers past 64 bits as strings."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else str(value)
    if isinstance(value, dict):
        return {k: _as_written(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_written(v) for v in value]
    return value


def test_nesting_and_long_lines(pg_url: str) -> None:
    """600 levels (past what orjson writes, inside the relay's limit) pass as PostgreSQL
    wrote them; 1100 levels fail the job with a clear error (the relay would refuse the
    line); an array of 1500 objects (brackets past the limit, two levels) is read again
    and matches the cursor path."""
    src = _source(pg_url)
    try:
        body = fast_body(src, {"sql": "SELECT (repeat('[', 600) || repeat(']', 600))::json AS j"})
        assert body == b'{"j":' + b"[" * 600 + b"]" * 600 + b"}\n"
        assert object_lines_count(body) == 1
        with pytest.raises(JobError) as info:
            fast_body(src, {"sql": "SELECT (repeat('[', 1100) || repeat(']', 1100))::json AS j"})
        assert info.value.code == "QUERY_FAILED" and "nest" in info.value.message
        wide = assert_same(src, "SELECT json_agg(json_build_object('k', g)) AS j FROM generate_series(1, 1500) g")
        assert wide[0]["j"][1499] == {"k": 1500}
    finally:
        src.close()


def test_unescaped_reads_copy_text_escapes() -> None:
    assert pgjson.unescaped(b'{"a":"x\\\\ny"}\n') == b'{"a":"x\\ny"}\n'
    assert pgjson.unescaped(b'{"a":\\n\\t[1,\\r\\n2]}\n') == b'{"a":  [1,  2]}\n'
    assert pgjson.unescaped(b'{"a":"\\\\\\\\"}\\n\n') == b'{"a":"\\\\"} \n'
    for bad in (b'{"a":1}\\b\n', b'{"a":1}\\\\\\v\n', b'{"a":\\x01}\n'):
        with pytest.raises(JobError):
            pgjson.unescaped(bad)


def test_only_lines_that_may_hold_an_unreadable_number_are_read_again() -> None:
    """Hex in strings (an md5's ``3e400``, a uuid's ``-8e885``) is not an exponent: those
    lines pass as PostgreSQL wrote them (blanks kept); a number with 19 integer digits or
    an exponent of 290 or more, and an escaped surrogate, send their line (only theirs)
    to ``json.loads`` (written compact, as the cursor path writes it)."""
    plain = b'{"t":"a3e400b","u":"0e4f-8e885-1e299","j":{"a": [1e289, 12345678901234567.5]}}\n'
    assert pgjson.checked(plain) == plain
    big = b'{"j": {"a": 1E+400}}\n'
    wide = b'{"j": [1, -12345678901234567890, 1234567890123456789]}\n'
    low = b'{"j": "\\\\udc00 x"}\n'  # as COPY writes it: its backslash doubled
    body = pgjson.checked(plain + big + plain + wide + low)
    assert body == plain + b'{"j":{"a":null}}\n' + plain + b'{"j":[1,"-12345678901234567890",1234567890123456789]}\n' + b'{"j":"\xef\xbf\xbd x"}\n'


def test_a_long_run_of_digits_in_a_string_costs_one_pass() -> None:
    """A megabyte of digits in a text value is one run, looked at once (a first version
    stepped through it a digit at a time, ~1M Python steps a buffer)."""
    line = b'{"t":"' + b"1234567890" * 100_000 + b'","j":{"a": [1, 2]}}\n'
    assert pgjson._unreadable_at(line, True) == []
    assert pgjson.checked(line) == line
