"""``GET /console``: the support and admin web console, every asset served from here.

The console is three static files in ``relay/console/`` (``index.html``, ``console.js``,
``console.css``), plain ES modules with no build step (docs/ARCHITECTURE.md says why).
At start they are read once, hashed and gzipped: ``index.html`` names each asset by its
hash (``/console/assets/console.<sha>.js``), so an asset is cached for a year and a new
relay version is fetched at once; ``index.html`` itself is never cached. The page signs in
with a platform token the browser keeps for its session only (sessionStorage) and calls
the REST API like any client: the console adds no API of its own.

Every response carries a strict Content-Security-Policy: scripts and styles from this
origin only (no inline script or style), connections to this origin only (the API and
its events WebSocket), no frames, no forms posting elsewhere, no plugins.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from aiohttp import web

from shared.errors import NotFound

FOLDER: Final = Path(__file__).resolve().parent.parent / "console"
CSP: Final = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
              "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")  # fmt: skip
_TYPES: Final = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes
    content_type: str


@dataclass(frozen=True)
class Bundle:
    index: Asset
    assets: dict[str, Asset]  # hashed name -> asset


def _asset(body: bytes, content_type: str) -> Asset:
    return Asset(body, gzip.compress(body, 9, mtime=0), content_type)


def load(folder: Path = FOLDER) -> Bundle:
    """Read, hash and compress the console's files; ``{{name}}`` in index.html becomes
    the hashed path of asset ``name``."""
    html = (folder / "index.html").read_text(encoding="utf-8")
    assets: dict[str, Asset] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix not in _TYPES:
            continue
        body = path.read_bytes()
        digest = hashlib.sha256(body).hexdigest()[:12]
        hashed = f"{path.stem}.{digest}{path.suffix}"
        assets[hashed] = _asset(body, _TYPES[path.suffix])
        html = html.replace("{{" + path.name + "}}", f"/console/assets/{hashed}")
    return Bundle(_asset(html.encode(), "text/html"), assets)


@functools.cache
def bundle() -> Bundle:
    """The console's files, read once (they are part of the installed package)."""
    return load()


def _respond(request: web.Request, asset: Asset, cache: str) -> web.Response:
    gz = "gzip" in request.headers.get("Accept-Encoding", "")
    resp = web.Response(body=asset.gzipped if gz else asset.body, headers=_HEADERS)
    resp.content_type = asset.content_type
    resp.charset = "utf-8"
    resp.headers["Cache-Control"] = cache
    resp.headers["Vary"] = "Accept-Encoding"
    if gz:
        resp.headers["Content-Encoding"] = "gzip"
    return resp


async def page(request: web.Request) -> web.Response:
    return _respond(request, bundle().index, "no-cache")


async def asset(request: web.Request) -> web.Response:
    found = bundle().assets.get(request.match_info["name"])
    if found is None:
        raise NotFound("no such console asset")
    return _respond(request, found, "public, max-age=31536000, immutable")
