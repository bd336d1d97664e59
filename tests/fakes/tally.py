"""A fake Tally XML gateway (TallyPrime / Tally.ERP 9 on port 9000), from Tally's public docs.

Sources read (via the search tools) and followed here:

- Tally Solutions, Developer Reference, "Case Study I - XML Request and Response Formats"
  (https://help.tallysolutions.com/article/DeveloperReference/integration-capabilities/case_study_1.htm):
  the Export envelope (``HEADER``: ``VERSION`` 1, ``TALLYREQUEST`` Export, ``TYPE`` Data or
  Collection, ``ID``; ``BODY/DESC/STATICVARIABLES`` with ``SVEXPORTFORMAT`` $$SysName:XML
  and ``EXPLODEFLAG``), inline TDL in ``DESC/TDL``, and the Trial Balance answer as
  ``DSPACCNAME``/``DSPACCINFO`` pairs (``DSPCLDRAMTA``/``DSPCLCRAMTA``).
- Tally, "Get data" for partners (https://help.tallysolutions.com/article/DeveloperReference/auth-lib/get_data.htm):
  ``TYPE`` Data means a report ID, ``TYPE`` Collection a collection ID; ``SVCurrentCompany``
  picks the company; requests and answers may be UTF-16.
- Tally, "General and Collection Enhancements" / "Objects and Collections" (TDL reference):
  a collection has a ``TYPE``, ``FETCH`` methods and ``FILTER`` formulae defined as
  ``SYSTEM TYPE="Formulae"``.
- Open-source clients' request/response shapes (jobin05/erpnext_tally_migrator
  ``queries.py``; dhhruv1912/sunraise-crm ``tally/request/ledger.blade.php``; tallyerp
  dataclasses with ``HEADER/STATUS`` and ``DATA/LINEERROR``): collection answers are
  ``ENVELOPE/HEADER/STATUS`` then ``BODY/DATA/COLLECTION/<OBJECT NAME=..>`` with children
  carrying a ``TYPE`` attribute (String, Amount, Date, Logical, Number); failures are
  ``STATUS`` 0 with a ``LINEERROR``; a GET answers ``<RESPONSE>TallyPrime Server is
  Running</RESPONSE>``; the Day Book comes as ``IMPORTDATA/REQUESTDATA/TALLYMESSAGE/VOUCHER``.

Knobs: ``encoding`` ("utf-8" or "utf-16": BOM plus a UTF-16 declaration; "utf-16-nobom":
UTF-16LE with neither, starting with a line break, under ``charset=utf-16``. Whether a
real Tally ever omits the BOM is not verified; some clients, e.g. dhananjay1405/tally-database-loader
``src/tally.mts``, decode its answers as ``utf16le`` without looking for one), ``bad_refs``
(names carry ``&#4;``, ``&#x1F;`` and raw control characters, written in 7-byte pieces so
references straddle reads), ``hostile`` ("billion_laughs" or "external_entity"),
``vouchers`` (how many the Voucher collection streams), ``stall`` (send part of an answer,
then wait), ``truncate_after`` (send that many pieces of the answer, then close the
connection: a Tally that crashes or is closed mid-export), ``framing`` ("chunked", or
"close": no length, the end of the answer is the connection's close, as HTTP/1.0 servers
do), ``silent`` (read the request, never answer), ``forex`` (the first voucher's amount in
Tally's foreign-currency form ``-$448.44 @ ₹ 82.99/$ = -₹ 37216.04``, as exported for a
voucher in a foreign currency: the base-currency amount is the part after ``=``; seen in
open-source Tally clients' fixtures), ``raw_answer`` (this text answers every export, in
the configured encoding), ``error_page`` (``(status, html)``: every request, GET or POST,
is answered so, as a proxy in front of the gateway or another program on its port would). ``requests`` keeps each request body (parsed) for assertions.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from defusedxml import ElementTree as SafeET

from .serving import FakeHttpServer, send_chunk

COMPANY = "Acme Traders"
LEDGERS = [
    # name, parent, opening, closing  (Tally: debit balances are negative)
    ("Cash", "Cash-in-Hand", "-5000.00", "-12500.50"),
    ("HDFC Bank", "Bank Accounts", "-100000.00", "-84210.75"),
    ("Capital Account", "Capital Account", "250000.00", "250000.00"),
    ("Sales", "Sales Accounts", "", "180430.25"),
    ("Customer & Co <A>", "Sundry Debtors", "-1000.00", "-26859.00"),
    ("Northwind", "Sundry Debtors", "", "-8930.00"),
]
FIELD_TYPES = {
    "NAME": "String", "PARENT": "String", "OPENINGBALANCE": "Amount", "CLOSINGBALANCE": "Amount",
    "GUID": "String", "ISREVENUE": "Logical", "DATE": "Date", "AMOUNT": "Amount",
    "VOUCHERTYPENAME": "String", "VOUCHERNUMBER": "String", "PARTYLEDGERNAME": "String",
    "NARRATION": "String", "STARTINGFROM": "Date", "BOOKSFROM": "Date",
}  # fmt: skip


@dataclass
class TallyState:
    encoding: str = "utf-8"
    bad_refs: bool = False
    hostile: str | None = None
    vouchers: int = 3
    companies: list[str] = field(default_factory=lambda: [COMPANY])
    stall: bool = False
    stalled: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    requests: list[Any] = field(default_factory=list)
    raw_requests: list[bytes] = field(default_factory=list)
    disconnected: threading.Event = field(default_factory=threading.Event)
    truncate_after: int | None = None
    framing: str = "chunked"
    silent: bool = False
    forex: bool = False
    raw_answer: str | None = None
    error_page: tuple[int, str] | None = None
    greetings: int = 0


def _envelope_start(status: int = 1) -> str:
    return f"<ENVELOPE><HEADER><VERSION>1</VERSION><STATUS>{status}</STATUS></HEADER>"


def line_error(message: str) -> str:
    return (
        _envelope_start(0)
        + f"<BODY><DATA><LINEERROR>{escape(message)}</LINEERROR></DATA></BODY></ENVELOPE>"
    )


BILLION_LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE ENVELOPE [<!ENTITY lol "lol">'
    + "".join(
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">'
        for i in range(1, 10)
    )
    + "]><ENVELOPE><HEADER><VERSION>1</VERSION><STATUS>1</STATUS></HEADER><BODY><DATA><COLLECTION>"
    + '<LEDGER NAME="x"><PARENT TYPE="String">&lol9;</PARENT></LEDGER></COLLECTION></DATA></BODY></ENVELOPE>'
)
EXTERNAL_ENTITY = (
    '<?xml version="1.0"?><!DOCTYPE ENVELOPE [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
    "<ENVELOPE><HEADER><VERSION>1</VERSION><STATUS>1</STATUS></HEADER><BODY><DATA><COLLECTION>"
    '<LEDGER NAME="x"><PARENT TYPE="String">&xxe;</PARENT></LEDGER></COLLECTION></DATA></BODY></ENVELOPE>'
)


def _ledger_objects(fields: list[str], formula: str | None, bad_refs: bool) -> Iterator[str]:
    match = re.match(r'^\s*\$(\w+)\s*=\s*"([^"]*)"\s*$', formula or "")
    for i, (name, parent, opening, closing) in enumerate(LEDGERS):
        values = {"NAME": name, "PARENT": parent, "OPENINGBALANCE": opening,
                  "CLOSINGBALANCE": closing, "GUID": f"guid-ledger-{i}"}  # fmt: skip
        if match and values.get(match.group(1).upper()) != match.group(2):
            continue
        shown = escape(name)
        if bad_refs and i == 0:
            shown = "Ca&#4;sh\x04&#x1F;"  # Tally writes such references and bytes verbatim
        parts = [f'<LEDGER NAME={quoteattr(name)} RESERVEDNAME="">']
        for f in fields:
            tag = f.upper()
            if tag in values:
                text = shown if tag == "NAME" else escape(values[tag])
                parts.append(f'<{tag} TYPE="{FIELD_TYPES[tag]}">{text}</{tag}>')
        parts.append("</LEDGER>")
        yield "".join(parts)


FOREX_AMOUNT = "-$448.44 @ \u20b9 82.99/$ = -\u20b9 37216.04"


def _voucher(i: int, forex: bool = False) -> str:
    amount = f"{(i % 9973) * 3 + 0.25:.2f}"
    shown = FOREX_AMOUNT if forex else f"-{amount}"
    return (
        f'<VOUCHER REMOTEID="rid-{i}" VCHTYPE="Sales" ACTION="Create">'
        f'<DATE TYPE="Date">202404{(i % 28) + 1:02d}</DATE>'
        f'<VOUCHERTYPENAME TYPE="String">Sales</VOUCHERTYPENAME>'
        f'<VOUCHERNUMBER TYPE="String">{i}</VOUCHERNUMBER>'
        f'<PARTYLEDGERNAME TYPE="String">Customer {i % 500}</PARTYLEDGERNAME>'
        f'<AMOUNT TYPE="Amount">{shown}</AMOUNT>'
        f'<NARRATION TYPE="String">Being goods sold against invoice {i} as per order</NARRATION>'
        f'<GUID TYPE="String">5f0c2c2e-9a3b-4d1e-8c7a-{i:012d}</GUID>'
        "</VOUCHER>"
    )


def _day_book_voucher(i: int) -> str:
    return (
        f'<TALLYMESSAGE><VOUCHER VCHTYPE="Sales" ACTION="Create"><DATE>2024040{i + 1}</DATE>'
        f"<GUID>guid-vch-{i}</GUID><VOUCHERTYPENAME>Sales</VOUCHERTYPENAME>"
        f"<VOUCHERNUMBER>{i + 1}</VOUCHERNUMBER><PARTYLEDGERNAME>Northwind</PARTYLEDGERNAME>"
        f"<NARRATION>Day book entry {i + 1}</NARRATION>"
        "<ALLLEDGERENTRIES.LIST><LEDGERNAME>Northwind</LEDGERNAME>"
        f"<ISDEEMEDPOSITIVE>Yes</ISDEEMEDPOSITIVE><AMOUNT>-{100 * (i + 1)}.50</AMOUNT>"
        "<BILLALLOCATIONS.LIST><NAME>inv</NAME></BILLALLOCATIONS.LIST></ALLLEDGERENTRIES.LIST>"
        "<ALLLEDGERENTRIES.LIST><LEDGERNAME>Sales</LEDGERNAME>"
        f"<ISDEEMEDPOSITIVE>No</ISDEEMEDPOSITIVE><AMOUNT>{100 * (i + 1)}.50</AMOUNT>"
        "</ALLLEDGERENTRIES.LIST></VOUCHER></TALLYMESSAGE>"
    )


def answer(state: TallyState, req: Any) -> Iterator[str]:
    """The answer to one Export request, as pieces of text."""
    kind = (req.findtext("HEADER/TYPE") or "").strip().lower()
    ident = (req.findtext("HEADER/ID") or "").strip()
    statics = req.find("BODY/DESC/STATICVARIABLES")
    company = statics.findtext("SVCURRENTCOMPANY") if statics is not None else None
    if company is not None and company not in state.companies:
        yield line_error(f"Could not set 'SVCurrentCompany' to '{company}'")
        return
    if kind == "data":
        if ident == "Trial Balance":
            yield "<ENVELOPE>"
            for name, _parent, _opening, closing in LEDGERS:
                debit, credit = (closing, "") if closing.startswith("-") else ("", closing)
                yield (f"<DSPACCNAME><DSPDISPNAME>{escape(name)}</DSPDISPNAME></DSPACCNAME>"
                       f"<DSPACCINFO><DSPCLDRAMT><DSPCLDRAMTA>{debit}</DSPCLDRAMTA></DSPCLDRAMT>"
                       f"<DSPCLCRAMT><DSPCLCRAMTA>{credit}</DSPCLCRAMTA></DSPCLCRAMT></DSPACCINFO>")  # fmt: skip
            yield "</ENVELOPE>"
        elif ident == "Day Book":
            yield (
                _envelope_start()
                + "<BODY><IMPORTDATA><REQUESTDESC><REPORTNAME>Vouchers</REPORTNAME></REQUESTDESC><REQUESTDATA>"
            )
            for i in range(3):
                yield _day_book_voucher(i)
            yield "</REQUESTDATA></IMPORTDATA></BODY></ENVELOPE>"
        else:
            yield line_error(f"Could not find Report '{ident}'!")
        return
    if kind != "collection":
        yield "<RESPONSE>Unknown Request, cannot be processed</RESPONSE>"
        return
    coll = req.find(f"BODY/DESC/TDL/TDLMESSAGE/COLLECTION[@NAME='{ident}']")
    if coll is None:
        yield line_error(f"Could not find Collection '{ident}'")
        return
    ctype = (coll.findtext("TYPE") or "").strip()
    fields = [f.strip() for f in (coll.findtext("FETCH") or "").split(",") if f.strip()]
    formula = None
    filter_name = coll.findtext("FILTER")
    if filter_name:
        system = req.find(f"BODY/DESC/TDL/TDLMESSAGE/SYSTEM[@NAME='{filter_name}']")
        formula = system.text if system is not None else None
        if formula is None or not re.match(r'^\s*\$(\w+)\s*=\s*"([^"]*)"\s*$', formula):
            yield line_error(f"Error in formula '{filter_name}'")
            return
    head = _envelope_start() + "<BODY><DESC></DESC><DATA><COLLECTION>"
    tail = "</COLLECTION></DATA></BODY></ENVELOPE>"
    if ctype == "Ledger":
        yield head
        yield from _ledger_objects(fields, formula, state.bad_refs)
        yield tail
    elif ctype == "Company":
        yield head
        for name in state.companies:
            yield (f"<COMPANY NAME={quoteattr(name)}><NAME TYPE=\"String\">{escape(name)}</NAME>"
                   '<STARTINGFROM TYPE="Date">20240401</STARTINGFROM></COMPANY>')  # fmt: skip
        yield tail
    elif ctype == "Stock Item":
        yield head
        for name, parent, qty in (
            ("Steel Rod", "Raw Materials", "120 Nos"),
            ("Bolt", "Spares", "40 Nos"),
        ):
            if formula and parent not in formula:
                continue
            yield (f"<STOCKITEM NAME={quoteattr(name)}><PARENT TYPE=\"String\">{parent}</PARENT>"
                   f'<CLOSINGBALANCE TYPE="Quantity">{qty}</CLOSINGBALANCE></STOCKITEM>')  # fmt: skip
        yield tail
    elif ctype == "Voucher":
        yield head
        batch: list[str] = []
        for i in range(state.vouchers):
            batch.append(_voucher(i, state.forex and i == 0))
            if len(batch) == 200:
                yield "".join(batch)
                batch = []
        yield "".join(batch) + tail
    else:
        yield line_error(f"Could not find Object Type '{ctype}'")


class TallyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    @property
    def state(self) -> TallyState:
        return self.server.state  # type: ignore[attr-defined]

    def _error_page(self) -> bool:
        if self.state.error_page is None:
            return False
        status, html = self.state.error_page
        body = html.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        return True

    def do_GET(self) -> None:
        if self._error_page():
            return
        self.state.greetings += 1
        text = "<RESPONSE>TallyPrime Server is Running</RESPONSE>"
        utf16 = self.state.encoding.startswith("utf-16")
        body = (b"\xff\xfe" + text.encode("utf-16-le")) if utf16 else text.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/xml; charset=utf-16" if utf16 else "text/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.state.raw_requests.append(raw)
        req = SafeET.fromstring(raw, forbid_dtd=True)
        self.state.requests.append(req)
        if self._error_page():
            return
        if self.state.silent:
            self.state.stalled.set()
            self.state.release.wait(timeout=30)
            self.close_connection = True
            return
        utf16 = self.state.encoding.startswith("utf-16")
        self.send_response(200)
        self.send_header("Content-Type", f"text/xml; charset={'utf-16' if utf16 else 'utf-8'}")
        if self.state.framing == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        try:
            self._write_all(req, utf16)
        except (BrokenPipeError, ConnectionResetError):
            self.state.disconnected.set()
            self.close_connection = True

    def _piece(self, data: bytes) -> None:
        if self.state.framing == "chunked":
            send_chunk(self, data)
        elif data:
            self.wfile.write(data)

    def _write_all(self, req: Any, utf16: bool) -> None:
        codec = "utf-16-le" if utf16 else "utf-8"
        if self.state.encoding == "utf-16-nobom":
            self._piece("\r\n".encode(codec))
        elif utf16:
            self._piece(b"\xff\xfe" + '<?xml version="1.0" encoding="UTF-16"?>\r\n'.encode(codec))
        if self.state.hostile:
            doc = BILLION_LAUGHS if self.state.hostile == "billion_laughs" else EXTERNAL_ENTITY
            if utf16:  # one declaration only: the UTF-16 one written above
                doc = doc.split("?>", 1)[1]
            pieces: Iterator[str] = iter([doc])
        elif self.state.raw_answer is not None:
            pieces = iter([self.state.raw_answer])
        else:
            pieces = answer(self.state, req)
        sent = 0
        for piece in pieces:
            data = piece.encode(codec)
            step = 7 if self.state.bad_refs else len(data) or 1
            for at in range(0, len(data), step):
                self._piece(data[at : at + step])
            sent += 1
            if self.state.truncate_after is not None and sent >= self.state.truncate_after:
                self.wfile.flush()
                self.close_connection = True
                return  # no final chunk: the answer stops mid-document
            if self.state.stall and sent == 2:
                self.wfile.flush()
                self.state.stalled.set()
                self.state.release.wait(timeout=30)
                raise BrokenPipeError("the fake stops here")
        self._piece(b"")


def start_fake_tally(
    state: TallyState | None = None, tls_context: Any = None
) -> tuple[FakeHttpServer, TallyState]:
    state = state or TallyState()
    return FakeHttpServer(TallyHandler, state, tls_context=tls_context), state
