"""The Tally adapter against the XML gateway fake (tests/fakes/tally.py)."""

from __future__ import annotations

import os
import threading
from typing import Any

import psutil
import pytest
from defusedxml import ElementTree as SafeET

from agent.sources.tally import TallySource
from shared.errors import JobError
from tests.fakes.tally import COMPANY, TallyState, _voucher, start_fake_tally
from tests.fakes.tls import TlsFiles

from .conftest import cancel_during_connect, join, run_in_thread, silent_port


def make(url: str, **options: str) -> TallySource:
    return TallySource("books", "tally", url, options=options)


def read_all(source: TallySource, request: dict[str, Any], batch: int = 500) -> tuple[list, list]:
    columns, batches = source.query(request, batch)
    return columns, [row for b in batches for row in b]


def last_request(state: TallyState) -> Any:
    return SafeET.fromstring(state.raw_requests[-1])


def test_collection_export_envelope_has_header_statics_and_inline_tdl(tally):
    """A collection query becomes Tally's Export envelope: HEADER, STATICVARIABLES with the
    company and YYYYMMDD dates, and an inline TDL collection with TYPE, FETCH and FILTER."""
    url, state = tally
    columns, rows = read_all(make(url), {"collection": "StockItem", "fields": ["Name", "ClosingBalance"],
                                         "company": COMPANY, "fromDate": "2024-04-01", "toDate": "20250331",
                                         "filter": '$Parent = "Raw Materials"'})  # fmt: skip
    assert rows == [["Steel Rod", "120 Nos"]]  # a Quantity stays text
    assert columns[1] == {"name": "ClosingBalance", "type": "string"}
    env = last_request(state)
    assert env.findtext("HEADER/VERSION") == "1"
    assert env.findtext("HEADER/TALLYREQUEST") == "Export"
    assert env.findtext("HEADER/TYPE") == "Collection"
    ident = env.findtext("HEADER/ID")
    statics = env.find("BODY/DESC/STATICVARIABLES")
    assert statics.findtext("SVEXPORTFORMAT") == "$$SysName:XML"
    assert statics.findtext("SVCURRENTCOMPANY") == COMPANY
    assert (statics.findtext("SVFROMDATE"), statics.findtext("SVTODATE")) == (
        "20240401",
        "20250331",
    )
    coll = env.find("BODY/DESC/TDL/TDLMESSAGE/COLLECTION")
    assert coll.get("NAME") == ident
    assert coll.findtext("TYPE") == "Stock Item"
    assert coll.findtext("FETCH") == "Name, ClosingBalance"
    system = env.find("BODY/DESC/TDL/TDLMESSAGE/SYSTEM")
    assert system.get("TYPE") == "Formulae" and system.get("NAME") == coll.findtext("FILTER")
    assert system.text == '$Parent = "Raw Materials"'


def test_ledger_rows_with_exact_amounts_and_typed_columns(tally):
    """Default Ledger fields arrive as rows; Amounts are exact decimal strings, empty is null."""
    url, _ = tally
    columns, rows = read_all(make(url), {"collection": "Ledger"})
    assert columns == [
        {"name": "Name", "type": "string"}, {"name": "Parent", "type": "string"},
        {"name": "OpeningBalance", "type": "decimal"}, {"name": "ClosingBalance", "type": "decimal"},
        {"name": "GUID", "type": "string"},
    ]  # fmt: skip
    assert rows[0] == ["Cash", "Cash-in-Hand", "-5000.00", "-12500.50", "guid-ledger-0"]
    assert rows[3][2] is None and rows[4][0] == "Customer & Co <A>"
    assert len(rows) == 6


def test_tdl_filter_selects_objects(tally):
    url, _ = tally
    _, rows = read_all(make(url), {"collection": "ledger", "fields": "Name, ClosingBalance",
                                   "filter": '$Parent = "Sundry Debtors"'})  # fmt: skip
    assert rows == [["Customer & Co <A>", "-26859.00"], ["Northwind", "-8930.00"]]


