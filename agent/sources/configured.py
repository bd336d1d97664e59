"""The agent's configured sources, opened on first use and closed together.

The runner asks for a source by name; this is where an unknown name becomes
``SOURCE_NOT_FOUND``, where the password is fetched (environment or encrypted config) at
the last moment, and where the adapter module is imported only when first needed.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from shared.errors import JobError

from ..config import SecretBox, SourceConfig, source_password
from . import Source, create_source


class SourceSet:
    def __init__(
        self,
        configs: Mapping[str, SourceConfig],
        box: SecretBox,
        *,
        pool_size: int = 4,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._configs = dict(configs)
        self._box = box
        self._pool_size = pool_size
        self._env = env
        self._open: dict[str, Source] = {}
        self._mutex = threading.Lock()

    def public(self) -> list[dict[str, str]]:
        """Names and types only: what the relay may learn."""
        return [c.public() for c in self._configs.values()]

    def get(self, name: str) -> Source:
        with self._mutex:
            src = self._open.get(name)
            if src is not None:
                return src
            cfg = self._configs.get(name)
            if cfg is None:
                raise JobError(
                    "SOURCE_NOT_FOUND",
                    f"this agent has no source named {name[:100]!r}",
                    retryable=False,
                )
            password = source_password(cfg, self._box, self._env)
            src = create_source(
                cfg.name,
                cfg.type,
                cfg.url,
                password=password,
                options=cfg.options,
                pool_size=self._pool_size,
            )
            self._open[name] = src
            return src

    def update(self, configs: Mapping[str, SourceConfig]) -> bool:
        """The config's sources changed while the agent runs: use ``configs`` from now on.
        A removed or changed source's open pool is closed (a job already running on it
        keeps the connection it holds until it ends); the others stay open. True when the
        list differs."""
        configs = dict(configs)
        with self._mutex:
            if configs == self._configs:
                return False
            stale = [name for name, cfg in self._configs.items() if configs.get(name) != cfg]
            closing = [self._open.pop(name) for name in stale if name in self._open]
            self._configs = configs
        for src in closing:
            src.close()
        return True

    def close(self) -> None:
        with self._mutex:
            opened, self._open = list(self._open.values()), {}
        for src in opened:
            src.close()
