"""The SAP Business One adapter against the Service Layer fake (tests/fakes/sap_b1.py)."""

from __future__ import annotations

import logging
import tracemalloc
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from agent.sources.sap_b1 import SapB1Source, resolve_next
from agent.sources.webclient import Endpoint
from shared.errors import JobError
from tests.fakes.sap_b1 import COMPANY, USER, SapB1State, start_fake_sap_b1
from tests.fakes.tls import TlsFiles

from .conftest import cancel_during_connect, join, run_in_thread, silent_port


def make(url: str, state: SapB1State | None = None, **options: str) -> SapB1Source:
    opts = {"company_db": COMPANY, "username": USER, **options}
    password = state.password if state is not None else "s3cret!"
    return SapB1Source("erp", "sap_b1", url, password=password, options=opts)


def read_all(source: SapB1Source, request: dict[str, Any], batch: int = 1000) -> tuple[list, list]:
    columns, batches = source.query(request, batch)
    return columns, [row for b in batches for row in b]


def gets(state: SapB1State) -> list[dict[str, Any]]:
    return [e for e in state.log if e["method"] == "GET"]


def test_query_pages_with_prefer_maxpagesize_keeps_cookies_and_logs_out(sap):
    """95 items at 30 a page arrive in four GETs, each with both cookies and the Prefer
    header, and the session is logged out at the end."""
    url, state = sap
    columns, rows = read_all(make(url, state, page_size="30"), {"entity": "Items"})
    assert [c["name"] for c in columns] == [
        "ItemCode",
        "ItemName",
        "QuantityOnStock",
        "Valid",
        "UpdateDate",
    ]
    assert len(rows) == 95 and rows[0][0] == "A0001" and rows[-1][0] == "A0095"
    pages = gets(state)
    assert len(pages) == 4
    assert all(p["cookies"] and p["prefer"] == "odata.maxpagesize=30" for p in pages)
    assert pages[1]["path"] == "/Items" and "$skip=30" in pages[1]["raw"]
    assert state.logins == 1 and state.logouts == 1 and not state.sessions


def test_a_next_link_back_to_a_page_already_sent_fails_the_job(sap):
    """A broken server whose next link leads back to a page it sent would page forever (to
    the job's timeout, sending its rows again each time): the job fails at once."""
    url, state = sap
    state.loop_next_link = True
    with pytest.raises(JobError) as err:
        read_all(make(url, state, page_size="30"), {"entity": "Items"})
    assert err.value.code == "QUERY_FAILED" and "already sent" in err.value.message
    assert len(gets(state)) == 2  # page 1, page 2; page 2's link (to page 2) is not followed


def test_select_filter_orderby_top_become_odata_options(sap):
    """The query shape maps to $select/$filter/$orderby/$top; top is honoured across pages."""
    url, state = sap
    request = {"entity": "Items", "select": ["ItemCode", "QuantityOnStock"],
               "filter": "Valid eq 'tYES' and QuantityOnStock gt 10", "orderBy": "ItemCode desc", "top": 7}  # fmt: skip
    columns, rows = read_all(make(url, state, page_size="5"), request)
    assert columns == [
        {"name": "ItemCode", "type": "string"},
        {"name": "QuantityOnStock", "type": "decimal"},
    ]
    assert [r[0] for r in rows] == ["A0095", "A0094", "A0092", "A0091", "A0089", "A0088", "A0086"]
    first = gets(state)[0]["raw"]
    assert first.startswith(
        "/b1s/v2/Items?$select=ItemCode,QuantityOnStock&$filter=Valid%20eq%20'tYES'"
    )
    assert "$orderby=ItemCode%20desc" in first and first.endswith("$top=7")
    assert len(gets(state)) == 2


