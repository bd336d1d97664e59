"""Tally (TallyPrime / Tally.ERP 9) through its XML-over-HTTP gateway (default port 9000).

A query ``{"collection", "fields", "company", "fromDate", "toDate", "filter"}`` becomes an
Export request (Tally's "Integration Capabilities: XML Request and Response Formats"):
``ENVELOPE/HEADER`` with ``VERSION`` 1, ``TALLYREQUEST`` Export, ``TYPE`` Collection and
``ID`` naming an inline TDL collection defined in ``BODY/DESC/TDL/TDLMESSAGE`` with its
``TYPE``, the ``FETCH`` list and an optional ``FILTER`` backed by a ``SYSTEM TYPE="Formulae"``
formula; ``STATICVARIABLES`` carry ``SVEXPORTFORMAT`` ($$SysName:XML),
``SVCURRENTCOMPANY`` and ``SVFROMDATE``/``SVTODATE`` (YYYYMMDD). ``{"report": "Trial
Balance" | "Day Book", "company", "fromDate", "toDate"}`` exports those reports
(``TYPE`` Data) as rows. Every value a job supplies is validated against a short pattern
or XML-escaped, so a job cannot add XML or TDL of its own. The answer is read in pieces
and parsed incrementally (``tally_xml``); ``LINEERROR`` and ``STATUS`` 0 become
``QUERY_FAILED`` with Tally's words.

Options: ``company`` (default company), ``timeout`` (seconds a single socket wait may
take), ``ca_file`` and ``verify=false`` when the gateway sits behind TLS.
"""

from __future__ import annotations

import datetime as dt
import decimal
import re
import time
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from shared.errors import JobError

from .base import Column, QueryStream, Row, Source
from .tally_catalog import REPORTS, catalog, field_type, find_collection
from .tally_xml import TallyObject, TallyReader, XmlCleaner
from .webclient import DEFAULT_IO_TIMEOUT, Channel, Endpoint, parse_bool, parse_positive

FIELD = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}\Z")  # \Z: "$" also matches before a "\n"
# What XML 1.0 cannot carry in text: control characters, lone surrogates, U+FFFE/U+FFFF.
NOT_XML = re.compile("[\x00-\x1f\ud800-\udfff\ufffe\uffff]")
AMOUNT = re.compile(r"^-?\d+(?:\.\d+)?$")
# An amount with a currency symbol or code ("-₹ 37216.04", "₹1,23,456.00", "Rs. 500",
# "USD 12.50"; "?" where an 8-bit export lost the ₹): sign, symbol, sign, digits.
SYMBOL_AMOUNT = re.compile(
    r"^(-?)\s*(?:[^\w\s.,()+-]{1,2}|Rs\.?|[A-Z]{3})\s*(-?)\s*(\d[\d,]*(?:\.\d+)?)$"
)
QUERY_KEYS = {"collection", "report", "fields", "company", "fromDate", "toDate", "filter"}
MAX_FILTER = 2000
MAX_COMPANY = 256
COLLECTION_ID = "MiniConnectorExport"
FILTER_ID = "MiniConnectorFilter"


def _bad(message: str) -> JobError:
    return JobError("QUERY_FAILED", message, retryable=False)


