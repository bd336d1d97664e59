"""``mini-connector run``: wire config, logging, sources, runner and session together.

Runs in the foreground until SIGTERM/SIGINT: the first signal drains (running jobs
finish within the grace period, no new ones start, the rest end as AGENT_SHUTDOWN), a
second one stops at once. The spool (``spool.db`` beside the config) is loaded first, so
finished jobs the relay has not acknowledged are held and resent. While it runs it writes the
status file about once a second for ``mini-connector status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from pathlib import Path
from typing import Any

from shared import __version__

from .config import (
    AgentConfig,
    ConfigError,
    SecretBox,
    agent_endpoint,
    api_key,
    load_config,
    normalise_relay_url,
)
from .diskfull import SaidOnce, is_disk_full
from .jobs.keyring import load_keyring
from .jobs.producer import compression_pays
from .jobs.runner import Runner
from .jobs.spool import AsyncSpool, Spool
from .link.relays import Endpoint, RelayChoice
from .link.session import Session, SessionConfig
from .link.transport import Transport, connect_options
from .logs import ShipBuffer
from .osfacts import os_name
from .paths import StatePaths
from .sources.configured import SourceSet
from .status import write_status

log = logging.getLogger("agent")

STATUS_EVERY = 1.0
_STATUS_FULL = SaidOnce(log, "status.json", "`mini-connector status` may show an older state")


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
    # Plain ws:// off localhost is refused here too; several relay nodes: agent/link/relays.py.
    transport = Transport.from_config(cfg)
    endpoints = []
    for shown in cfg.all_relay_urls():
        dial = agent_endpoint(normalise_relay_url(shown, allow_insecure=cfg.allow_insecure))
        endpoints.append(Endpoint(shown, dial, connect_options(dial, transport, box)))
    url = endpoints[0].url
    keyring = load_keyring(paths)  # current, hybrid and (after rotate-keys) previous keys
    private_key = keyring.opening_keys()
    sources = SourceSet(cfg.sources, box, pool_size=cfg.capacity)
    spool = AsyncSpool(await asyncio.to_thread(Spool, paths.spool))
    runner = Runner(
        get_source=sources.get, private_key=private_key, capacity=cfg.capacity, spool=spool,
        compress=compression_pays([e.url for e in endpoints]),  # only where the link is slower
    )
    runner.restore(await spool.call(Spool.load), await spool.call(Spool.finished_jobs))
    session = Session(
        SessionConfig(
            url=url,
            api_key=key,
            public_key=keyring.public_key,
            hostname=socket.gethostname(),
            os_name=os_name(),
            capacity=cfg.capacity,
            sources=sources.public(),
            backoff_min=backoff_min,
            hello_extra=keyring.hello_fields(),
            connect_options=endpoints[0].options,
            relays=RelayChoice(endpoints),
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
    watch_task = asyncio.create_task(_watch_sources(paths, sources, session))
    try:
        reason = await session.run()
    finally:
        for task in (status_task, watch_task):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        _write(session, cfg, paths, started)
        await spool.close()  # every write submitted so far is on disk
        await asyncio.to_thread(sources.close)
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
    return reason


def _write(session: Session, cfg: AgentConfig, paths: StatePaths, started: float) -> None:
    data: dict[str, Any] = {
        **session.status(),  # relayUrl: the relay in use now
        "relayUrls": cfg.all_relay_urls(),
        "name": cfg.name,
        "version": __version__,
        "startedAt": started,
    }
    try:
        write_status(paths.status_file, data)
    except OSError as exc:
        if is_disk_full(exc):
            _STATUS_FULL.failed(exc)
        else:
            log.debug("cannot write the status file: %s", exc)
    else:
        _STATUS_FULL.worked()


SOURCES_EVERY = 1.0  # seconds between looks at the config file for changed sources


async def _watch_sources(paths: StatePaths, sources: SourceSet, session: Session) -> None:
    """Apply 'source add/remove' to the running agent: when the config file changes, its
    sources are reloaded (new ones usable at once, removed or changed ones closed) and the
    relay told. A config that cannot be read (half-written, a typo by hand) is skipped
    with a warning; the sources in use stay as they were."""
    seen = _mtime(paths.config)
    while True:
        await asyncio.sleep(SOURCES_EVERY)
        now = _mtime(paths.config)
        if now == seen:
            continue
        seen = now
        try:
            fresh = await asyncio.to_thread(load_config, paths.config)
        except ConfigError as exc:
            log.warning("the config changed but cannot be read (%s); keeping the sources in use", exc)
            continue
        if await asyncio.to_thread(sources.update, fresh.sources):
            public = sources.public()
            log.info("sources changed: now %s", ", ".join(f"{s['name']} ({s['type']})" for s in public) or "none")
            await session.sources_changed(public)


def _mtime(path: Path) -> tuple[float, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime, st.st_size)


async def _write_status_forever(
    session: Session, cfg: AgentConfig, paths: StatePaths, started: float
) -> None:
    while True:
        _write(session, cfg, paths, started)
        await asyncio.sleep(STATUS_EVERY)
