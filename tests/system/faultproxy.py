"""A TCP proxy on 127.0.0.1 that cuts every connection through it every ``period`` seconds.

Put between an agent and the relay (the agent's relay URL names the proxy's port), it
makes the network drop under a running job again and again: every ``period`` seconds each
open connection is closed abruptly on both sides (RST where the OS allows), so neither
end gets a clean WebSocket close. New connections are accepted at once. It runs its own
asyncio loop in a daemon thread, so synchronous tests and benches can use it.

    with FaultProxy(target_port=relay.port, period=1.5) as proxy:
        ... configure the agent with ws://127.0.0.1:{proxy.port} ...
        proxy.cuts  # how many connections it has cut so far

``port`` picks the port it listens on (default: any free one); with ``period=None`` it is
a plain forwarder, which a test can start late or stop to play a server that is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from typing import Any

BUFFER = 256 * 1024


class FaultProxy:
    def __init__(self, target_port: int, *, period: float | None = 1.5,
                 target_host: str = "127.0.0.1", port: int = 0) -> None:  # fmt: skip
        self.target = (target_host, target_port)
        self.period = period
        self.port = port
        self.cuts = 0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._stop: asyncio.Event | None = None

    # ------------------------------------------------------------ control (any thread)

    def start(self) -> FaultProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fault proxy did not start")
        return self

    def stop(self) -> None:
        if self._stop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def set_period(self, period: float | None) -> None:
        """Change (or with None, stop) the cutting; takes effect at the next tick."""
        self.period = period

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ the loop

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        cutter = asyncio.create_task(self._cutter())
        try:
            await self._stop.wait()
        finally:
            cutter.cancel()
            server.close()
            self._cut_all()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            with contextlib.suppress(Exception):
                await server.wait_closed()

    async def _cutter(self) -> None:
        while True:
            await asyncio.sleep(self.period or 0.2)
            if self.period:
                self._cut_all()

    def _cut_all(self) -> None:
        for pair in list(self._pairs):
            self._pairs.discard(pair)
            self.cuts += 1
            for writer in pair:
                _abort(writer)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _abort(writer)
            return
        pair = (writer, up_writer)
        self._pairs.add(pair)
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            self._pairs.discard(pair)
            _abort(writer)
            _abort(up_writer)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(BUFFER):
            writer.write(data)
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError, RuntimeError):
        pass
    finally:
        _abort(writer)


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close abruptly: SO_LINGER 0 makes the close a reset, like a dropped network path."""
    sock: Any = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport = writer.transport
    if not transport.is_closing():
        transport.abort()