def test_trial_balance_and_day_book_reports_as_rows(tally):
    """Reports are exported with TYPE Data and turned into rows."""
    url, state = tally
    columns, rows = read_all(make(url, company=COMPANY), {"report": "Trial Balance"})
    assert [c["name"] for c in columns] == ["name", "closingDebit", "closingCredit"]
    assert rows[0] == ["Cash", "-12500.50", None] and rows[2] == [
        "Capital Account",
        None,
        "250000.00",
    ]
    env = last_request(state)
    assert env.findtext("HEADER/TYPE") == "Data" and env.findtext("HEADER/ID") == "Trial Balance"
    assert env.findtext("BODY/DESC/STATICVARIABLES/SVCURRENTCOMPANY") == COMPANY
    _, rows = read_all(make(url), {"report": "Day Book", "fromDate": "2024-04-01"})
    assert rows[1] == [
        "guid-vch-1",
        "2024-04-02",
        "Sales",
        "2",
        "Northwind",
        "Day book entry 2",
        "200.50",
    ]


def test_utf16_answer_with_bad_character_references_is_cleaned(tally):
    """A UTF-16 answer (BOM, UTF-16 declaration) holding &#4;, &#x1F; and raw control bytes,
    delivered in 7-byte pieces, parses; the forbidden characters are dropped."""
    url, state = tally
    state.encoding, state.bad_refs = "utf-16", True
    _, rows = read_all(make(url), {"collection": "Ledger", "fields": ["Name", "Parent"]})
    assert rows[0] == ["Cash", "Cash-in-Hand"]
    assert rows[4] == ["Customer & Co <A>", "Sundry Debtors"]


def test_lineerror_and_status_zero_are_query_failed_with_tallys_words(tally):
    url, _ = tally
    with pytest.raises(JobError) as err:
        make(url).query({"collection": "Ledger", "company": "Nobody Ltd"})
    assert err.value.code == "QUERY_FAILED"
    assert err.value.message == "Tally: Could not set 'SVCurrentCompany' to 'Nobody Ltd'"
    with pytest.raises(JobError) as err:
        make(url).query({"collection": "Ledger", "filter": "not a formula"})
    assert "Error in formula" in err.value.message


@pytest.mark.parametrize("hostile", ["billion_laughs", "external_entity"])
def test_hostile_xml_is_refused_unexpanded(tally, hostile):
    """A DTD with entity declarations (billion laughs) or an external entity is refused."""
    url, state = tally
    state.hostile = hostile
    with pytest.raises(JobError) as err:
        make(url).query({"collection": "Ledger"})
    assert err.value.code == "QUERY_FAILED" and "refused" in err.value.message


@pytest.mark.parametrize(
    ("request_", "fragment"),
    [
        ({"collection": "Ledger</TYPE><X>"}, "'collection' must be one of"),
        ({"collection": "Ledger", "fields": ["Name</FETCH>"]}, "'fields'"),
        ({"collection": "Ledger", "fields": ["Name, Parent"]}, "'fields'"),
        ({"collection": "Ledger", "company": "$$SysName:XML"}, "not a TDL formula"),
        ({"collection": "Ledger", "company": "A\nB"}, "'company'"),
        ({"collection": "Ledger", "fromDate": "2024-13-01"}, "'fromDate'"),
        ({"report": "Balance Sheet"}, "unsupported Tally report"),
        ({"report": "Trial Balance", "filter": "$x"}, "only report"),
        ({"collection": "Ledger", "sql": "x"}, "unknown query keys"),
    ],
)
def test_bad_or_injecting_queries_fail_before_any_request(tally, request_, fragment):
    url, state = tally
    with pytest.raises(JobError) as err:
        make(url).query(request_)
    assert err.value.code == "QUERY_FAILED" and fragment in err.value.message
    assert state.raw_requests == []