def tally_date(value: Any, key: str) -> str | None:
    """``YYYY-MM-DD`` or ``YYYYMMDD`` to Tally's ``YYYYMMDD``."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        for fmt in ("%Y-%m-%d", "%Y%m%d"):
            try:
                day = dt.datetime.strptime(value, fmt).date()
            except ValueError:
                continue
            return day.isoformat().replace("-", "")  # four year digits, unlike strftime
    raise _bad(f"'{key}' must be a date as YYYY-MM-DD")


def _plain_text(value: Any, key: str, limit: int) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > limit or NOT_XML.search(value):
        raise _bad(
            f"'{key}' must be one line of text of at most {limit} characters "
            "(no control characters, lone surrogates or U+FFFE/U+FFFF)"
        )
    return value


def _company(value: Any) -> str | None:
    company = _plain_text(value, "company", MAX_COMPANY)
    # Tally evaluates a static variable that starts with $$ or ## as a TDL formula.
    if company is not None and company.lstrip()[:1] in ("$", "#", "@"):
        raise _bad("'company' must be a company name, not a TDL formula")
    return company


def _statics(company: str | None, from_date: str | None, to_date: str | None) -> str:
    parts = ["<SVEXPORTFORMAT>$$SysName:XML</SVEXPORTFORMAT>"]
    if company:
        parts.append(f"<SVCURRENTCOMPANY>{escape(company)}</SVCURRENTCOMPANY>")
    if from_date:
        parts.append(f"<SVFROMDATE>{from_date}</SVFROMDATE>")
    if to_date:
        parts.append(f"<SVTODATE>{to_date}</SVTODATE>")
    return "<STATICVARIABLES>" + "".join(parts) + "</STATICVARIABLES>"


def _envelope(kind: str, ident: str, desc: str) -> bytes:
    return (
        "<ENVELOPE><HEADER><VERSION>1</VERSION><TALLYREQUEST>Export</TALLYREQUEST>"
        f"<TYPE>{kind}</TYPE><ID>{escape(ident)}</ID></HEADER>"
        f"<BODY><DESC>{desc}</DESC></BODY></ENVELOPE>"
    ).encode()


def build_request(request: dict[str, Any], default_company: str | None) -> tuple[bytes, Plan]:
    """The Export envelope for a job's query, and how to turn the answer into rows."""
    unknown = set(request) - QUERY_KEYS
    if unknown:
        raise _bad(f"unknown query keys for tally: {', '.join(sorted(unknown))}")
    company = _company(request.get("company")) or default_company
    from_date = tally_date(request.get("fromDate"), "fromDate")
    to_date = tally_date(request.get("toDate"), "toDate")
    if from_date and to_date and from_date > to_date:
        raise _bad("'fromDate' is after 'toDate'")
    statics = _statics(company, from_date, to_date)
    if request.get("report") is not None:
        if request.get("collection") is not None or request.get("fields") or request.get("filter"):
            raise _bad("a report query takes only report, company, fromDate and toDate")
        report = REPORTS.get(str(request["report"]).replace(" ", "").lower())
        if report is None:
            names = ", ".join(r.name for r in REPORTS.values())
            raise _bad(
                f"unsupported Tally report {str(request['report'])[:60]!r}; supported: {names}"
            )
        statics = statics.replace(
            "<STATICVARIABLES>", "<STATICVARIABLES><EXPLODEFLAG>Yes</EXPLODEFLAG>"
        )
        return _envelope("Data", report.name, statics), Plan(report.mode, list(report.columns))
    spec = find_collection(request.get("collection"))
    fields = request.get("fields") or list(spec.fields)
    if isinstance(fields, str):
        fields = [f.strip() for f in fields.split(",")]
    if not isinstance(fields, list) or not all(
        isinstance(f, str) and FIELD.match(f) for f in fields
    ):
        raise _bad(
            "'fields' must be a list of Tally method names such as 'Name' or 'ClosingBalance'"
        )
    fields = list(dict.fromkeys(fields))
    formula = _plain_text(request.get("filter"), "filter", MAX_FILTER)
    tdl = [
        f'<COLLECTION NAME={quoteattr(COLLECTION_ID)} ISMODIFY="No">',
        f"<TYPE>{escape(spec.tdl_type)}</TYPE>",
        f"<FETCH>{', '.join(fields)}</FETCH>",
    ]
    if formula:
        tdl.append(f"<FILTER>{FILTER_ID}</FILTER>")
    tdl.append("</COLLECTION>")
    if formula:
        tdl.append(
            f'<SYSTEM TYPE="Formulae" NAME={quoteattr(FILTER_ID)}>{escape(formula)}</SYSTEM>'
        )
    desc = statics + "<TDL><TDLMESSAGE>" + "".join(tdl) + "</TDLMESSAGE></TDL>"
    return _envelope("Collection", COLLECTION_ID, desc), Plan("collection", fields)


