"""Source adapters: one per kind of local system, behind one small interface (``base``).

``create_source`` imports an adapter only when a source of its kind is first used, so an
idle agent never loads SQLAlchemy or a database driver: ``ADAPTERS`` names the module and
class of each kind, and the module is imported by name then (the adapters import this
package's ``base``, never this module, so there is no loop).
"""

from __future__ import annotations

import importlib

from shared.errors import JobError

from .base import Source

SQL_TYPES = ("sqlite", "postgres", "mysql", "mssql", "odbc")

# kind -> (module under agent.sources, class)
ADAPTERS: dict[str, tuple[str, str]] = {
    **{kind: ("sql", "SqlSource") for kind in SQL_TYPES},
    "sap_b1": ("sap_b1", "SapB1Source"),
    "tally": ("tally", "TallySource"),
}


def create_source(
    name: str,
    kind: str,
    url: str,
    *,
    password: str | None = None,
    options: dict[str, str] | None = None,
    pool_size: int = 4,
) -> Source:
    adapter = ADAPTERS.get(kind)
    if adapter is not None:
        module, cls = adapter
        source_class = getattr(importlib.import_module(f"{__name__}.{module}"), cls)
        if kind in SQL_TYPES:
            return source_class(name, kind, url, password=password, options=options, pool_size=pool_size)  # type: ignore[no-any-return]
        return source_class(name, kind, url, password=password, options=options)  # type: ignore[no-any-return]
    raise JobError(
        "SOURCE_UNAVAILABLE",
        f"source type {kind!r} is not supported by this agent yet",
        retryable=False,
    )


__all__ = ["SQL_TYPES", "Source", "create_source"]
