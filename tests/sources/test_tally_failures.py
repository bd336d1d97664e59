"""How the Tally adapter copes with what a customer's Tally really sends: UTF-16, error
envelopes, answers cut short, hostile XML, Indian and foreign-currency amounts, Tally's
date forms, odd company names, a gateway that never answers. Each failure maps to the
contract's job error code with a clear message."""

from __future__ import annotations

import time
from typing import Any

import pytest
from defusedxml import ElementTree as SafeET

from agent.sources.tally import TallySource, convert
from agent.sources.tally_xml import MAX_TEXT
from shared.errors import JobError
from tests.fakes.tally import COMPANY, _envelope_start, line_error

from .conftest import join, run_in_thread


def make(url: str, **options: str) -> TallySource:
    return TallySource("books", "tally", url, options=options)


def read_all(source: TallySource, request: dict[str, Any]) -> tuple[list, list]:
    columns, batches = source.query(request, 500)
    return columns, [row for b in batches for row in b]


def collection(objects: str) -> str:
    return (_envelope_start() + "<BODY><DESC></DESC><DATA><COLLECTION>" + objects
            + "</COLLECTION></DATA></BODY></ENVELOPE>")  # fmt: skip


# ------------------------------------------------------------------ answers cut short


@pytest.mark.parametrize("framing", ["chunked", "close"])
def test_an_answer_cut_short_is_source_unavailable_and_retryable(tally, framing):
    """Tally closed (or crashed, or ran out of memory) mid-export: the answer stops inside
    its document. That is SOURCE_UNAVAILABLE, retryable, said plainly (before, an answer
    delimited by the connection's close was QUERY_FAILED "not well-formed XML", never
    retried, and a chunked one said only "IncompleteRead(0 bytes read)")."""
    url, state = tally
    state.vouchers, state.truncate_after, state.framing = 1000, 2, framing
    with pytest.raises(JobError) as err:
        read_all(make(url), {"collection": "Voucher"})
    assert err.value.code == "SOURCE_UNAVAILABLE" and err.value.retryable
    assert "before its" in err.value.message and "IncompleteRead" not in err.value.message


def test_a_complete_answer_ended_by_the_connections_close_is_read_whole(tally):
    url, state = tally
    state.vouchers, state.framing = 30, "close"
    _, rows = read_all(make(url), {"collection": "Voucher"})
    assert len(rows) == 30


@pytest.mark.parametrize(
    "raw",
    [
        "<ENVELOPE><HEADER><STATUS>1</STATUS></HEADER><BODY></DATA></BODY></ENVELOPE>",
        "<ENVELOPE><BODY>a & b</BODY></ENVELOPE>",
        "<ENVELOPE></ENVELOPE><ENVELOPE>",
    ],
)
def test_malformed_xml_is_query_failed(tally, raw):
    url, state = tally
    state.raw_answer = raw
    with pytest.raises(JobError) as err:
        read_all(make(url), {"collection": "Ledger"})
    assert err.value.code == "QUERY_FAILED" and not err.value.retryable
    assert "not well-formed" in err.value.message


# ------------------------------------------------------------------ encodings and errors


def test_a_utf16_greeting_gives_a_readable_server_version(tally):
    """A Tally answering in UTF-16 greets in UTF-16 too: serverVersion is its words (before,
    "\\x00T\\x00a\\x00l..." with the byte-order mark as two replacement characters)."""
    url, state = tally
    state.encoding = "utf-16"
    result = make(url).test()
    assert result["serverVersion"] == "TallyPrime Server"


GERMAN = "Kunde „Müller“ \u2013 Firma nicht gefunden ₹"


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "utf-16-nobom"])
def test_lineerror_in_any_encoding_keeps_tallys_words(tally, encoding):
    url, state = tally
    state.encoding = encoding
    state.raw_answer = line_error(GERMAN)
    with pytest.raises(JobError) as err:
        read_all(make(url), {"collection": "Ledger"})
    assert err.value.code == "QUERY_FAILED" and not err.value.retryable
    assert err.value.message == "Tally: " + GERMAN


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("<RESPONSE>Unknown Request, cannot be processed</RESPONSE>",
         "Tally: Unknown Request, cannot be processed"),
        ("<RESPONSE><LINEERROR>Could not find Company 'X'</LINEERROR></RESPONSE>",
         "Tally: Could not find Company 'X'"),
        (_envelope_start(0) + "<BODY><DATA></DATA></BODY></ENVELOPE>",
         "Tally answered STATUS 0 (the request failed)"),
    ],
)  # fmt: skip
def test_error_envelopes_are_query_failed_with_tallys_words(tally, raw, expected):
    url, state = tally
    state.raw_answer = raw
    with pytest.raises(JobError) as err:
        read_all(make(url), {"collection": "Ledger"})
    assert err.value.code == "QUERY_FAILED" and err.value.message == expected


