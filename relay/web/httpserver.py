"""The relay's HTTP server: aiohttp's, with its own answers to requests it cannot parse.

aiohttp refuses a request line or header over 8190 bytes, a malformed request line, or a
bad ``Content-Length`` in its HTTP parser, before any middleware runs, and answers with
``RequestHandler.handle_error``: a plain-text 400 that repeats part of the request (and
logs it, with whatever header was too long: perhaps a token). ``EnvelopeAppRunner`` (what
``mini-relay serve`` runs) swaps in a handler whose ``handle_error`` answers with the
contract's JSON envelope and logs only the client address and the kind of error:

- a line over the limit, or more than 128 header lines: 431 ``REQUEST_TOO_LARGE``;
- a ``Content-Encoding`` it has no decoder for (``br``, ``zstd``): 415 ``UNSUPPORTED_MEDIA_TYPE``;
- anything else the parser refuses: 400 ``BAD_REQUEST``;
- a handler that failed past the middleware (it never should): 500 ``INTERNAL_ERROR``,
  or 504 ``TIMEOUT`` for a handler timeout.

The connection is closed afterwards, as aiohttp does; and at once after an answer that
left the request's body unread (``CLOSE_CONNECTION``: 413, 415), instead of reading the
rest of it for up to 10 s first.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, ContentEncodingError, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from ..ids_and_times import new_request_id
from .envelope import envelope_error
from .request_keys import CLOSE_CONNECTION

log = logging.getLogger("relay.http")

MAX_LINE: Final = 8190  # bytes of a request line or a header (aiohttp's default), kept explicit
MAX_HEADERS: Final = 128  # header lines in a request (aiohttp's default)


def _answer(status: int, exc: BaseException | None) -> tuple[int, str, str]:
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
        resp, reset = await super()._handle_request(request, start_time, request_handler)
        if request.get(CLOSE_CONNECTION) and not reset:
            # The answer (413, 415) left the body unread: close now rather than read and
            # drop the rest for aiohttp's 10 s of lingering. The answer is already written.
            self.force_close()
        return resp, reset


class EnvelopeServer(Server):
    def __call__(self) -> RequestHandler:
        return EnvelopeRequestHandler(self, loop=self._loop, **self._kwargs)


class EnvelopeAppRunner(web.AppRunner):
    """``web.AppRunner`` whose connections use ``EnvelopeRequestHandler``."""

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        server.__class__ = EnvelopeServer  # same object, same state: only __call__ differs
        return server