def test_decimals_stay_exact_strings_dates_iso_and_nested_lines_json(sap):
    """Amounts come back as exact decimal strings, dates as ISO text, document lines as JSON."""
    url, state = sap
    columns, rows = read_all(make(url, state), {"entity": "Orders", "top": 1})
    types = {c["name"]: c["type"] for c in columns}
    assert types == {"DocEntry": "integer", "DocNum": "integer", "CardCode": "string",
                     "DocDate": "date", "DocTotal": "decimal", "DocumentLines": "json"}  # fmt: skip
    assert rows == [[1, 1001, "C00001", "2024-03-01", "12346.67",
                     [{"LineNum": 0, "ItemCode": "A0001", "Quantity": "2.0", "Price": "9.99"}]]]  # fmt: skip


def test_v1_follows_odata_nextlink_and_reports_v1_error_text(sap):
    """/b1s/v1 pages with odata.nextLink; its {"message": {"lang", "value"}} error reaches the job."""
    url, state = sap
    source = make(url, state, version="v1", page_size="40")
    _, rows = read_all(source, {"entity": "Items", "select": "ItemCode"})
    assert len(rows) == 95 and all(e["version"] == "v1" for e in state.log)
    with pytest.raises(JobError) as err:
        source.query({"entity": "Items", "select": ["Nope"]})
    assert err.value.code == "QUERY_FAILED"
    assert "Property 'Nope' of 'Item' is invalid" in err.value.message


def test_v2_error_body_and_unknown_entity_are_query_failed(sap):
    """A v2 error body (message as a string) becomes QUERY_FAILED with SAP's words."""
    url, state = sap
    source = make(url, state)
    with pytest.raises(JobError) as err:
        source.query({"entity": "NoSuchThings"})
    assert err.value.code == "QUERY_FAILED" and "Unrecognized resource path" in err.value.message
    with pytest.raises(JobError) as err:
        source.query({"entity": "Items", "filter": "ItemCode ~ 'x'"})
    assert "Invalid filter expression" in err.value.message
    assert state.logouts == state.logins == 2  # failed queries still log out


def test_expired_session_mid_stream_logs_in_once_more_and_continues(sap):
    """A 401 (session timeout) on page 3 triggers one re-login; no row is lost or repeated."""
    url, state = sap
    state.expire_after_pages = 2
    _, rows = read_all(make(url, state, page_size="20"), {"entity": "Items", "select": "ItemCode"})
    assert [r[0] for r in rows] == [f"A{i:04d}" for i in range(1, 96)]
    assert state.logins == 2


def test_session_refused_after_relogin_is_auth_failed(sap):
    """If the fresh session is refused too, the job fails AUTH_FAILED after exactly one retry."""
    url, state = sap
    state.reject_sessions = True
    with pytest.raises(JobError) as err:
        make(url, state).query({"entity": "Items"})
    assert err.value.code == "AUTH_FAILED" and "Invalid session" in err.value.message
    assert state.logins == 2


@pytest.mark.parametrize(
    ("options", "password", "text"),
    [
        ({}, "wrong", "Login failed"),
        ({"company_db": "NOPE"}, "s3cret!", "Fail to get DB Credentials"),
    ],
)
def test_bad_credentials_are_auth_failed_with_sap_message(sap, options, password, text):
    """Login refusals map to AUTH_FAILED carrying SAP's message and code."""
    url, _ = sap
    opts = {"company_db": COMPANY, "username": USER, **options}
    source = SapB1Source("erp", "sap_b1", url, password=password, options=opts)
    with pytest.raises(JobError) as err:
        source.test()
    assert err.value.code == "AUTH_FAILED" and text in err.value.message
    assert "SAP code" in err.value.message


def test_missing_login_options_fail_before_any_request(sap):
    url, state = sap
    with pytest.raises(JobError) as err:
        SapB1Source("erp", "sap_b1", url, password="x", options={}).query({"entity": "Items"})
    assert err.value.code == "AUTH_FAILED" and "company_db" in err.value.message
    assert state.log == []


