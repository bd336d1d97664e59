"""Platform clients that read slowly or not at all, over raw sockets (tests/system/test_slow_readers.py
and the event-socket tests): a tiny receive buffer, so what the relay writes waits on its side."""

from __future__ import annotations

import base64
import os
import socket
import time
from typing import Any

import psutil


def open_raw(port: int, path: str, headers: dict[str, str], *, rcvbuf: int = 4096) -> socket.socket:
    """Send ``GET path`` on a socket with a ``rcvbuf``-byte receive buffer; read nothing."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: relay\r\n{lines}\r\n".encode())
    return sock


def open_results(api: Any, port: int, job_id: str, **kw: Any) -> socket.socket:
    return open_raw(port, f"/api/v1/jobs/{job_id}/results",
                    {"Authorization": f"Bearer {api.jobs_token}", "X-Tenant-ID": api.tenant}, **kw)  # fmt: skip


def open_events(port: int, token: str, **kw: Any) -> socket.socket:
    """A WebSocket upgrade of ``/api/v1/events`` (the 101 is left unread with the rest)."""
    key = base64.b64encode(os.urandom(16)).decode()
    return open_raw(port, f"/api/v1/events?token={token}",
                    {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": key,
                     "Sec-WebSocket-Version": "13"}, **kw)  # fmt: skip


def read_head(sock: socket.socket, timeout: float = 30) -> bytes:
    """Bytes up to the end of the response's headers (and whatever came with them)."""
    sock.settimeout(timeout)
    got = b""
    while b"\r\n\r\n" not in got:
        block = sock.recv(4096)
        if not block:
            break
        got += block
    return got


def drain_until_closed(sock: socket.socket, timeout: float) -> tuple[int, str]:
    """Read everything until the relay's end of the connection: (bytes read, how it ended:
    ``eof``, ``reset`` or ``open`` if it was still open at the deadline)."""
    deadline = time.monotonic() + timeout
    total = 0
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            block = sock.recv(1 << 16)
        except TimeoutError:
            break
        except ConnectionResetError:
            return total, "reset"
        if not block:
            return total, "eof"
        total += len(block)
    return total, "open"


def rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def timed(fn: Any, *args: Any, **kw: Any) -> tuple[Any, float]:
    t0 = time.monotonic()
    out = fn(*args, **kw)
    return out, time.monotonic() - t0
