"""What keeps one platform client from holding the relay through a response it does not read.

aiohttp waits as long as it takes for a client to take what the relay writes (it has no
write timeout): a results reader or an ``/events`` socket that stops reading would hold
its handler, its buffers (a result chunk in hand, ~1 MB) and its place forever,
and a peer that vanished without a FIN would hold them until TCP gives up (~15 min).

- ``watch_sends``: while a response is open, cut the connection (TCP reset) when bytes
  wait in its send buffer and the client has taken none of them for ``idle`` seconds
  (``MC_RELAY_SEND_TIMEOUT``). Like nginx's ``send_timeout``, it times the gap between
  two reads by the client, not the whole response: a slow reader that keeps reading is
  never cut. One INFO line says so; the handler's next write fails as a hang-up does.
- ``StreamSlots``: open result streams per tenant on this node
  (``MC_RELAY_RESULT_STREAMS``); the next request is 429 until one ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import AsyncIterator

log = logging.getLogger("relay.slow_clients")


def _acked(sock: object) -> int | None:
    """Bytes the peer has acknowledged (Linux ``tcp_info.tcpi_bytes_acked``), else None."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 136)  # type: ignore[attr-defined]
    except (AttributeError, OSError, TypeError):
        return None
    return int(struct.unpack_from("Q", info, 120)[0]) if len(info) >= 128 else None


async def _watch(transport: asyncio.BaseTransport, idle: float, what: str) -> None:
    """Progress is the client acknowledging bytes (TCP_INFO, where there is one: the
    kernel's send buffer growing does not count), else the transport's buffer shrinking."""
    loop = asyncio.get_running_loop()
    step = max(0.05, min(1.0, idle / 4))
    get_size = getattr(transport, "get_write_buffer_size", None)
    if get_size is None:
        return
    sock = transport.get_extra_info("socket")
    last, acked, since = get_size(), _acked(sock), loop.time()
    while True:
        await asyncio.sleep(step)
        size, now_acked, at = get_size(), _acked(sock), loop.time()
        took = now_acked > acked if now_acked is not None and acked is not None else size < last
        if size == 0 or took:  # nothing waits on the client, or it took some: progress
            since = at
        last, acked = size, now_acked
        if at - since >= idle:
            log.info("%s took no byte for %.0f s with %d bytes waiting: connection cut "
                     "(MC_RELAY_SEND_TIMEOUT)", what, idle, size)  # fmt: skip
            reset(transport)
            return


def reset(transport: asyncio.BaseTransport) -> None:
    """Abort with a TCP reset: a plain close would leave what the kernel holds for the
    client (megabytes, on a socket whose send buffer grew) queued behind a FIN until the
    client reads it or TCP gives up."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    if isinstance(transport, asyncio.WriteTransport):
        transport.abort()
    else:
        transport.close()


@contextlib.asynccontextmanager
async def watch_sends(transport: asyncio.BaseTransport | None, idle: float, what: str) -> AsyncIterator[None]:
    """Cut ``transport`` when a client stops taking bytes for ``idle`` seconds (above)."""
    if transport is None or idle <= 0:
        yield
        return
    task = asyncio.create_task(_watch(transport, idle, what), name=f"send-watch {what}")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class StreamSlots:
    """Open streams per tenant on this node (a count; the caller releases what it took)."""

    def __init__(self) -> None:
        self._open: dict[str, int] = {}

    def take(self, tenant_id: str, limit: int) -> bool:
        n = self._open.get(tenant_id, 0)
        if n >= limit:
            return False
        self._open[tenant_id] = n + 1
        return True

    def release(self, tenant_id: str) -> None:
        n = self._open.get(tenant_id, 0) - 1
        if n > 0:
            self._open[tenant_id] = n
        else:
            self._open.pop(tenant_id, None)

    def open(self, tenant_id: str) -> int:
        return self._open.get(tenant_id, 0)