@pytest.mark.parametrize(
    "request_",
    [
        {"entity": "Items/../Login"},
        {"entity": "Items?$top=1"},
        {"entity": "Items", "select": ["ItemCode,ItemName"]},
        {"entity": "Items", "select": "ItemCode&$expand=x"},
        {"entity": "Items", "orderBy": "ItemCode; drop"},
        {"entity": "Items", "top": -1},
        {"entity": "Items", "filter": "a\r\nHost: evil"},
        {"entity": "Items", "sql": "select 1"},
        {"entity": ""},
    ],
)
def test_injection_attempts_are_refused_before_any_request(sap, request_):
    """Entity and property names must be identifiers; nothing odd reaches the Service Layer."""
    url, state = sap
    with pytest.raises(JobError) as err:
        make(url, state).query(request_)
    assert err.value.code == "QUERY_FAILED"
    assert state.log == []


def test_next_links_leaving_the_service_are_refused():
    """A next link may not point at another host or outside /b1s/<version>."""
    endpoint = Endpoint("erp", "https://sl.example:50000", default_port=50000)
    root = "/b1s/v2"
    assert resolve_next("Items?$skip=20&$filter=A eq 'b c'", root, endpoint) == (
        "/b1s/v2/Items?$skip=20&$filter=A%20eq%20'b%20c'"
    )
    for link in ("https://evil.example/b1s/v2/Items", "/b1s/v2/../v1/Login", "/other/Items",
                 "/b1s/v2/%2e%2e/v1/Login", "%2E%2E/%2e%2E/other/Items", "/b1s/v2%2F..%2Fv1/Login"):  # fmt: skip
        with pytest.raises(JobError):
            resolve_next(link, root, endpoint)


def test_discover_reads_metadata_entity_sets_properties_and_keys(sap):
    """Discovery lists entity sets from $metadata (v4 and v3 CSDL) with types and keys."""
    url, state = sap
    for version in ("v2", "v1"):
        tables = make(url, state, version=version).discover()
        by_name = {t["name"]: t for t in tables}
        assert set(by_name) == {"Items", "BusinessPartners", "Orders"}
        orders = by_name["Orders"]
        assert orders["primaryKey"] == ["DocEntry"] and orders["schema"] == COMPANY
        assert {"name": "DocEntry", "type": "Edm.Int32", "nullable": False} in orders["columns"]
        assert orders["kind"] == "entity_set"


def test_hostile_metadata_is_refused(sap):
    """A $metadata carrying a DTD with entity declarations (billion laughs) is not expanded."""
    url, state = sap
    state.hostile_metadata = "billion_laughs"
    with pytest.raises(JobError) as err:
        make(url, state).discover()
    assert err.value.code == "QUERY_FAILED" and "forbidden XML" in err.value.message


def test_test_reports_version_latency_and_entity_sets(sap):
    url, state = sap
    result = make(url, state).test()
    assert result["connected"] is True and result["serverVersion"] == "1000200"
    assert result["tablesFound"] == 3 and isinstance(result["latencyMs"], int)
    assert state.logouts == 1


def test_https_with_ca_file_self_signed_refusal_and_logged_opt_out(tls_files: TlsFiles, caplog):
    """A self-signed Service Layer works with its CA file, fails without it, and works with
    verify=false, which is logged as a warning."""
    server, state = start_fake_sap_b1(tls_context=tls_files.server_context())
    try:
        assert make(server.url, state, ca_file=str(tls_files.cert)).test()["connected"]
        with pytest.raises(JobError) as err:
            make(server.url, state).test()
        assert err.value.code == "SOURCE_UNAVAILABLE" and "ca_file" in err.value.message
        with caplog.at_level(logging.WARNING, logger="agent.sources"):
            assert make(server.url, state, verify="false").test()["connected"]
        assert "verification is OFF" in caplog.text
    finally:
        server.stop()