@pytest.mark.parametrize("hostile", ["billion_laughs", "external_entity"])
def test_hostile_xml_in_utf16_is_refused_too(tally, hostile):
    url, state = tally
    state.hostile, state.encoding = hostile, "utf-16"
    with pytest.raises(JobError) as err:
        read_all(make(url), {"collection": "Ledger"})
    assert err.value.code == "QUERY_FAILED" and "refused" in err.value.message


def test_a_parameter_entity_to_an_external_dtd_is_refused(tally):
    url, state = tally
    state.raw_answer = (
        '<?xml version="1.0"?><!DOCTYPE ENVELOPE [<!ENTITY % ext SYSTEM '
        '"http://127.0.0.1:9/evil.dtd"> %ext;]><ENVELOPE></ENVELOPE>'
    )
    with pytest.raises(JobError) as err:
        read_all(make(url), {"collection": "Ledger"})
    assert err.value.code == "QUERY_FAILED" and "refused" in err.value.message


# ------------------------------------------------------------------ values


def test_foreign_currency_amounts_give_the_base_currency_value(tally):
    """A voucher in a foreign currency carries ``-$448.44 @ ₹ 82.99/$ = -₹ 37216.04``: the
    Amount column holds the base-currency value, -37216.04 (before, the whole text, a string
    in a decimal column)."""
    url, state = tally
    state.vouchers, state.forex = 3, True
    columns, rows = read_all(
        make(url), {"collection": "Voucher", "fields": ["VoucherNumber", "Amount"]}
    )
    assert columns[1] == {"name": "Amount", "type": "decimal"}
    assert [r[1] for r in rows] == ["-37216.04", "-3.25", "-6.25"]


def test_indian_grouping_huge_numbers_and_symbols_stay_exact(tally):
    url, state = tally
    values = ["1,23,45,67,890.50", "-98765432109876543210.99", "₹ 1,23,456.00", "-₹ 5,00,000",
              "0.0000001", "120 Nos"]  # fmt: skip
    state.raw_answer = collection("".join(
        f'<LEDGER NAME="L{i}"><NAME TYPE="String">L{i}</NAME>'
        f'<CLOSINGBALANCE TYPE="Amount">{v}</CLOSINGBALANCE></LEDGER>'
        for i, v in enumerate(values)
    ))  # fmt: skip
    _, rows = read_all(make(url), {"collection": "Ledger", "fields": ["Name", "ClosingBalance"]})
    assert [r[1] for r in rows] == ["1234567890.50", "-98765432109876543210.99", "123456.00",
                                    "-500000", "0.0000001", "120 Nos"]  # fmt: skip


def test_a_value_over_the_field_limit_fails_the_job_instead_of_being_cut(tally):
    """A field longer than MAX_TEXT characters used to be cut there without a word: the row
    went out with different data. Now the job fails RESULT_TOO_LARGE naming the field; a
    value of exactly MAX_TEXT characters, and whitespace past it between fields, still
    read whole."""
    url, state = tally

    def ledger(narration: str, gap: str = "") -> str:
        return collection(f'<LEDGER NAME="Big"><NAME TYPE="String">Big</NAME>{gap}'
                          f'<NARRATION TYPE="String">{narration}</NARRATION></LEDGER>')  # fmt: skip

    request = {"collection": "Ledger", "fields": ["Name", "Narration"]}
    state.raw_answer = ledger("x" * (MAX_TEXT + 1))
    with pytest.raises(JobError) as err:
        read_all(make(url), request)
    assert err.value.code == "RESULT_TOO_LARGE" and not err.value.retryable
    assert "<NARRATION> of LEDGER 'Big'" in err.value.message and "does not cut" in err.value.message

    exact = "é" * (MAX_TEXT - 2) + "yz"
    state.raw_answer = ledger(exact, gap=" " * (MAX_TEXT + 10))
    _, rows = read_all(make(url), request)
    assert rows == [["Big", exact]]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20240401", "2024-04-01"),
        ("1-Apr-2024", "2024-04-01"),
        ("01-Apr-24", "2024-04-01"),
        ("29-Feb-2024", "2024-02-29"),
        ("20240231", "20240231"),  # no such day: kept as Tally wrote it, never "2024-02-31"
        ("20241301", "20241301"),
        ("31-Feb-2024", "31-Feb-2024"),
        ("", None),
    ],
)
def test_tally_dates_become_iso_or_stay_as_written(text, expected):
    assert convert(text, "date") == expected


