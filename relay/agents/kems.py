"""Which KEM to seal a connector's jobs with: X25519 by default, the post-quantum hybrid
(ML-KEM-768 + X25519) when the agent offered it in its hello.

The hub notes each hello here (``note_hello``); ``seal_for`` is what job submission calls.
The hybrid key is held in memory for the connectors whose agent said hello to this node
since it started: a job submitted while no such hello is known is sealed with X25519, which
every agent opens, so nothing breaks when the hybrid is unknown (a relay restart, another
node). Agents that open both keep accepting both.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from shared.crypto import KEM_HYBRID, load_hybrid_public_key, load_public_key, seal_query
from shared.errors import MCError

log = logging.getLogger("relay.kems")

# Parsed keys by their base64 (key objects are immutable): parsing an ML-KEM-768 key for
# every job was a visible share of a small job's cost on the relay.
_hybrid_key = functools.lru_cache(maxsize=16_384)(load_hybrid_public_key)
_x25519_key = functools.lru_cache(maxsize=16_384)(load_public_key)


class KemDirectory:
    """connector id -> (X25519 public key it belongs with, hybrid public key, base64)."""

    def __init__(self) -> None:
        self._hybrid: dict[str, tuple[str, str]] = {}

    def note_hello(self, connector_id: str, hello: Any) -> None:
        """Remember (or forget) the agent's hybrid key from its ``agent.hello.v1``."""
        kems = hello.get("kems") or []
        pq = hello.get("pqPublicKey")
        if KEM_HYBRID in kems and isinstance(pq, str):
            try:
                load_hybrid_public_key(pq)
            except MCError:
                log.warning("ignored an invalid pqPublicKey", extra={"connector_id": connector_id})
            else:
                self._hybrid[connector_id] = (hello["publicKey"], pq)
                return
        self._hybrid.pop(connector_id, None)

    def hybrid_key(self, connector_id: str, public_key: str) -> str | None:
        """The hybrid key, if known and advertised with the connector's current publicKey."""
        entry = self._hybrid.get(connector_id)
        return entry[1] if entry is not None and entry[0] == public_key else None

    def seal_for(self, connector: dict[str, Any], query: Any, info: bytes) -> bytes:
        """Seal ``query`` to the connector: hybrid when its agent offered it, else X25519."""
        pq = self.hybrid_key(connector["id"], connector["public_key"])
        key = _hybrid_key(pq) if pq else _x25519_key(connector["public_key"])
        return seal_query(query, key, info)