def test_cancel_stops_a_read_blocked_on_the_service_layer(sap):
    """cancel() from another thread ends a read stuck mid-page with CANCELLED, and the
    session is still logged out."""
    url, state = sap
    state.stall = True
    source = make(url, state)
    thread, out = run_in_thread(lambda: source.query({"entity": "Items"}))
    assert state.stalled.wait(10)
    source.cancel()
    join(thread, 5)
    assert isinstance(out.get("error"), JobError) and out["error"].code == "CANCELLED"
    assert state.logouts == 1


def test_timeout_ends_a_stalled_read_with_timeout(sap):
    url, state = sap
    state.stall = True
    stream = make(url, state).prepare({"entity": "Items"}, timeout=0.5)
    with pytest.raises(JobError) as err:
        stream.start()
    stream.close()
    assert err.value.code == "TIMEOUT"


def test_unreachable_service_layer_is_source_unavailable(closed_port):
    with pytest.raises(JobError) as err:
        make(f"https://127.0.0.1:{closed_port}").test()
    assert err.value.code == "SOURCE_UNAVAILABLE" and err.value.retryable


def test_password_and_session_cookies_never_logged(sap, caplog):
    """Nothing the adapter logs (at DEBUG) holds the password or a session id."""
    url, state = sap
    state.expire_after_pages = 1
    with caplog.at_level(logging.DEBUG):
        read_all(make(url, state, page_size="50"), {"entity": "Items"})
    assert state.logins == 2
    assert state.password not in caplog.text
    assert "B1SESSION=" not in caplog.text and "ROUTEID=" not in caplog.text


ODD_NAMES = ["A&B #1 +50% Ü'x", "x&$top=1", "Ünïcødé ₹ 東京", "semi;colon=eq"]


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_filter_with_url_special_characters_survives_every_page_and_injects_nothing(version):
    """Quotes, &, #, +, %, ; = and non-ASCII in a filter reach the Service Layer as exactly
    one $filter on every page (v1 absolute and v2 relative next links), and every row arrives."""
    items = [{"ItemCode": f"B{i:03d}", "ItemName": ODD_NAMES[i % len(ODD_NAMES)]}
             for i in range(40)]  # fmt: skip
    server, state = start_fake_sap_b1(SapB1State(data={"Items": items}))
    try:
        name = ODD_NAMES[0]
        flt = "ItemName eq '" + name.replace("'", "''") + "'"
        _, rows = read_all(make(server.url, state, version=version, page_size="3"),
                           {"entity": "Items", "filter": flt, "select": ["ItemCode", "ItemName"]})  # fmt: skip
        assert rows == [[i["ItemCode"], name] for i in items if i["ItemName"] == name]
        _, rows = read_all(make(server.url, state, version=version, page_size="7"),
                           {"entity": "Items", "filter": "ItemName ne 'x&$top=1'"})  # fmt: skip
        assert len(rows) == 30
        pages = gets(state)
        assert len(pages) == 4 + 5
        for page in pages:
            query = parse_qs(urlsplit(page["raw"]).query, keep_blank_values=True)
            assert set(query) <= {"$filter", "$select", "$skip"}, page["raw"]
            assert len(query["$filter"]) == 1
            assert query["$filter"][0] in (flt, "ItemName ne 'x&$top=1'")
        assert "%26" in pages[0]["raw"] and "%23" in pages[0]["raw"] and "%2B" in pages[0]["raw"]
    finally:
        server.stop()


@pytest.mark.parametrize(
    "request_",
    [
        {"entity": "Items\n"},
        {"entity": "Items", "filter": "ItemName eq '\ud800'"},
    ],
)
def test_newline_after_a_name_or_a_lone_surrogate_is_query_failed_before_any_request(sap, request_):
    """A name followed by a newline (which a bare ``$`` in a pattern lets through) or a lone
    UTF-16 surrogate (which JSON can carry but UTF-8 cannot) is a bad query: QUERY_FAILED,
    not retryable, nothing sent; never SOURCE_UNAVAILABLE or a UnicodeEncodeError."""
    url, state = sap
    with pytest.raises(JobError) as err:
        make(url, state).query(request_)
    assert err.value.code == "QUERY_FAILED" and not err.value.retryable
    assert state.log == []