class Plan:
    """How the objects of one answer become rows."""

    def __init__(self, mode: str, names: list[str]) -> None:
        self.mode = mode  # "collection", "trial_balance" or "day_book"
        self.names = names
        self.tags = [n.upper() for n in names]
        self.types: list[str] = [field_type(n) for n in names]
        self._pending_name: str | None = None

    def learn(self, first: TallyObject | None) -> list[Column]:
        """Column types from the first object's TYPE attributes, else from the field names."""
        if self.mode == "collection" and first is not None:
            for i, tag in enumerate(self.tags):
                if tag in first.fields and first.fields[tag][0]:
                    self.types[i] = _TYPE_ATTR.get(first.fields[tag][0].lower(), "string")
                elif tag in first.lists:
                    self.types[i] = "json"
        return [{"name": n, "type": t} for n, t in zip(self.names, self.types, strict=True)]

    def row(self, obj: TallyObject) -> Row | None:
        if self.mode == "trial_balance":
            if obj.tag == "DSPACCNAME":
                self._pending_name = obj.fields.get("DSPDISPNAME", (None, ""))[1] or None
                return None
            name, self._pending_name = self._pending_name, None
            return [name, _amount(_text(obj, "DSPCLDRAMTA")), _amount(_text(obj, "DSPCLCRAMTA"))]
        if self.mode == "day_book":
            if obj.tag != "VOUCHER":
                return None
            total = decimal.Decimal(0)
            for key in ("ALLLEDGERENTRIES", "LEDGERENTRIES"):
                for entry in obj.lists.get(key, []):
                    raw = entry.get("AMOUNT")
                    amt = _amount(raw if isinstance(raw, str) else None)
                    if amt is not None and amt.startswith("-"):
                        total -= decimal.Decimal(amt)
            return [
                _text(obj, "GUID"),
                _date(_text(obj, "DATE")),
                _text(obj, "VOUCHERTYPENAME") or obj.attrs.get("VCHTYPE"),
                _text(obj, "VOUCHERNUMBER"),
                _text(obj, "PARTYLEDGERNAME"),
                _text(obj, "NARRATION"),
                format(total, "f"),
            ]
        return [
            self._value(obj, tag, kind) for tag, kind in zip(self.tags, self.types, strict=True)
        ]

    @staticmethod
    def _value(obj: TallyObject, tag: str, kind: str) -> Any:
        if tag in obj.fields:
            attr, text = obj.fields[tag]
            kind = _TYPE_ATTR.get(attr.lower(), kind) if attr else kind
            return convert(text, kind)
        if tag in obj.lists:
            return obj.lists[tag]
        if tag in obj.attrs:
            return convert(obj.attrs[tag], kind)
        return None


_TYPE_ATTR = {"amount": "decimal", "number": "decimal", "date": "date", "logical": "boolean"}


def _text(obj: TallyObject, tag: str) -> str | None:
    value = obj.fields.get(tag)
    return value[1] if value and value[1] else obj.attrs.get(tag) or None


def _amount(text: str | None) -> str | None:
    """Tally's amount text as an exact decimal string: plain (``-12500.50``), with Indian or
    Western digit grouping (``1,23,45,678.90``), with a currency symbol (``-₹ 37216.04``), or
    in the foreign-currency form ``-$448.44 @ ₹ 82.99/$ = -₹ 37216.04``, whose value in the
    company's base currency is the part after the last ``=``. Anything else stays text."""
    if not text:
        return None
    plain = text.strip()
    if "@" in plain and "=" in plain:
        plain = plain.rsplit("=", 1)[1].strip()
    plain = plain.replace(",", "")
    if AMOUNT.match(plain):
        return format(decimal.Decimal(plain), "f")
    m = SYMBOL_AMOUNT.match(plain)
    if m and not (m.group(1) and m.group(2)):
        return format(decimal.Decimal(m.group(1) + m.group(2) + m.group(3)), "f")
    return text


def _date(text: str | None) -> str | None:
    if not text:
        return None
    if len(text) == 8 and text.isdigit():
        try:  # a real calendar day: 20240231 is no date, whatever its digits look like
            return dt.date(int(text[:4]), int(text[4:6]), int(text[6:])).isoformat()
        except ValueError:
            return text
    for fmt in ("%Y%m%d", "%d-%b-%Y", "%d-%b-%y"):
        try:
            return dt.datetime.strptime(text.strip(), fmt).date().isoformat()
        except ValueError:
            continue
    return text


def convert(text: str, kind: str) -> Any:
    if text == "":
        return None
    if kind == "decimal":
        return _amount(text)
    if kind == "date":
        return _date(text)
    if kind == "boolean":
        low = text.strip().lower()
        return True if low == "yes" else False if low == "no" else text
    return text


def _decode(body: bytes, charset: str | None) -> str:
    """A short answer (the greeting, an error page) as text, in whichever of Tally's
    encodings it came (UTF-16 with or without a byte-order mark, UTF-8, 8-bit)."""
    return XmlCleaner(charset).feed(body, final=True).decode("utf-8", "replace")


def gateway_error(status: int, body: bytes, resp: Any) -> JobError:
    """What an HTTP status other than 200 means: a 5xx, 408 or 429 may pass (retryable);
    another (404 from a proxy in front of the gateway, 401 from one that wants a login) is
    the URL's or the set-up's, not retried. The page's text, tags dropped, says the rest."""
    text = _decode(body, resp.headers.get_content_charset())
    words = re.sub(r"<[^>]*>", " ", text).split()
    detail = " ".join(words)[:200]
    return JobError(
        "SOURCE_UNAVAILABLE",
        f"Tally's gateway answered HTTP {status}" + (f": {detail}" if detail else ""),
        retryable=status >= 500 or status in (408, 429),
    )


