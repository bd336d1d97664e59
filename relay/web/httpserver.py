"""The relay's HTTP server: aiohttp's, with its own answers to requests it cannot parse.

aiohttp refuses a request line or header over 8190 bytes, a malformed request line, or a
bad ``Content-Length`` in its HTTP parser, before any middleware runs, and answers with
``RequestHandler.handle_error``: a plain-text 400 that repeats part of the request (and
logs it, with whatever header was too long: perhaps a token). ``EnvelopeAppRunner`` (what
``mini-relay serve`` runs) swaps in a handler whose ``handle_error`` answers with the
contract's JSON envelope and logs only the client address and the kind of error:

- a line over the limit: 431 ``REQUEST_TOO_LARGE``;
- anything else the parser refuses: 400 ``BAD_REQUEST``;
- a handler that failed past the middleware (it never should): 500 ``INTERNAL_ERROR``,
  or 504 ``TIMEOUT`` for a handler timeout.

The connection is closed afterwards, as aiohttp does.
"""

from __future__ import annotations

import logging
from typing import Final

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from ..ids_and_times import new_request_id
from .envelope import envelope_error

log = logging.getLogger("relay.http")

MAX_LINE: Final = 8190  # bytes of a request line or a header (aiohttp's default), kept explicit


def _answer(status: int, exc: BaseException | None) -> tuple[int, str, str]:
    if isinstance(exc, LineTooLong):
        return 431, "REQUEST_TOO_LARGE", f"the request line or a header is longer than {MAX_LINE} bytes"
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


class EnvelopeServer(Server):
    def __call__(self) -> RequestHandler:
        return EnvelopeRequestHandler(self, loop=self._loop, **self._kwargs)


class EnvelopeAppRunner(web.AppRunner):
    """``web.AppRunner`` whose connections use ``EnvelopeRequestHandler``."""

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        server.__class__ = EnvelopeServer  # same object, same state: only __call__ differs
        return server