@pytest.mark.parametrize("page_size", ["0.5", "2.5", "abc", "0", "-3"])
def test_page_size_must_be_a_whole_number_of_at_least_one(sap, page_size):
    """odata.maxpagesize=0 turns SAP's paging off (the whole entity set in one answer), so a
    page_size that rounds down to 0 must be refused, not sent."""
    url, state = sap
    with pytest.raises(JobError) as err:
        make(url, state, page_size=page_size)
    assert "page_size" in err.value.message and not err.value.retryable
    assert state.log == []


def test_top_larger_than_the_result_and_top_zero(sap):
    """top beyond the entity set returns every row once across pages; top 0 returns none."""
    url, state = sap
    _, rows = read_all(make(url, state, page_size="30"), {"entity": "Items", "top": 500})
    assert [r[0] for r in rows] == [f"A{i:04d}" for i in range(1, 96)]
    assert len(gets(state)) == 4
    _, rows = read_all(make(url, state), {"entity": "Items", "top": 0})
    assert rows == []


def test_v1_session_expiring_mid_stream_follows_absolute_next_links_after_relogin(sap):
    """v1 next links are absolute paths (/b1s/v1/Items?...); a 401 on page 3 logs in once
    more and the stream goes on with no row lost or repeated."""
    url, state = sap
    state.expire_after_pages = 2
    source = make(url, state, version="v1", page_size="20")
    _, rows = read_all(source, {"entity": "Items", "select": "ItemCode"})
    assert [r[0] for r in rows] == [f"A{i:04d}" for i in range(1, 96)]
    assert state.logins == 2 and state.logouts == 1
    assert all(e["path"] == "/Items" for e in gets(state))


def test_discover_does_not_hold_the_whole_metadata_tree(sap):
    """A company's $metadata is tens of MB, mostly enum and complex types: discover reads it
    element by element and drops each one, so its memory stays far below the document's
    size (before, every element but an entity type's children stayed in the tree)."""
    url, state = sap
    state.metadata_padding = 2500  # ~6 MiB of CSDL
    tracemalloc.start()
    try:
        tables = make(url, state).discover()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert {t["name"] for t in tables} == {"Items", "BusinessPartners", "Orders"}
    assert peak < 4 * 2**20, f"discover peaked at {peak / 2**20:.1f} MiB"


def test_cancel_interrupts_a_connect_the_server_never_answers():
    """A Service Layer whose SYNs go unanswered (a firewall that drops, a full backlog) keeps
    connect() waiting for the whole socket timeout; cancel() must end it at once, not after
    the `timeout` option's 30 s (before, the worker sat in connect until then)."""
    with silent_port() as port:
        source = make(f"http://127.0.0.1:{port}", timeout="30")
        error = cancel_during_connect(source.prepare({"entity": "Items"}), port)
    assert isinstance(error, JobError) and error.code == "CANCELLED"


def _wide_items(n: int) -> list[dict[str, Any]]:
    """Rows with many small properties: as Python objects several times their JSON."""
    return [{"ItemCode": f"W{i:05d}", **{f"U_Num{j}": i * 40 + j for j in range(20)},
             **{f"U_Amt{j}": i + j / 4 + 0.5 for j in range(10)},
             **{f"U_Txt{j}": f"t{j}-{i}" for j in range(9)}, "U_Null": None}
            for i in range(n)]  # fmt: skip