class TallySource(Source):
    """One Tally gateway (the companies open in it are chosen per query)."""

    def __init__(
        self,
        name: str,
        kind: str,
        url: str,
        *,
        password: str | None = None,
        options: dict[str, str] | None = None,
        pool_size: int = 4,
    ) -> None:
        super().__init__(name, kind)
        opts = dict(options or {})
        self.company = _company(opts.get("company")) if opts.get("company") else None
        self.endpoint = Endpoint(
            name,
            url,
            default_port=9000,
            ca_file=opts.get("ca_file"),
            verify=parse_bool(opts.get("verify"), True),
            io_timeout=parse_positive(opts.get("timeout"), DEFAULT_IO_TIMEOUT, name="timeout"),
        )
        self.path = self.endpoint.base_path or "/"

    def test(self) -> dict[str, Any]:
        channel = Channel(self.endpoint, deadline=time.monotonic() + self.endpoint.io_timeout)
        try:
            started = time.perf_counter()
            resp = channel.request("GET", self.path)
            body = channel.read_capped(resp, 1 << 16)
            if resp.status != 200:
                raise gateway_error(resp.status, body, resp)
            latency = round((time.perf_counter() - started) * 1000)
        finally:
            channel.close()
        text = re.sub(r"<[^>]*>", "", _decode(body, resp.headers.get_content_charset())).strip()
        version = re.sub(r"\s+is running\s*$", "", text, flags=re.IGNORECASE)[:100] or None
        # An XML export proves the gateway answers requests, not only the greeting.
        _, batches = self.query({"collection": "Company", "fields": ["Name"]}, 100)
        for _ in batches:
            pass
        return {"connected": True, "latencyMs": latency, "serverVersion": version,
                "tablesFound": len(catalog())}  # fmt: skip

    def discover(self, request: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return catalog()

    def _open(self, request: dict[str, Any], timeout: float | None) -> QueryStream:
        body, plan = build_request(request, self.company)
        return TallyStream(self, body, plan, timeout)


class TallyStream(QueryStream):
    """One Export request whose answer is parsed as it arrives; ``cancel`` aborts the socket."""

    def __init__(self, source: TallySource, body: bytes, plan: Plan, timeout: float | None) -> None:
        self.source = source
        self.body = body
        self.plan = plan
        self.columns: list[Column] = []
        self.deadline = time.monotonic() + timeout if timeout else None
        self.channel = Channel(source.endpoint, deadline=self.deadline)
        self.reader: TallyReader | None = None
        self._response: Any = None

    def start(self) -> None:
        headers = {"Content-Type": "text/xml; charset=utf-8", "Accept": "text/xml"}
        resp = self.channel.request("POST", self.source.path, self.body, headers)
        if resp.status != 200:
            raise gateway_error(resp.status, self.channel.read_capped(resp, 1 << 16), resp)
        self._response = resp
        self.reader = TallyReader(resp.headers.get_content_charset())
        while not self.reader.objects and not self.reader.done:
            self._pump()
        self._check_end()
        first = next((o for o in self.reader.objects if o.tag not in ("DSPACCNAME",)), None)
        self.columns = self.plan.learn(first)

    def _pump(self) -> None:
        assert self.reader is not None
        chunk = self.channel.read(self._response, 65536)
        if chunk:
            self.reader.feed(chunk)
        else:
            self.reader.finish()
        if self.reader.errors:
            raise JobError("QUERY_FAILED", f"Tally: {self.reader.errors[0][:500]}", retryable=False)

    def _check_end(self) -> None:
        reader = self.reader
        assert reader is not None
        if reader.done and reader.status == "0":
            raise JobError(
                "QUERY_FAILED", "Tally answered STATUS 0 (the request failed)", retryable=False
            )
        if reader.done and reader.response_text and not reader.objects:
            raise JobError("QUERY_FAILED", f"Tally: {reader.response_text[:500]}", retryable=False)

    def fetch(self, n: int) -> list[Row]:
        reader = self.reader
        if reader is None:
            return []
        out: list[Row] = []
        while len(out) < n:
            if not reader.objects:
                if reader.done:
                    break
                self._pump()
                continue
            row = self.plan.row(reader.objects.popleft())
            if row is not None:
                out.append(row)
        if reader.done:
            self._check_end()
        else:
            self.channel.check()
        return out

    def cancel(self) -> None:
        self.channel.abort()

    def close(self) -> None:
        self.channel.close()
        if self.reader is not None:
            self.reader.objects.clear()
