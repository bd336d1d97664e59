"""``GET /downloads/...``: the agent's built artifacts, with SHA-256 checksums.

A connector's ``downloadUrl`` names ``/downloads/mini-connector-linux`` or
``/downloads/mini-connector-windows.exe``; the relay serves every regular file directly
in the configured folder (``MC_RELAY_DOWNLOADS_DIR`` / ``--downloads-dir``), for example
those two and the ``.deb``. Each file comes with an ``X-Checksum-SHA256`` header;
``/downloads/<name>.sha256`` is its ``sha256sum`` line and ``/downloads/SHA256SUMS`` lists
them all (``sha256sum -c`` reads it). Public like the binaries themselves: no token.
Names are checked against a strict pattern and must resolve to a file directly inside
the folder, so no path (``..``, ``/``, a symlink out) reaches anything else. A missing
file or an unconfigured folder is 404 in the envelope.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from pathlib import Path

from aiohttp import web

from shared.errors import NotFound

from .common import relay_of

SUMS = "SHA256SUMS"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,200}$")


def _folder(request: web.Request) -> Path:
    folder = relay_of(request).config.downloads_dir
    if not folder:
        raise NotFound("downloads are not configured on this relay (MC_RELAY_DOWNLOADS_DIR)")
    return Path(folder).resolve()


def _artifact(folder: Path, name: str) -> Path:
    """The file ``name`` directly inside ``folder``, or NotFound."""
    missing = NotFound(f"no download named {name[:200]!r}")
    if not _NAME.match(name) or ".." in name or name == SUMS or name.endswith(".sha256"):
        raise missing
    path = (folder / name).resolve()
    if path.parent != folder or not path.is_file():
        raise missing
    return path


def serves(folder: str | None, name: str) -> bool:
    """Would ``GET /downloads/<name>`` answer with a file (the same checks as serving it)?"""
    if not folder:
        return False
    try:
        _artifact(Path(folder).resolve(), name)
    except NotFound:
        return False
    return True


def _artifacts(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    out = []
    for p in sorted(folder.iterdir()):
        try:
            out.append(_artifact(folder, p.name))
        except NotFound:
            continue
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


async def _checksum(request: web.Request, path: Path) -> str:
    """SHA-256 of ``path``, computed off the loop and cached per (size, mtime)."""
    stat = path.stat()
    cache = relay_of(request).download_sums
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in cache:
        cache[key] = await asyncio.to_thread(_sha256, path)
    return cache[key]


async def get(request: web.Request) -> web.StreamResponse:
    folder = _folder(request)
    name = request.match_info["name"]
    if name == SUMS:
        lines = [f"{await _checksum(request, p)}  {p.name}\n" for p in _artifacts(folder)]
        return web.Response(text="".join(lines), content_type="text/plain")
    if name.endswith(".sha256"):
        path = _artifact(folder, name[: -len(".sha256")])
        return web.Response(text=f"{await _checksum(request, path)}  {path.name}\n", content_type="text/plain")
    path = _artifact(folder, name)
    headers = {
        "X-Checksum-SHA256": await _checksum(request, path),
        "Content-Type": "application/octet-stream",
        "Content-Disposition": f'attachment; filename="{path.name}"',
    }
    return web.FileResponse(path, headers=headers)
