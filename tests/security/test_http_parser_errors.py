"""Requests aiohttp's HTTP parser refuses before any middleware runs (a request line or
header over 8 KB, a malformed request line, a bad Content-Length) are answered in the
JSON envelope, without echoing the request: on the runner ``mini-relay serve`` uses, in
process over a raw socket, and once against a real ``mini-relay serve`` process."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from tests.relay.conftest import TIMEOUT

SECRET_ISH = "Bearer " + "s3cr3t" * 2000  # an oversized header that must not be echoed or logged


async def _raw(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` on a fresh connection; the status, headers and body of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), TIMEOUT)  # the relay closes after an error
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":  # not expected, but readable
        body = b"".join(body.split(b"\r\n")[1::2])
    return status, headers, body


BAD_REQUESTS: list[tuple[str, bytes, int, str]] = [
    ("long request line", b"GET /api/v1/health?x=" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
     431, "REQUEST_TOO_LARGE"),
    ("long header value", b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nAuthorization: " + SECRET_ISH.encode()
     + b"\r\n\r\n", 431, "REQUEST_TOO_LARGE"),
    ("long header name", b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n" + b"X" * 9000 + b": 1\r\n\r\n",
     431, "REQUEST_TOO_LARGE"),
    ("garbage request line", b"\x16\x03\x01 hello there\r\n\r\n", 400, "BAD_REQUEST"),
    ("bad version", b"GET / HTTP/9.x\r\nHost: x\r\n\r\n", 400, "BAD_REQUEST"),
    ("space in header name", b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n", 400, "BAD_REQUEST"),
    ("content-length not a number", b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
     400, "BAD_REQUEST"),
    ("negative content-length", b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
     400, "BAD_REQUEST"),
    ("superscript content-length", "POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: \u00b2\r\n\r\n"
     .encode(), 400, "BAD_REQUEST"),
    ("two different content-lengths", b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
     b"Content-Length: 2\r\n\r\nab", 400, "BAD_REQUEST"),
    ("content-length and chunked", b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "BAD_REQUEST"),
]


@pytest.mark.parametrize(("what", "data", "status", "code"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
async def test_parser_errors_get_the_json_envelope(
    relay_port: int, caplog: pytest.LogCaptureFixture, what: str, data: bytes, status: int, code: str
) -> None:
    caplog.set_level(logging.DEBUG)
    got, headers, body = await _raw(relay_port, data)
    assert got == status, (what, body[:200])
    assert headers["content-type"].startswith("application/json")
    out = json.loads(body)
    assert out["success"] is False and out["error"]["code"] == code
    assert out["error"]["requestId"] == headers["x-request-id"]
    assert b"s3cr3t" not in body and b"aaaa" not in body and b"XXXX" not in body and b"hello" not in body
    assert "s3cr3t" not in caplog.text and "hello there" not in caplog.text


async def test_headers_under_the_limit_still_work(relay_port: int) -> None:
    status, _, body = await _raw(relay_port, b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Pad: "
                                 + b"p" * 8000 + b"\r\nConnection: close\r\n\r\n")  # fmt: skip
    assert status == 200 and json.loads(body)["status"] == "healthy"


@pytest.mark.system
def test_a_real_relay_process_answers_in_the_envelope(tmp_path: Path) -> None:
    """``mini-relay serve`` itself uses the envelope runner."""
    from tests.harness import Stack

    stack = Stack(tmp_path)
    try:
        relay = stack.start_relay()

        async def probe() -> Any:
            return await _raw(relay.port, BAD_REQUESTS[1][1])

        status, _, body = asyncio.run(probe())
        assert status == 431 and json.loads(body)["error"]["code"] == "REQUEST_TOO_LARGE"
        assert b"s3cr3t" not in body
    finally:
        stack.close()