def test_markup_in_company_and_filter_is_escaped_not_injected(tally):
    """Angle brackets and ampersands in values travel as text: the request stays one
    well-formed envelope whose company and formula are exactly what the job gave."""
    url, state = tally
    company = "Acme</SVCURRENTCOMPANY><SVEXPORTFORMAT>x</SVEXPORTFORMAT> & Co"
    formula = "$Name = \"a</SYSTEM><SYSTEM NAME='x'>b\""
    with pytest.raises(JobError):
        make(url).query({"collection": "Ledger", "company": company, "filter": formula})
    env = last_request(state)
    statics = env.find("BODY/DESC/STATICVARIABLES")
    assert statics.findtext("SVCURRENTCOMPANY") == company
    assert len(statics.findall("SVEXPORTFORMAT")) == 1
    assert [s.text for s in env.findall("BODY/DESC/TDL/TDLMESSAGE/SYSTEM")] == [formula]


def test_200000_voucher_export_streams_in_bounded_memory(tally):
    """A 200,000-voucher export (~90 MB of XML) is parsed incrementally: the process grows
    by far less than the export's size while every voucher arrives."""
    url, state = tally
    state.vouchers = 200_000
    export_bytes = sum(len(_voucher(i)) for i in range(state.vouchers))
    proc = psutil.Process(os.getpid())
    base = proc.memory_info().rss
    peak = base
    count = 0
    columns, batches = make(url).query({"collection": "Voucher"}, 2000)
    for batch in batches:
        count += len(batch)
        peak = max(peak, proc.memory_info().rss)
    assert count == 200_000
    assert columns[0] == {"name": "Date", "type": "date"} and columns[4]["type"] == "decimal"
    assert export_bytes > 85 * 2**20
    print(f"RSS grew {(peak - base) / 2**20:.1f} MiB for {export_bytes / 2**20:.0f} MiB of XML")
    assert peak - base < 40 * 2**20, f"grew {(peak - base) / 2**20:.1f} MiB"


def test_cancel_stops_an_export_blocked_mid_answer(tally):
    """cancel() from another thread ends a read stuck mid-answer with CANCELLED at once."""
    url, state = tally
    state.vouchers, state.stall = 10_000, True
    source = make(url)
    seen = threading.Event()

    def consume() -> int:
        _, batches = source.query({"collection": "Voucher"}, 50)
        n = 0
        for batch in batches:
            n += len(batch)
            seen.set()
        return n

    thread, out = run_in_thread(consume)
    assert state.stalled.wait(10) and seen.wait(10)
    source.cancel()
    join(thread, 5)
    assert isinstance(out.get("error"), JobError) and out["error"].code == "CANCELLED"


def test_timeout_ends_a_stalled_export(tally):
    url, state = tally
    state.vouchers, state.stall = 10_000, True
    stream = make(url).prepare({"collection": "Voucher"}, timeout=0.5)
    stream.start()
    with pytest.raises(JobError) as err:
        while stream.fetch(500):
            pass
    stream.close()
    assert err.value.code == "TIMEOUT"


def test_test_and_discover(tally):
    """test() greets the gateway and runs an export; discover lists collections and reports."""
    url, _ = tally
    source = make(url)
    result = source.test()
    assert result["connected"] is True and result["serverVersion"] == "TallyPrime Server"
    tables = source.discover()
    assert result["tablesFound"] == len(tables)
    names = {t["name"]: t for t in tables}
    for name in (
        "Ledger",
        "Group",
        "StockItem",
        "Voucher",
        "Company",
        "CostCentre",
        "Trial Balance",
        "Day Book",
    ):
        assert name in names
    assert [c["name"] for c in names["Ledger"]["columns"]][:2] == ["Name", "Parent"]
    assert names["Voucher"]["primaryKey"] == ["GUID"] and names["Day Book"]["kind"] == "report"


def test_gateway_behind_tls_with_ca_file(tls_files: TlsFiles):
    server, _ = start_fake_tally(tls_context=tls_files.server_context())
    try:
        _, rows = read_all(make(server.url, ca_file=str(tls_files.cert)), {"collection": "Company"})
        assert rows == [[COMPANY, "2024-04-01", None, None]]
        with pytest.raises(JobError) as err:
            make(server.url).query({"collection": "Company"})
        assert err.value.code == "SOURCE_UNAVAILABLE"
    finally:
        server.stop()


def test_unreachable_gateway_is_source_unavailable(closed_port):
    with pytest.raises(JobError) as err:
        make(f"http://127.0.0.1:{closed_port}").test()
    assert err.value.code == "SOURCE_UNAVAILABLE" and err.value.retryable


