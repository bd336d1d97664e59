"""What every handler shares: the success envelope, JSON bodies, paging and field checks."""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Final

import orjson
from aiohttp import web

from shared import exactjson
from shared.errors import BadRequest, NotFound, PayloadTooLarge, ValidationError

from ..context import RELAY, Relay
from ..web.auth import Principal
from ..web.request_keys import PRINCIPAL


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
    """The body as a JSON object: 413 past the size limit, 400 if it is not JSON."""
    limit = request.app[RELAY].config.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise PayloadTooLarge(f"the request body is larger than {limit} bytes") from exc
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
    """A string field of ``lo`` to ``hi`` characters (``plain``: see ``check_plain_text``)."""
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
    return value
