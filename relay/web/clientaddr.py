"""Who is asking: the client address that rate limits and handshake limits count by.

The TCP peer, unless that peer is one of the configured trusted proxies
(``MC_RELAY_TRUSTED_PROXIES``, a comma-separated list of addresses or CIDR networks; none
by default). Then ``X-Forwarded-For`` is read from the right: each proxy appends the
address it received the request from, so the right-most entry that is not itself a
trusted proxy is the client. Entries further left were written by the client and are
never believed. A header from a peer that is not a trusted proxy is ignored entirely.
"""

from __future__ import annotations

import ipaddress
from typing import Final

from aiohttp import web

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_HOPS: Final = 32  # X-Forwarded-For entries looked at, from the right

TRUSTED_PROXIES: web.AppKey[tuple[Network, ...]] = web.AppKey("trusted_proxies", tuple)
CLIENT_ADDRESS: web.RequestKey[str] = web.RequestKey("client_address", str)


def parse_networks(raw: str | tuple[str, ...] | list[str]) -> tuple[Network, ...]:
    """``10.0.0.0/8, 192.0.2.7, fd00::/8`` as networks; ValueError naming a bad entry."""
    items = raw.replace("\n", ",").split(",") if isinstance(raw, str) else list(raw)
    out: list[Network] = []
    for item in items:
        entry = item.strip()
        if not entry:
            continue
        try:
            out.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address or CIDR network") from None
    return tuple(out)


def _address(text: str) -> Address | None:
    value = text.strip()
    if value.startswith("[") and "]" in value:  # [v6]:port
        value = value[1 : value.index("]")]
    elif value.count(":") == 1:  # v4:port
        value = value.split(":", 1)[0]
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _trusted(addr: Address, networks: tuple[Network, ...]) -> bool:
    return any(addr.version == n.version and addr in n for n in networks)


def resolve(peer: str | None, forwarded: list[str], networks: tuple[Network, ...]) -> str:
    """The client address for a request from ``peer`` carrying ``forwarded`` headers."""
    current = _address(peer or "")
    if current is None:
        return peer or "unknown"
    if not networks or not _trusted(current, networks):
        return str(current)
    hops = [h for value in forwarded for h in value.split(",") if h.strip()]
    for hop in reversed(hops[-MAX_HOPS:]):
        addr = _address(hop)
        if addr is None:
            break  # garbage a client wrote: stop at the last proxy we trust
        current = addr
        if not _trusted(addr, networks):
            break
    return str(current)


def client_address(request: web.Request) -> str:
    """The request's client address (computed once per request)."""
    known = request.get(CLIENT_ADDRESS)
    if known is not None:
        return known
    networks = request.app.get(TRUSTED_PROXIES, ())
    forwarded = request.headers.getall("X-Forwarded-For", []) if networks else []
    address = resolve(request.remote, forwarded, networks)
    request[CLIENT_ADDRESS] = address
    return address


def public_scheme(request: web.Request) -> str:
    """``https`` or ``http`` as the client sees this relay: the connection's own, unless a
    trusted proxy (MC_RELAY_TRUSTED_PROXIES) terminated TLS and says so in
    ``X-Forwarded-Proto``."""
    networks = request.app.get(TRUSTED_PROXIES, ())
    peer = _address(request.remote or "")
    proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    if networks and peer is not None and _trusted(peer, networks) and proto in ("http", "https"):
        return proto
    return "https" if request.secure else "http"
