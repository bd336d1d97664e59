"""What every handler shares: the success envelope, JSON bodies, paging and field checks."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import unicodedata
from typing import Any, Final

import orjson
from aiohttp import web

from shared import exactjson
from shared.errors import (
    BadRequest,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationError,
)

from ..context import RELAY, Relay
from ..web.auth import Principal
from ..web.request_keys import CLOSE_CONNECTION, PRINCIPAL


def relay_of(request: web.Request) -> Relay:
    return request.app[RELAY]


def principal(request: web.Request) -> Principal:
    return request[PRINCIPAL]


def ok(data: Any, *, status: int = 200, meta: dict[str, Any] | None = None) -> web.Response:
    body: dict[str, Any] = {"success": True, "data": data}
    if meta is not None:
        body["meta"] = meta
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


# Content codings aiohttp decodes (relay/web: the decoded size counts against the limit);
# any other would be read as if it were plain JSON.
CONTENT_CODINGS: Final = frozenset({"", "identity", "gzip", "deflate"})
UTF8_BOM: Final = b"\xef\xbb\xbf"
MAX_DEPTH: Final = 128  # arrays and objects in one another, at most (check_shape)


def _unreadable(request: web.Request) -> None:
    """The body is left unread: the connection ends after the answer (aiohttp would
    otherwise keep reading it, for up to 10 s, before the next request)."""
    request[CLOSE_CONNECTION] = True


def check_json_type(request: web.Request) -> None:
    """415 unless the body is JSON: ``Content-Type`` ``application/json`` or an
    ``application/*+json`` type, charset UTF-8 if one is named; a missing
    ``Content-Type`` is taken as JSON (docs/API.md, Request bodies)."""
    if "Content-Type" in request.headers:
        ctype = request.content_type  # lower case, without parameters
        if not (ctype == "application/json" or (ctype.startswith("application/") and ctype.endswith("+json"))):
            _unreadable(request)
            raise UnsupportedMediaType("the request body must be JSON: send Content-Type: application/json",
                                       details={"contentType": request.headers["Content-Type"][:80]})
        charset = request.charset
        if charset is not None and charset.lower() not in ("utf-8", "utf8"):
            _unreadable(request)
            raise UnsupportedMediaType("a JSON body must be UTF-8: leave charset out or send charset=utf-8",
                                       details={"contentType": request.headers["Content-Type"][:80]})
    coding = request.headers.get("Content-Encoding", "").strip().lower()
    if coding not in CONTENT_CODINGS:
        _unreadable(request)
        raise UnsupportedMediaType("Content-Encoding must be gzip or deflate, or left out")


def _not_json(raw: bytes, exc: exactjson.JSONDecodeError) -> BadRequest:
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in raw[:4]:
        return BadRequest("the request body is not UTF-8 (UTF-16 or UTF-32?): send JSON as UTF-8")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return BadRequest(f"the request body is not valid UTF-8 (at byte {bad.start})")
    if exc.msg.startswith("depth limit"):  # orjson's 1024 levels
        return BadRequest(f"the request body is nested deeper than {MAX_DEPTH} levels")
    return BadRequest(f"the request body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})")


class _DuplicateKey(Exception):
    pass


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise _DuplicateKey(name)
            seen.add(name)
    return value


def _shape(value: Any) -> tuple[int, int, int]:
    """How deep ``value``'s arrays and objects nest, how many object members it holds, and
    how many ``:`` its strings (keys too) hold; level by level, without recursion (a
    1 MiB body of 130,000 objects: ~0.1 s; a job: ~7 us)."""
    depth = keys = colons = 0
    level = [value]
    while level:
        below: list[Any] = []
        nested = False
        for item in level:
            kind = type(item)  # what a JSON parser makes: no subclasses
            if kind is str:
                colons += item.count(":")
            elif kind is dict:
                nested = True
                keys += len(item)
                colons += "".join(item).count(":")
                below.extend(item.values())
            elif kind is list:
                nested = True
                below.extend(item)
        depth += nested
        level = below
    return depth, keys, colons


def check_shape(raw: bytes, body: Any) -> None:
    """400 if ``body`` (parsed from ``raw``) nests deeper than ``MAX_DEPTH`` (past ~250
    levels the relay could not write it back out: a 500, once) or some object in ``raw``
    holds a name twice (JSON parsers keep the last one, or the first: which was meant is
    unknown). Without ``\\u`` escapes, every ``:`` in ``raw`` is a member's or inside a
    kept string exactly when no member was dropped, so counting decides; else ``json``
    reads it again to be sure."""
    depth, keys, colons = _shape(body)
    if depth > MAX_DEPTH:
        raise BadRequest(f"the request body is nested deeper than {MAX_DEPTH} levels")
    if b"\\u" not in raw and raw.count(b":") == keys + colons:
        return
    try:
        json.loads(raw, object_pairs_hook=_unique_pairs)
    except _DuplicateKey as dup:
        name = str(dup.args[0])[:80]
        raise BadRequest(f"the request body names {name!r} twice in one object", details={"field": name}) from None


async def read_json(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object: 413 past the size limit (decoded), 415 if it is not
    JSON by its ``Content-Type`` or ``Content-Encoding`` (``check_json_type``), 400 if it
    is not UTF-8 JSON, holds a name twice in one object, or does not decode as its
    ``Content-Encoding`` says. A UTF-8 byte-order mark is skipped (RFC 8259, 8.1)."""
    limit = request.app[RELAY].config.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        _unreadable(request)
        raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
    check_json_type(request)
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        _unreadable(request)  # a chunked or compressed body: the rest is not read
        raise PayloadTooLarge(f"the request body is larger than {limit} bytes") from exc
    except web.RequestPayloadError as exc:  # e.g. Content-Encoding: gzip on a body that is not
        # The rest of the body is unreadable: nothing to drain after the answer (aiohttp
        # would try, and log the decoding error with a stack), and the connection ends.
        request.content.feed_eof()
        request[CLOSE_CONNECTION] = True
        raise BadRequest("the request body cannot be decoded as its Content-Encoding says") from exc
    except ConnectionResetError as exc:  # the client hung up mid-body: no one reads the answer
        request[CLOSE_CONNECTION] = True
        raise BadRequest("the connection was lost before the request body ended") from exc
    raw = raw.removeprefix(UTF8_BOM)
    if not raw:
        raise BadRequest("a JSON body is required")
    if len(raw) > INLINE_BODY_BYTES:  # its parse and checks (~0.1 s for 1 MiB of small objects) off the loop
        return await asyncio.to_thread(_parsed, raw)
    return _parsed(raw)


INLINE_BODY_BYTES: Final = 64 * 1024  # a body up to this size is read on the event loop


def _parsed(raw: bytes) -> dict[str, Any]:
    try:
        body = exactjson.loads(raw)  # a parameter past 64 bits stays an exact integer
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        check_shape(raw, body)
    except exactjson.JSONDecodeError as exc:
        raise _not_json(raw, exc) from exc
    except RecursionError as exc:  # orjson reads 1024 levels, Python's json (big integers) fewer
        raise BadRequest(f"the request body is nested deeper than {MAX_DEPTH} levels") from exc
    return body


def paging(request: web.Request, *, max_limit: int = 100) -> tuple[int, int]:
    return (
        query_int(request, "page", 1, lo=1, hi=1_000_000),
        query_int(request, "limit", 20, lo=1, hi=max_limit),
    )


# ASCII digits only, an optional minus, at most 19 digits: ``int()`` alone also takes
# "\u0661\u0662\u0663" (Arabic-Indic), fullwidth digits, "1_000" and " 7 ", and
# ``str.isdigit`` takes "\u00b2", which ``int()`` then refuses (a 500, once).
_ASCII_INT: Final = re.compile(r"-?[0-9]{1,19}")


def strict_int(raw: str, name: str) -> int:
    """``raw`` as an integer written in ASCII digits, else 422 naming ``name``."""
    if not _ASCII_INT.fullmatch(raw):
        raise ValidationError(f"{name} must be an integer written with the digits 0-9", field=name)
    return int(raw)


def query_int(request: web.Request, name: str, default: int, *, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    value = strict_int(raw, name)
    if not lo <= value <= hi:
        raise ValidationError(f"{name} must be between {lo} and {hi}", field=name)
    return value


def query_choice(request: web.Request, name: str, choices: tuple[str, ...]) -> str | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    if raw not in choices:
        raise ValidationError(f"{name} must be one of {', '.join(choices)}", field=name)
    return raw


def not_found(kind: str, ident: str) -> NotFound:
    return NotFound(f"{kind} {ident[:80]} does not exist", details={"id": ident[:80]})


# Bidirectional formatting characters (Unicode's Bidi_Control set): an override or isolate
# in a name shown beside other text reorders what a reader sees ("Trojan Source").
BIDI_CONTROLS: Final = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _invisible_class() -> str:
    """A regex character class of every code point that is white space (``str.isspace``)
    or an invisible format character (category Cf: zero-width space and joiners, a BOM,
    word joiner, tag characters); ``\\uXXXX`` ranges, astral ones as literal characters."""
    # Planes 0-1 and the tags block hold every such character (planes 2-3 are CJK, 15-16
    # private use): a fifth of the scan (0.1 -> 0.02 s at import); the test
    # test_a_visible_character_is_neither_blank_nor_an_invisible_format_one scans them all.
    candidates = itertools.chain(range(0x20000), range(0xE0000, 0xE1000))
    points = [c for c in candidates if chr(c).isspace() or unicodedata.category(chr(c)) == "Cf"]
    ranges: list[tuple[int, int]] = []
    for c in points:
        if ranges and ranges[-1][1] == c - 1:
            ranges[-1] = (ranges[-1][0], c)
        else:
            ranges.append((c, c))

    def one(c: int) -> str:
        return f"\\u{c:04x}" if c <= 0xFFFF else chr(c)

    return "".join(one(a) if a == b else f"{one(a)}-{one(b)}" for a, b in ranges)


# Some character that is neither white space nor invisible: what a connector name needs
# (relay/api/openapi.py publishes the same pattern).
VISIBLE: Final = f"[^{_invisible_class()}]"
_VISIBLE_RE: Final = re.compile(VISIBLE)


def check_plain_text(value: str, name: str) -> None:
    """422 naming ``name`` if ``value`` holds a control character (C0 incl. NUL and tab,
    DEL, C1), a line or paragraph separator, or a bidirectional formatting character."""
    for ch in value:
        if ch in BIDI_CONTROLS or unicodedata.category(ch) in ("Cc", "Zl", "Zp", "Cs"):
            raise ValidationError(
                f"{name} must not contain control or bidirectional formatting characters "
                f"(found U+{ord(ch):04X})",
                field=name,
            )


def check_fields_known(body: dict[str, Any], known: frozenset[str] | set[str], where: str = "") -> None:
    """422 naming the first field of ``body`` that is not in ``known``."""
    unknown = sorted(set(body) - set(known))
    if unknown:
        raise ValidationError(f"{where}{unknown[0][:80]} is not a known field", field=unknown[0][:80])


def string_field(
    body: dict[str, Any], name: str, *, required: bool = True, lo: int = 1, hi: int = 200,
    plain: bool = False,
) -> str | None:
    """A string field of ``lo`` to ``hi`` characters (``plain``: see ``check_plain_text``,
    and at least one character that is neither whitespace nor an invisible format one)."""
    value = body.get(name)
    if value is None:
        if required:
            raise ValidationError(f"{name} is required", field=name)
        return None
    if not isinstance(value, str):
        raise ValidationError(f"{name} must be a string", field=name)
    if not lo <= len(value.strip()) <= hi or not lo <= len(value) <= hi:
        raise ValidationError(f"{name} must be {lo} to {hi} characters", field=name)
    if plain:
        check_plain_text(value, name)
        if not _VISIBLE_RE.search(value):
            # Zero-width spaces, joiners, a BOM: as empty as "" to whoever reads the name.
            raise ValidationError(f"{name} must contain a visible character", field=name)
    return value
