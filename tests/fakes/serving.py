"""Run a ``http.server`` handler on 127.0.0.1, a random port, in a thread; HTTP or HTTPS.

Used by the SAP B1 and Tally fakes. ``stop()`` shuts the server down and closes its
socket; handler threads are daemons so a stuck connection never blocks the test run.
"""

from __future__ import annotations

import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, handler: type[BaseHTTPRequestHandler], state: Any) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.state = state

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up mid-answer (cancel tests) are expected; keep the output quiet.
        pass


class FakeHttpServer:
    """A started server; ``url`` is its base URL."""

    def __init__(
        self,
        handler: type[BaseHTTPRequestHandler],
        state: Any,
        *,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.server = _Server(handler, state)
        self.scheme = "http"
        if tls_context is not None:
            self.server.socket = tls_context.wrap_socket(
                self.server.socket, server_side=True, do_handshake_on_connect=False
            )
            self.scheme = "https"
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


def send_chunk(handler: BaseHTTPRequestHandler, data: bytes) -> None:
    """One piece of a ``Transfer-Encoding: chunked`` body (an empty piece ends it)."""
    handler.wfile.write(f"{len(data):x}\r\n".encode("ascii") + data + b"\r\n")
