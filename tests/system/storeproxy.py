"""A relay's store database behind a proxy that can take it away (tests/system/test_store_outage.py).

``StoreProxy`` is a ``FaultProxy`` (a plain forwarder) with an outage switch: ``down()``
cuts every connection through it (a reset, as a network blip, a PgBouncer restart or a
failover does) and then either refuses new ones (``mode="refuse"``: the server is gone)
or accepts them and never answers (``mode="hang"``: packets are dropped somewhere);
``up()`` forwards again. ``via(url)`` rewrites a store URL to go through the proxy, so
only the relay's store is attacked: the agent's source keeps its direct URL.
"""

from __future__ import annotations

import asyncio

from sqlalchemy.engine import make_url

from tests.system import faultproxy
from tests.system.faultproxy import FaultProxy


class StoreProxy(FaultProxy):
    def __init__(self, target_port: int = 5432, *, target_host: str = "127.0.0.1") -> None:
        super().__init__(target_port, period=None, target_host=target_host)
        self.mode: str | None = None  # None: forwarding; "refuse" or "hang": down

    def via(self, url: str) -> str:
        """``url`` with its host and port replaced by the proxy's."""
        return make_url(url).set(host="127.0.0.1", port=self.port).render_as_string(hide_password=False)

    def down(self, mode: str = "refuse") -> None:
        assert mode in ("refuse", "hang"), mode
        self.mode = mode
        self._loop.call_soon_threadsafe(self._cut_all)

    def up(self) -> None:
        self.mode = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "refuse":
            faultproxy._abort(writer)
            return
        if self.mode == "hang":
            held = (writer, writer)
            self._pairs.add(held)  # cut (reset) by up()'s next down() or at stop
            try:
                while self.mode == "hang" and await reader.read(65536):
                    pass
            except (OSError, RuntimeError):
                pass
            finally:
                self._pairs.discard(held)
                faultproxy._abort(writer)
            return
        await super()._accept(reader, writer)