@pytest.mark.parametrize(
    "request_",
    [
        {"collection": "Ledger", "company": "Acme \ud800 Traders"},
        {"collection": "Ledger", "filter": '$Name = "\udfff"'},
        {"collection": "Ledger", "company": "Acme \ufffe"},
        {"collection": "Ledger", "fields": ["Name\n"]},
    ],
)
def test_text_xml_cannot_carry_is_query_failed_before_any_request(tally, request_):
    """A lone UTF-16 surrogate (JSON can carry one, UTF-8 cannot), a character XML forbids
    (U+FFFE), or a field name followed by a newline is a bad query: QUERY_FAILED, nothing
    sent; never a UnicodeEncodeError, nor a column that is silently always null."""
    url, state = tally
    with pytest.raises(JobError) as err:
        make(url).query(request_)
    assert err.value.code == "QUERY_FAILED" and not err.value.retryable
    assert state.raw_requests == []


@pytest.mark.parametrize(
    ("dates", "fragment"),
    [
        ({"fromDate": "01-04-2024"}, "'fromDate'"),
        ({"fromDate": "2024/04/01"}, "'fromDate'"),
        ({"toDate": "20240431"}, "'toDate'"),
        ({"toDate": 20240401}, "'toDate'"),
        ({"fromDate": "2024-04-01T00:00:00"}, "'fromDate'"),
        ({"fromDate": "2025-04-01", "toDate": "2024-03-31"}, "after"),
    ],
)
def test_bad_dates_fail_before_any_request(tally, dates, fragment):
    url, state = tally
    with pytest.raises(JobError) as err:
        make(url).query({"collection": "Ledger", **dates})
    assert err.value.code == "QUERY_FAILED" and fragment in err.value.message
    assert state.raw_requests == []


def test_dates_are_sent_as_eight_digits(tally):
    """Tally's YYYYMMDD has four year digits even for a year below 1000 (strftime would
    write 9990101)."""
    url, state = tally
    read_all(make(url), {"collection": "Ledger", "fromDate": "0999-01-01", "toDate": "20250331"})
    statics = last_request(state).find("BODY/DESC/STATICVARIABLES")
    assert statics.findtext("SVFROMDATE") == "09990101"
    assert statics.findtext("SVTODATE") == "20250331"


def test_empty_collection_gives_columns_and_no_rows(tally):
    url, _ = tally
    columns, rows = read_all(make(url), {"collection": "Ledger", "fields": ["Name", "Parent"],
                                         "filter": '$Parent = "No Such Group"'})  # fmt: skip
    assert [c["name"] for c in columns] == ["Name", "Parent"] and rows == []


def test_utf16_answer_without_a_bom_is_decoded_as_utf16(tally):
    """UTF-16LE with no byte-order mark and no declaration, starting with a line break, under
    charset=utf-16: non-ASCII names arrive intact (before, the bytes were read as UTF-8, the
    NULs dropped, and every non-ASCII character silently became U+FFFD or garbage)."""
    url, state = tally
    name = "Café ₹ 東京 𝄞 Ltd"
    state.encoding, state.companies = "utf-16-nobom", [name]
    _, rows = read_all(make(url), {"collection": "Company", "fields": ["Name"]})
    assert rows == [[name]]


def test_silent_gateway_cancel_and_timeout_end_a_hanging_connect():
    """A gateway whose SYNs go unanswered: cancel() ends the hanging connect at once, and
    the job's deadline ends it with TIMEOUT (not after the `timeout` option's 30 s)."""
    with silent_port() as port:
        source = make(f"http://127.0.0.1:{port}", timeout="30")
        error = cancel_during_connect(source.prepare({"collection": "Ledger"}), port)
        assert isinstance(error, JobError) and error.code == "CANCELLED"
        stream = source.prepare({"collection": "Ledger"}, timeout=0.3)
        thread, out = run_in_thread(stream.start)
        join(thread, 3)
        stream.close()
        assert isinstance(out.get("error"), JobError) and out["error"].code == "TIMEOUT"
