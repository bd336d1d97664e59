"""How the agent reaches the relay: TLS trust (system CAs or ``--ca-file``), an optional
SPKI pin (``--pin-sha256``), an HTTP proxy (``--proxy``, else ``HTTPS_PROXY``/``NO_PROXY``),
and the rule that plain ``ws://`` goes only to localhost unless ``--allow-insecure``.

Settings live in the config's ``[transport]`` table (``AgentConfig.transport``); a proxy's
password is kept encrypted like a source's. ``connect_options`` turns them into keyword
arguments for ``websockets.asyncio.client.connect``. The pin is checked after the TLS
handshake and BEFORE the HTTP upgrade, so a relay that fails it never sees the API key.
"""

from __future__ import annotations

import base64
import hashlib
import ssl
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from websockets.asyncio.client import ClientConnection

from ..config import (
    AgentConfig,
    InvalidInput,
    SecretBox,
    split_url_password,
    url_with_password,
)

PROXY_PURPOSE = "proxy"


class PinMismatch(OSError):
    """The relay's certificate key is not the pinned one (a refused, not a failed, link)."""


def spki_sha256(der_certificate: bytes) -> str:
    """base64(sha256(SubjectPublicKeyInfo)) of a DER certificate: the ``--pin-sha256`` form."""
    cert = x509.load_der_x509_certificate(der_certificate)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


def check_pin(value: str) -> str:
    value = value.strip().removeprefix("sha256/")
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise InvalidInput(
            "--pin-sha256 must be the base64 SHA-256 of the relay certificate's "
            "SubjectPublicKeyInfo (44 characters)"
        )
    return value


class _PinnedConnection(ClientConnection):
    pins: frozenset[str] = frozenset()

    async def handshake(self, *args: Any, **kwargs: Any) -> None:
        ssl_object = self.transport.get_extra_info("ssl_object")
        if ssl_object is None:
            raise PinMismatch("a certificate pin is set but the relay URL is not wss://")
        der = ssl_object.getpeercert(binary_form=True)
        actual = spki_sha256(der) if der else "none"
        if actual not in self.pins:
            raise PinMismatch(
                f"the relay's certificate key (pin-sha256 {actual}) does not match the "
                "configured --pin-sha256; refusing to send the API key"
            )
        await super().handshake(*args, **kwargs)


@dataclass
class Transport:
    ca_file: str | None = None
    pins: tuple[str, ...] = ()
    proxy: str | None = None  # without its password
    proxy_password_enc: str | None = None

    @classmethod
    def from_config(cls, cfg: AgentConfig) -> Transport:
        t = getattr(cfg, "transport", None) or {}
        return cls(
            ca_file=t.get("ca_file") or None,
            pins=tuple(t.get("pin_sha256") or ()),
            proxy=t.get("proxy") or None,
            proxy_password_enc=t.get("proxy_password_enc") or None,
        )

    def to_config(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.ca_file:
            out["ca_file"] = self.ca_file
        if self.pins:
            out["pin_sha256"] = list(self.pins)
        if self.proxy:
            out["proxy"] = self.proxy
        if self.proxy_password_enc:
            out["proxy_password_enc"] = self.proxy_password_enc
        return out

    def set_proxy(self, url: str, box: SecretBox) -> None:
        """Keep ``url`` (http:// or https://, maybe with user:password) with the password
        encrypted; an empty string removes the proxy."""
        if not url:
            self.proxy = self.proxy_password_enc = None
            return
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidInput("--proxy must look like http://[user:password@]proxy.example.com:3128")
        bare, password = split_url_password(url)
        self.proxy = bare
        self.proxy_password_enc = box.encrypt(password, PROXY_PURPOSE) if password else None

    def proxy_url(self, box: SecretBox) -> str | None:
        if not self.proxy:
            return None
        password = box.decrypt(self.proxy_password_enc, PROXY_PURPOSE) if self.proxy_password_enc else None
        return url_with_password(self.proxy, password)


def connect_options(url: str, transport: Transport, box: SecretBox) -> dict[str, Any]:
    """Keyword arguments for ``websockets.asyncio.client.connect(url, ...)``."""
    opts: dict[str, Any] = {}
    secure = url.lower().startswith("wss:")
    if secure and transport.ca_file:
        opts["ssl"] = ssl.create_default_context(cafile=transport.ca_file)
    explicit = transport.proxy_url(box)
    if explicit is not None:
        parts = urlsplit(url)
        port = parts.port or (443 if secure else 80)
        # NO_PROXY applies to an explicit --proxy too, as it does to HTTPS_PROXY.
        bypass = urllib.request.proxy_bypass(f"{parts.hostname}:{port}")
        opts["proxy"] = None if bypass else explicit
    # else: websockets' default (proxy=True) reads HTTPS_PROXY / NO_PROXY itself.
    if transport.pins:
        opts["create_connection"] = type(
            "PinnedConnection", (_PinnedConnection,), {"pins": frozenset(transport.pins)}
        )
    return opts
