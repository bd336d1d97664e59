"""``mini-connector run``: wire config, logging, sources, runner and session together.

Runs in the foreground until SIGTERM/SIGINT: the first signal drains (running jobs
finish, no new ones start), a second one stops at once. While it runs it writes the
status file about once a second for ``mini-connector status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
import signal
import socket
import time
from typing import Any

from shared import __version__
from shared.crypto import load_or_create_private_key, public_key_b64

from .config import AgentConfig, SecretBox, agent_endpoint, api_key
from .logs import ShipBuffer
from .paths import StatePaths
from .runner import Runner
from .session import Session, SessionConfig
from .sourceset import SourceSet
from .status import write_status

log = logging.getLogger("agent")

STATUS_EVERY = 1.0


def os_name() -> str:
    return "windows" if platform.system().lower().startswith("win") else "linux"


async def run_agent(
    cfg: AgentConfig,
    paths: StatePaths,
    *,
    ship: ShipBuffer | None = None,
    backoff_min: float = 1.0,
) -> str:
    """Run until stopped; returns why the session ended ("stopped", "SESSION_REPLACED")."""
    box = SecretBox(paths.secret_key)
    key = api_key(cfg, box)
    private_key = load_or_create_private_key(paths.private_key)
    sources = SourceSet(cfg.sources, box, pool_size=cfg.capacity)
    runner = Runner(get_source=sources.get, private_key=private_key, capacity=cfg.capacity)
    session = Session(
        SessionConfig(
            url=agent_endpoint(cfg.relay_url),
            api_key=key,
            public_key=public_key_b64(private_key),
            hostname=socket.gethostname(),
            os_name=os_name(),
            capacity=cfg.capacity,
            sources=sources.public(),
            backoff_min=backoff_min,
        ),
        runner=runner,
        ship=ship,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # Windows: no handlers
            loop.add_signal_handler(sig, session.request_stop)
    log.info(
        "mini-connector %s starting: relay %s, %d sources, capacity %d",
        __version__, cfg.relay_url, len(cfg.sources), cfg.capacity,
    )  # fmt: skip
    started = time.time()
    status_task = asyncio.create_task(_write_status_forever(session, cfg, paths, started))
    try:
        reason = await session.run()
    finally:
        status_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await status_task
        _write(session, cfg, paths, started)
        await asyncio.to_thread(sources.close)
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
    return reason


def _write(session: Session, cfg: AgentConfig, paths: StatePaths, started: float) -> None:
    data: dict[str, Any] = {
        **session.status(),
        "relayUrl": cfg.relay_url,
        "name": cfg.name,
        "version": __version__,
        "startedAt": started,
    }
    try:
        write_status(paths.status_file, data)
    except OSError as exc:
        log.debug("cannot write the status file: %s", exc)


async def _write_status_forever(
    session: Session, cfg: AgentConfig, paths: StatePaths, started: float
) -> None:
    while True:
        _write(session, cfg, paths, started)
        await asyncio.sleep(STATUS_EVERY)
