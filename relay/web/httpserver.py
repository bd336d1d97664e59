"""The relay's HTTP server: aiohttp's, with its own answers to requests it cannot parse.

aiohttp refuses a request line or header over 8190 bytes, a malformed request line, or a
bad ``Content-Length`` in its HTTP parser, before any middleware runs, and answers with
``RequestHandler.handle_error``: a plain-text 400 that repeats part of the request (and
logs it, with whatever header was too long: perhaps a token). ``EnvelopeAppRunner`` (what
``mini-relay serve`` runs) swaps in a handler whose ``handle_error`` answers with the
contract's JSON envelope and logs only the client address and the kind of error:

- a line over the limit, more than 128 header lines, or a request head (request line and
  headers, as sent) over ``MAX_HEAD_BYTES`` in all: 431 ``REQUEST_TOO_LARGE``;
- a ``Content-Encoding`` it has no decoder for (``br``, ``zstd``): 415 ``UNSUPPORTED_MEDIA_TYPE``;
- anything else the parser refuses: 400 ``BAD_REQUEST``;
- a handler that failed past the middleware (it never should): 500 ``INTERNAL_ERROR``,
  or 504 ``TIMEOUT`` for a handler timeout.

The connection is closed afterwards, as aiohttp does; and at once after an answer that
left the request's body unread (``CLOSE_CONNECTION``: 413, 415), instead of reading the
rest of it for up to 10 s first.

aiohttp bounds each line and the number of lines, not their sum (128 headers of 8 KB:
1 MiB a request). ``_HeadLimit`` counts a head's bytes as they arrive and refuses it
before handing the parser more than ``MAX_HEAD_BYTES``; a head it could not count (one
that began in the same read as the previous request's body ended) is measured once
parsed. And an ``HTTPException`` raised before the middleware (the ``Expect`` handler of
an unknown path or method: 417 for an expectation other than ``100-continue``) is
answered in the envelope too, closing the connection (the body was not read).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, ContentEncodingError, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from ..ids_and_times import new_request_id
from .envelope import envelope_error
from .middleware import http_error
from .request_keys import CLOSE_CONNECTION

log = logging.getLogger("relay.http")

MAX_LINE: Final = 8190  # bytes of a request line or a header (aiohttp's default), kept explicit
MAX_HEADERS: Final = 128  # header lines in a request (aiohttp's default)
MAX_HEAD_BYTES: Final = 64 * 1024  # the request line and headers in all, each line with its CRLF
_END_OF_HEAD: Final = b"\r\n\r\n"


class HeadTooLarge(BadHttpMessage):
    """A request line and headers over ``MAX_HEAD_BYTES`` in all."""

    def __init__(self) -> None:
        super().__init__(f"request head over {MAX_HEAD_BYTES} bytes")


class _HeadLimit:
    """aiohttp's request parser, fed a request head only while it stays within
    ``MAX_HEAD_BYTES``: past that, ``HeadTooLarge`` (aiohttp's connection handler answers
    a parser error through ``handle_error``) and nothing more is parsed.

    A head is being received when no request has been parsed yet or the last one's body
    has ended; its bytes are counted read by read, up to its blank line. Bytes after a body
    ended within a read are not counted (``_handle_request`` measures that request)."""

    def __init__(self, parser: Any) -> None:
        self._parser = parser
        self._body: Any = None  # the payload of the last request parsed
        self._count = 0  # bytes of the head being received, so far
        self._last = b""  # its last 3 bytes: the blank line may span two reads
        self._refused = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._parser, name)

    def feed_data(self, data: bytes) -> Any:
        if self._refused:
            return [], False, b""  # the answer is on its way and the connection closes
        in_head = self._body is None or self._body.is_eof()
        if in_head and data and self._count + self._head_bytes(data) > MAX_HEAD_BYTES:
            self._refused = True
            raise HeadTooLarge()
        messages, upgraded, tail = self._parser.feed_data(data)
        if messages:
            self._body = messages[-1][1]
            self._count, self._last = 0, b""
        elif in_head:
            self._count += len(data)
            self._last = (self._last + data[-3:])[-3:]
        return messages, upgraded, tail

    def _head_bytes(self, data: bytes) -> int:
        """How much of ``data`` is head: up to the end of its blank line, or all of it."""
        joint = (self._last + data[:3]).find(_END_OF_HEAD)  # the blank line across two reads
        if joint >= 0:
            return joint + len(_END_OF_HEAD) - len(self._last)
        end = data.find(_END_OF_HEAD)
        return len(data) if end < 0 else end + len(_END_OF_HEAD)


def _head_size(request: BaseRequest) -> int:
    """The size of ``request``'s head as a client writes it (``Name: value`` lines)."""
    line = len(request.method) + len(request.raw_path) + 12  # two spaces, HTTP/1.1, CRLF
    return line + sum(len(name) + len(value) + 4 for name, value in request.raw_headers) + 2