def test_a_large_page_is_parsed_a_batch_at_a_time_not_held_whole(sap):
    """One page of a few MB: its rows as Python objects take several times its text.
    They are parsed as they are taken, so memory holds the page's text and one batch
    (before, the whole page parsed at once: peak several times the page's size)."""
    import json

    url, state = sap
    state.data["Wide"] = _wide_items(6000)
    page = json.dumps({"value": state.data["Wide"]}).encode()
    source = make(url, state, page_size="6000")  # one page
    tracemalloc.start()
    try:
        columns, batches = source.query({"entity": "Wide"}, 100)
        count = sum(len(b) for b in batches)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 6000 and len(gets(state)) == 1
    types = {c["name"]: c["type"] for c in columns}
    assert types["U_Num3"] == "integer" and types["U_Amt1"] == "decimal" and types["U_Null"] == "string"
    # the body (read in pieces, then joined), its text and one batch: about 2x (before, 8x)
    assert peak < 4 * len(page), f"peaked at {peak / len(page):.1f} times the page's {len(page)} bytes"


@pytest.mark.parametrize("first_page_whole", [True, False])
def test_rows_columns_and_links_are_the_same_read_lazily(sap, monkeypatch, first_page_whole):
    """A first page looked through (large) or taken whole (small) gives the same columns;
    typed by the first non-null value anywhere on the first page, as before."""
    from agent.sources import sap_b1

    url, state = sap
    rows = _wide_items(130)
    for r in rows[:70]:
        r["U_Late"] = None
    for r in rows[70:]:
        r["U_Late"] = 1.25  # first non-null past the 50 rows that name the columns
    state.data["Wide"] = rows
    monkeypatch.setattr(sap_b1, "WHOLE_FIRST_PAGE", 1 << 30 if first_page_whole else 0)
    columns, got = read_all(make(url, state, page_size="100"), {"entity": "Wide"}, batch=7)
    assert {c["name"]: c["type"] for c in columns}["U_Late"] == "decimal"
    assert [r[0] for r in got] == [f"W{i:05d}" for i in range(130)]
    assert got[3][columns.index({"name": "U_Amt1", "type": "decimal"})] == "3.75"
    assert len(gets(state)) == 2


@pytest.mark.parametrize(
    "text",
    [
        '{"value": [{"a": 1}, {"a": 2.50}], "@odata.nextLink": "X?$skip=2"}',
        '\ufeff{ "odata.nextLink" : "/b1s/v1/X?$skip=2" ,\r\n\t"value":[ {"a":{"b":[1,2]}} , 3 , "s" ] }  ',
        '{"@odata.context": "$metadata#X", "value": [], "extra": {"k": [1, {"v": null}]}}',
        '{"value":[]}',
    ],
)  # fmt: skip
def test_a_lazily_read_page_is_what_json_loads_reads(text):
    import decimal
    import json

    from agent.sources.sap_b1_session import JsonPage

    page = JsonPage(text.encode("utf-8"))
    rows = list(page.rows())
    whole = json.loads(text.lstrip("\ufeff"), parse_float=decimal.Decimal)
    assert rows == whole.pop("value") and page.fields == whole


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ('{"value": [{"a": 1},]}', "not JSON"),
        ('{"value": [{"a": 1} {"a": 2}]}', "not JSON"),
        ('{"value": [{"a": 1}]', "not JSON"),
        ('{"value": [{"a": 1}]} x', "not JSON"),
        ('{"value": [], "next" "x"}', "not JSON"),
        ('{"value": [1], "value": [2]}', "two 'value' lists"),
        ('{"value": {"a": 1}}', "without a 'value' list"),
        ('{"other": 1}', "without a 'value' list"),
        ('[{"a": 1}]', "unexpected JSON"),
        ("", "not JSON"),
    ],
)  # fmt: skip
def test_a_broken_page_is_query_failed_when_reached(text, said):
    from agent.sources.sap_b1_session import JsonPage

    with pytest.raises(JobError) as err:
        list(JsonPage(text.encode()).rows())
    assert err.value.code == "QUERY_FAILED" and said in err.value.message, err.value.message
