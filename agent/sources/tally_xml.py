"""Reading Tally's XML answers incrementally, safely and despite their blemishes.

Tally (TallyPrime / Tally.ERP 9) answers in UTF-8 or UTF-16 (with or without a byte-order
mark, with an XML declaration that may or may not match), and writes character references
that XML 1.0 forbids (``&#4;`` and other control characters) straight from its data.
``XmlCleaner`` turns any of that, a piece at a time, into clean UTF-8 without a
declaration: it decodes incrementally, drops forbidden character references and raw
control characters, and holds back a reference split across two pieces.

``TallyReader`` feeds the clean pieces to defusedxml's expat SAX parser (a DTD, entity
declarations and external references are refused, so "billion laughs" and XXE cannot
work) and collects objects as they close: children of ``COLLECTION`` or ``TALLYMESSAGE``
and the ``DSPACCNAME``/``DSPACCINFO`` pairs of reports. Nothing else is kept, so memory
stays bounded by one piece plus the objects not yet fetched. ``STATUS`` and
``LINEERROR`` are recorded for the caller.
"""

from __future__ import annotations

import codecs
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from xml.sax import SAXParseException

from defusedxml.common import DefusedXmlException
from defusedxml.expatreader import DefusedExpatParser

from shared.errors import JobError

_CHARREF = re.compile(r"&#(?:[xX]([0-9A-Fa-f]{1,8})|([0-9]{1,10}));")
_CTRL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_DECL = re.compile(r"^\s*<\?xml[^>]*\?>")
_DECL_ENCODING = re.compile(rb"""encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
# One field's text, in characters. A longer value in an object fails the job with
# RESULT_TOO_LARGE (its row could not go out in one chunk anyway): data is never cut.
# Text outside objects (error texts, the response's words) is only cut at this length.
MAX_TEXT = 1 << 20
OBJECT_PARENTS = {"COLLECTION", "TALLYMESSAGE"}
REPORT_OBJECTS = {"DSPACCNAME", "DSPACCINFO"}


def _valid_xml_char(cp: int) -> bool:
    return (
        cp in (0x9, 0xA, 0xD)
        or 0x20 <= cp <= 0xD7FF
        or 0xE000 <= cp <= 0xFFFD
        or 0x10000 <= cp <= 0x10FFFF
    )


def _fix_ref(m: re.Match[str]) -> str:
    cp = int(m.group(1), 16) if m.group(1) else int(m.group(2))
    return m.group(0) if _valid_xml_char(cp) else ""


def clean_text(text: str) -> str:
    if "&#" in text:
        text = _CHARREF.sub(_fix_ref, text)
    return _CTRL.sub("", text)


def _utf16_by_nuls(sample: bytes) -> str | None:
    """UTF-16 without a byte-order mark, told by where its NULs fall: markup and whitespace
    are ASCII, so every other byte is 0 (UTF-8 and 8-bit text hold no NUL bytes)."""
    if len(sample) < 4:
        return None
    even, odd = sample[0::2], sample[1::2]
    if odd.count(0) * 2 > len(odd) and even.count(0) * 4 < len(even):
        return "utf-16-le"
    if even.count(0) * 2 > len(even) and odd.count(0) * 4 < len(odd):
        return "utf-16-be"
    return None


class XmlCleaner:
    """Bytes in any of Tally's encodings in, clean declaration-free UTF-8 out, piece by piece."""

    def __init__(self, charset: str | None = None) -> None:
        self.charset = charset
        self.encoding: str | None = None
        self._head = b""
        self._decoder: Any = None
        self._tail = ""
        self._prolog = True  # still before the end of a possible XML declaration

    def _detect(self, head: bytes) -> tuple[str, int]:
        if head.startswith(codecs.BOM_UTF8):
            return "utf-8", 3
        if head.startswith(codecs.BOM_UTF16_LE):
            return "utf-16-le", 2
        if head.startswith(codecs.BOM_UTF16_BE):
            return "utf-16-be", 2
        utf16 = _utf16_by_nuls(head[:200])
        if utf16:
            return utf16, 0
        m = _DECL_ENCODING.search(head[:200])
        for name in (m.group(1).decode("ascii") if m else None, self.charset):
            if not name:
                continue
            try:
                enc = codecs.lookup(name).name
            except LookupError:
                continue
            if not enc.startswith("utf-16"):  # a UTF-16 label on 8-bit bytes is a lie
                return enc, 0
        return "utf-8", 0

    def feed(self, data: bytes, final: bool = False) -> bytes:
        if self._decoder is None:
            self._head += data
            if len(self._head) < 200 and not final:
                return b""
            self.encoding, skip = self._detect(self._head)
            self._decoder = codecs.getincrementaldecoder(self.encoding)(errors="replace")
            data, self._head = self._head[skip:], b""
        text = self._tail + self._decoder.decode(data, final)
        self._tail = ""
        if self._prolog:
            stripped = text.lstrip()
            if stripped.startswith("<?xml") and "?>" not in stripped and not final:
                self._tail = text
                return b""
            text = _DECL.sub("", text, count=1)
            self._prolog = False
        if not final:
            amp = text.rfind("&", max(0, len(text) - 16))
            if amp >= 0 and ";" not in text[amp:]:
                text, self._tail = text[:amp], text[amp:]
        return clean_text(text).encode("utf-8")

    def finish(self) -> bytes:
        return self.feed(b"", final=True)


@dataclass
class TallyObject:
    """One object of an answer: its tag, attributes, simple fields and ``.LIST`` entries."""

    tag: str
    attrs: dict[str, str]
    fields: dict[str, tuple[str | None, str]] = field(default_factory=dict)
    lists: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


class _Handler:
    """Expat callbacks (set straight on defusedxml's expat parser, skipping SAX's per-element
    attribute objects: this loop runs for every element of a 200,000-voucher export)."""

    def __init__(self, reader: TallyReader) -> None:
        self.r = reader
        self.stack: list[str] = []
        self.obj: TallyObject | None = None
        self.obj_depth = 0
        self.flat = False
        self.text: list[str] = []
        self.text_len = 0
        self.types: list[str | None] = []
        self.entry: dict[str, Any] | None = None

    def startElement(self, name: str, attrs: dict[str, str]) -> None:
        stack = self.stack
        parent = stack[-1] if stack else None
        stack.append(name)
        self.text = []
        self.text_len = 0
        if self.obj is None:
            report = name in REPORT_OBJECTS and parent == "ENVELOPE"
            if parent in OBJECT_PARENTS or report:
                self.obj = TallyObject(name, dict(attrs))
                self.obj_depth, self.flat = len(stack), report
            return
        self.types.append(attrs.get("TYPE"))
        if len(stack) == self.obj_depth + 1 and not self.flat and name.endswith(".LIST"):
            self.entry = {}

    def characters(self, content: str) -> None:
        if self.text_len <= MAX_TEXT:
            self.text.append(content)
            self.text_len += len(content)
            if self.text_len > MAX_TEXT and self.obj is not None:
                self._too_long()

    def _too_long(self) -> None:
        """A field of an object passed ``MAX_TEXT``: whitespace between elements is dropped
        (it is never data); a value that long fails the job rather than being cut."""
        if not "".join(self.text).strip():
            self.text, self.text_len = [], 0
            return
        obj = self.obj
        assert obj is not None
        name = obj.attrs.get("NAME")
        which = f"{obj.tag} {name[:100]!r}" if name else f"a {obj.tag}"
        raise JobError(
            "RESULT_TOO_LARGE",
            f"Tally sent a value of more than {MAX_TEXT:,} characters in <{self.stack[-1]}> of "
            f"{which}; the agent does not cut values, so the job stops: leave that field out "
            "of 'fields' or narrow the query",
            retryable=False,
        )

    def endElement(self, name: str) -> None:
        depth = len(self.stack)
        self.stack.pop()
        text = "".join(self.text).strip() if self.text else ""
        self.text = []
        self.text_len = 0
        obj = self.obj
        if obj is None:
            if name == "STATUS" and self.stack[-1:] == ["HEADER"]:
                self.r.status = text
            elif name == "LINEERROR" and text:
                self.r.errors.append(text)
            elif name == "RESPONSE" and not self.stack and text:
                self.r.response_text = text
            return
        if depth == self.obj_depth:
            self.r.objects.append(obj)
            self.obj = None
            return
        kind = self.types.pop()
        if self.flat:
            if text:
                obj.fields[name] = (kind, text)
        elif depth == self.obj_depth + 1:
            if name.endswith(".LIST"):
                if self.entry is not None:
                    obj.lists.setdefault(name[:-5], []).append(self.entry)
                self.entry = None
            elif name == "LINEERROR":
                self.r.errors.append(text)
            else:
                obj.fields[name] = (kind, text)
        elif depth == self.obj_depth + 2 and self.entry is not None and text:
            have = self.entry.get(name)
            if have is None:
                self.entry[name] = text
            elif isinstance(have, list):
                have.append(text)
            else:
                self.entry[name] = [have, text]


class TallyReader:
    """Feeds pieces of an answer through the cleaner and the parser; objects pile up in
    ``objects`` until taken."""

    def __init__(self, charset: str | None = None) -> None:
        self.cleaner = XmlCleaner(charset)
        self.objects: deque[TallyObject] = deque()
        self.status: str | None = None
        self.errors: list[str] = []
        self.response_text: str | None = None
        self.bytes_in = 0
        self._parser = DefusedExpatParser(forbid_dtd=True)
        self._parser.reset()  # makes the expat parser, with defusedxml's refusing handlers
        expat = self._parser._parser
        handler = self._handler = _Handler(self)
        expat.buffer_text = True
        expat.StartElementHandler = handler.startElement
        expat.EndElementHandler = handler.endElement
        expat.CharacterDataHandler = handler.characters
        self._parser._parsing = 1  # so feed() keeps this parser instead of resetting it
        self._fed = False
        self.done = False

    def feed(self, data: bytes) -> None:
        self.bytes_in += len(data)
        self._parse(self.cleaner.feed(data))

    def finish(self) -> None:
        self._parse(self.cleaner.finish())
        if not self._fed:
            raise JobError("QUERY_FAILED", "Tally sent an empty answer", retryable=False)
        try:
            self._parser.close()
        except SAXParseException as exc:
            if self._handler.stack:
                raise self._truncated() from exc
            raise _malformed(exc) from exc
        if self._handler.stack:
            raise self._truncated()
        self.done = True

    def _truncated(self) -> JobError:
        """The answer stopped inside its document: the connection closed early (Tally closed,
        crashed or ran out of memory mid-export). Another attempt may well succeed."""
        return JobError(
            "SOURCE_UNAVAILABLE",
            f"Tally's answer ended before its XML was complete (after {self.bytes_in} bytes, "
            f"inside <{self._handler.stack[-1]}>): the connection closed early; a narrower "
            "query (dates, filter) may help if it recurs",
        )

    def _parse(self, clean: bytes) -> None:
        if not clean:
            return
        self._fed = True
        try:
            self._parser.feed(clean)
        except DefusedXmlException as exc:
            raise JobError(
                "QUERY_FAILED",
                f"Tally's answer holds a DTD or entity declaration ({type(exc).__name__}); "
                "refused unparsed",
                retryable=False,
            ) from exc
        except SAXParseException as exc:
            raise _malformed(exc) from exc


def _malformed(exc: SAXParseException) -> JobError:
    return JobError(
        "QUERY_FAILED",
        f"Tally's answer is not well-formed XML (line {exc.getLineNumber()}): {exc.getMessage()}",
        retryable=False,
    )