def _answer(status: int, exc: BaseException | None) -> tuple[int, str, str]:
    if isinstance(exc, HeadTooLarge):
        return 431, "REQUEST_TOO_LARGE", f"the request line and headers total over {MAX_HEAD_BYTES} bytes"
    if isinstance(exc, LineTooLong):
        return 431, "REQUEST_TOO_LARGE", f"the request line or a header is longer than {MAX_LINE} bytes"
    if isinstance(exc, BadHttpMessage) and exc.message.startswith("Too many headers"):
        return 431, "REQUEST_TOO_LARGE", f"the request has more than {MAX_HEADERS} header lines"
    if isinstance(exc, ContentEncodingError):  # br or zstd, whose decoders are not installed
        return 415, "UNSUPPORTED_MEDIA_TYPE", "the relay cannot decode this Content-Encoding: send gzip, deflate or none"
    if status == 400:
        return 400, "BAD_REQUEST", "the request is not valid HTTP"
    if status == 504:
        return 504, "TIMEOUT", "the relay did not answer in time"
    return 500, "INTERNAL_ERROR", "the relay failed to handle this request"


class EnvelopeRequestHandler(RequestHandler):
    """aiohttp's connection handler, answering its own errors in the envelope."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._parser = _HeadLimit(self._parser)  # type: ignore[assignment]

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("a response was already sent; cannot send an error")
        status, code, text = _answer(status, exc)
        request_id = new_request_id()
        if status >= 500:
            log.error("request from %s failed (%s)", request.remote, request_id, exc_info=exc)
        else:
            # Never the parser's message: it quotes the offending line.
            log.info("refused a malformed request from %s: %s (%s)", request.remote,
                     type(exc).__name__ if exc else status, request_id)  # fmt: skip
        resp = envelope_error(status, code, text, None, request_id)
        resp.headers["X-Request-ID"] = request_id
        resp.force_close()
        return resp

    async def _handle_request(
        self,
        request: BaseRequest,
        start_time: float | None,
        request_handler: Callable[[BaseRequest], Awaitable[web.StreamResponse]],
    ) -> tuple[web.StreamResponse, bool]:
        if _head_size(request) > MAX_HEAD_BYTES:  # parsed uncounted (_HeadLimit): refused now
            request_handler = self._head_too_large
        resp, reset = await super()._handle_request(request, start_time, request_handler)
        if request.get(CLOSE_CONNECTION) and not reset:
            # The answer (413, 415, 417, 431) left the body unread: close now rather than
            # read and drop the rest for aiohttp's 10 s of lingering. It is already written.
            self.force_close()
        return resp, reset

    async def _head_too_large(self, request: BaseRequest) -> web.StreamResponse:
        request[CLOSE_CONNECTION] = True  # its body, if any, is not read
        return self.handle_error(request, 400, HeadTooLarge())


def _enveloping(
    handler: Callable[[BaseRequest], Awaitable[web.StreamResponse]],
) -> Callable[[BaseRequest], Awaitable[web.StreamResponse]]:
    """``handler`` (the application's), answering in the envelope an ``HTTPException``
    raised before the middleware: aiohttp would send it as it is, in plain text. The
    request's body is not read: the connection closes with the answer."""

    async def handle(request: BaseRequest) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            request_id = new_request_id()
            resp = http_error(request, exc, request_id)
            resp.headers["X-Request-ID"] = request_id
            resp.force_close()
            request[CLOSE_CONNECTION] = True  # at once: not after reading the body for 10 s
            return resp

    return handle


class EnvelopeServer(Server):
    def __call__(self) -> RequestHandler:
        return EnvelopeRequestHandler(self, loop=self._loop, **self._kwargs)


class EnvelopeAppRunner(web.AppRunner):
    """``web.AppRunner`` whose connections use ``EnvelopeRequestHandler``."""

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        server.__class__ = EnvelopeServer  # same object, same state: only __call__ differs
        server.request_handler = _enveloping(server.request_handler)
        return server