def test_company_names_with_special_characters_round_trip(tally):
    """A company name with &, <, quotes, apostrophes, brackets, ₹ and non-Latin letters is
    sent as exactly that text and matched by Tally."""
    url, state = tally
    name = "Müller & Söhne <Mumbai> \"Main\" 'HQ' (P) Ltd. ₹ 東京 #1"
    state.companies = [name]
    _, rows = read_all(make(url), {"collection": "Company", "fields": ["Name"], "company": name})
    assert rows == [[name]]
    env = SafeET.fromstring(state.raw_requests[-1])
    assert env.findtext("BODY/DESC/STATICVARIABLES/SVCURRENTCOMPANY") == name
    _, rows = read_all(make(url, company=name), {"collection": "Company", "fields": ["Name"]})
    assert rows == [[name]]


# ------------------------------------------------------------------ a gateway that never answers


def test_a_gateway_that_accepts_but_never_answers_times_out(tally):
    """Tally busy with a modal dialog accepts the connection and never answers: the socket
    wait (option timeout) ends the job TIMEOUT, and a cancel ends it at once."""
    url, state = tally
    state.silent = True
    started = time.monotonic()
    with pytest.raises(JobError) as err:
        read_all(make(url, timeout="0.5"), {"collection": "Ledger"})
    assert err.value.code == "TIMEOUT" and err.value.retryable
    assert "gave no answer within 0.5 s" in err.value.message
    assert time.monotonic() - started < 5
    source = make(url, timeout="30")
    state.stalled.clear()  # set by the first request; wait for the second one's
    thread, out = run_in_thread(lambda: read_all(source, {"collection": "Ledger"}))
    assert state.stalled.wait(10)
    source.cancel()
    join(thread, 3)
    assert isinstance(out.get("error"), JobError) and out["error"].code == "CANCELLED"


def test_company_default_is_the_fakes(tally):
    url, _ = tally
    _, rows = read_all(make(url, company=COMPANY), {"collection": "Company", "fields": ["Name"]})
    assert rows == [[COMPANY]]


def test_a_tls_gateway_given_an_http_url_or_the_reverse_fails_clearly(tally, tls_files):
    url, _ = tally
    with pytest.raises(JobError) as err:
        make(url.replace("http://", "https://")).test()
    assert err.value.code == "SOURCE_UNAVAILABLE" and not err.value.retryable
    assert "plain HTTP port" in err.value.message
    with pytest.raises(JobError) as err:
        make(url, verify="nope")
    assert "option verify must be true or false" in err.value.message


@pytest.mark.parametrize(
    ("status", "retryable"), [(502, True), (503, True), (404, False), (401, False)]
)
def test_an_error_page_instead_of_tally_is_clear_whatever_its_size(tally, status, retryable):
    """Another program or a proxy answers instead of Tally, with a 200 KiB HTML page: one
    clear SOURCE_UNAVAILABLE, retryable only for a status that may pass (before: "the
    response is larger than 0 MiB", QUERY_FAILED, for both the export and the greeting)."""
    url, state = tally
    state.error_page = (
        status,
        "<html><body><h1>Gateway says no</h1>" + "x" * 200_000 + "</body></html>",
    )
    for run in (lambda: read_all(make(url), {"collection": "Ledger"}), lambda: make(url).test()):
        with pytest.raises(JobError) as err:
            run()
        assert err.value.code == "SOURCE_UNAVAILABLE" and err.value.retryable is retryable
        assert f"HTTP {status}" in err.value.message and "Gateway says no" in err.value.message
        assert len(err.value.message) < 300
