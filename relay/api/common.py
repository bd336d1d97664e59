"""What every handler shares: the success envelope, JSON bodies, paging and field checks."""

from __future__ import annotations

import itertools
import re
import unicodedata
from typing import Any, Final

import orjson
from aiohttp import web

from shared import exactjson
from shared.errors import BadRequest, NotFound, PayloadTooLarge, ValidationError

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


async def read_json(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object: 413 past the size limit (decoded), 400 if it is not
    JSON or does not decode as its ``Content-Encoding`` says."""
    limit = request.app[RELAY].config.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise PayloadTooLarge(f"the request body is larger than {limit} bytes") from exc
    except web.RequestPayloadError as exc:  # e.g. Content-Encoding: gzip on a body that is not
        # The rest of the body is unreadable: nothing to drain after the answer (aiohttp
        # would try, and log the decoding error with a stack), and the connection ends.
        request.content.feed_eof()
        request[CLOSE_CONNECTION] = True
        raise BadRequest("the request body cannot be decoded as its Content-Encoding says") from exc
    if not raw:
        raise BadRequest("a JSON body is required")
    try:
        body = exactjson.loads(raw)  # a parameter past 64 bits stays an exact integer
    except exactjson.JSONDecodeError as exc:
        raise BadRequest("the request body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
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
