"""``mini-relay``: ``serve`` runs the relay, ``token`` prints a signed platform token.

``serve`` prints exactly one line once it is listening (with the real port, even for
``--port 0``) and stops cleanly on SIGTERM/SIGINT with exit code 0. Configuration errors
are one sentence on stderr and exit code 2. Logs go to stderr as JSON lines and never
carry keys, tokens or passwords (the relay never logs them in the first place, and the
formatter redacts anything shaped like one: ``shared.redact``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import Sequence

import orjson
from aiohttp import web

from shared.closedpipe import quiet_on_closed_pipe
from shared.errors import MCError
from shared.fdlimit import raise_nofile
from shared.redact import redact

from .config import DEV_JWT_SECRET, ConfigError, RelayConfig, tls_context
from .web.auth import ROLES, make_token

VERSION = "0.1.0"


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
               "logger": record.name, "message": redact(record.getMessage())}  # fmt: skip
        for key in ("connector_id", "job_id"):
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(out).decode()


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(os.environ.get("MC_RELAY_LOG_LEVEL", "INFO").upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


MAX_TOKEN_TTL = 10 * 365 * 86_400


def _ascii_int(raw: str) -> int:
    """An argparse type: an integer in ASCII digits (``int()`` alone also takes other
    scripts' digits, ``1_000`` and spaces)."""
    if not re.fullmatch(r"-?[0-9]{1,19}", raw):
        raise argparse.ArgumentTypeError(f"{raw!r} is not an integer written with the digits 0-9")
    return int(raw)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mini-relay", description="The Mini Connector relay.")
    p.add_argument("--version", action="version", version=f"mini-relay {VERSION}")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the relay")
    s.add_argument("--host", default=None)
    s.add_argument("--port", type=_ascii_int, default=None)
    s.add_argument("--database-url", default=None, help="also MC_RELAY_DATABASE_URL")
    s.add_argument("--tls-cert", default=None, help="PEM certificate chain: serve https/wss itself "
                   "(also MC_RELAY_TLS_CERT; default: plain HTTP behind a TLS-terminating proxy)")
    s.add_argument("--tls-key", default=None, help="PEM private key for --tls-cert (also MC_RELAY_TLS_KEY)")
    s.add_argument("--downloads-dir", default=None, help="folder of agent builds served at /downloads "
                   "(also MC_RELAY_DOWNLOADS_DIR)")
    s.add_argument("--dev", action="store_true", default=None,
                   help="local trial: a fixed documented JWT secret, a per-process data key")  # fmt: skip
    t = sub.add_parser("token", help="print a signed platform token")
    t.add_argument("--tenant", required=True)
    t.add_argument("--role", required=True, choices=ROLES)
    t.add_argument("--ttl", type=_ascii_int, default=3600, help="seconds (default 3600, at most ten years)")
    t.add_argument("--dev", action="store_true", help="use the dev secret if none is set")
    return p


GC_THRESHOLDS = (20_000, 20, 20)  # gen0 allocations, then gen1 and gen2 in collections


def quiet_gc() -> None:
    """Keep the cyclic garbage collector's pauses out of dispatch latency.

    With 10,000 agents a full collection walks about a million objects and stops the
    event loop for up to half a second (bench/swarm.py: dispatch p99 ~500 ms, 25 ms with
    the collector off). What is loaded at start (modules, tables, the app) never becomes
    garbage: ``gc.freeze()`` takes it out of every later collection. Young collections
    run every 20,000 allocations instead of 700, so fewer objects are promoted and full
    collections come less often; they still come, so cyclic garbage is still freed.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def _serve(config: RelayConfig) -> None:
    from .app import create_app
    from .context import RELAY
    from .shutdown import drain
    from .web.httpserver import EnvelopeAppRunner

    app = create_app(config)
    # Requests aiohttp cannot parse (a header over 8 KB, a bad request line) are answered
    # in the JSON envelope, not aiohttp's plain text (relay/web/httpserver.py).
    runner = EnvelopeAppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    sock = socket.socket(socket.AF_INET6 if ":" in config.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((config.host, config.port))
    ssl_context = tls_context(config.tls_cert, config.tls_key)
    site = web.SockSite(runner, sock, ssl_context=ssl_context)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await site.start()
        quiet_gc()
        port = sock.getsockname()[1]
        host = f"[{config.host}]" if ":" in config.host else config.host
        scheme = "https" if ssl_context is not None else "http"
        print(f"mini-relay {VERSION} listening on {scheme}://{host}:{port}", flush=True)
        await stop.wait()
        await drain(app[RELAY])  # agents sent away with jittered delays; writes finish
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    # ``mini-relay token | ...`` whose reader went away: 141, quietly
    return quiet_on_closed_pipe(lambda: _main(argv))


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "token":
        secret = os.environ.get("MC_RELAY_JWT_SECRET") or (DEV_JWT_SECRET if args.dev or os.environ.get("MC_RELAY_DEV") else None)
        if not secret:
            print("mini-relay: MC_RELAY_JWT_SECRET is not set (or pass --dev for the dev secret)", file=sys.stderr)
            return 2
        if not 0 < args.ttl <= MAX_TOKEN_TTL:
            print(f"mini-relay: --ttl must be 1 to {MAX_TOKEN_TTL} seconds (ten years)", file=sys.stderr)
            return 2
        if not 0 < len(args.tenant) <= 200 or not args.tenant.isprintable():
            # The relay refuses such a token's tenantId, and X-Tenant-ID could not carry it.
            print("mini-relay: --tenant must be 1 to 200 printable characters", file=sys.stderr)
            return 2
        print(make_token(secret, args.tenant, args.role, args.ttl))
        return 0
    _setup_logging()
    raise_nofile()  # one descriptor per agent socket
    try:
        config = RelayConfig.from_env(
            host=args.host, port=args.port, database_url=args.database_url, dev=args.dev,
            tls_cert=args.tls_cert, tls_key=args.tls_key, downloads_dir=args.downloads_dir,
        )
        tls_context(config.tls_cert, config.tls_key)  # a bad cert or key fails here, clearly
        config.check()
        config.cipher()
    except ConfigError as exc:
        print(f"mini-relay: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(config))
    except MCError as exc:  # e.g. started on a full disk with no reserve left (store/diskfull)
        print(f"mini-relay: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"mini-relay: cannot listen on {config.host}:{config.port}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
