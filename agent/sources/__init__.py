"""Source adapters: one per kind of local system, behind one small interface (``base``).

``create_source`` imports an adapter only when a source of its kind is first used, so an
idle agent never loads SQLAlchemy or a database driver.
"""

from __future__ import annotations

from shared.errors import JobError

from .base import Source

SQL_TYPES = ("sqlite", "postgres", "mysql", "mssql", "odbc")


def create_source(
    name: str,
    kind: str,
    url: str,
    *,
    password: str | None = None,
    options: dict[str, str] | None = None,
    pool_size: int = 4,
) -> Source:
    if kind in SQL_TYPES:
        from .sql import SqlSource

        return SqlSource(name, kind, url, password=password, options=options, pool_size=pool_size)
    if kind == "sap_b1":
        from .sap_b1 import SapB1Source

        return SapB1Source(name, kind, url, password=password, options=options)
    if kind == "tally":
        from .tally import TallySource

        return TallySource(name, kind, url, password=password, options=options)
    raise JobError(
        "SOURCE_UNAVAILABLE",
        f"source type {kind!r} is not supported by this agent yet",
        retryable=False,
    )


__all__ = ["SQL_TYPES", "Source", "create_source"]
