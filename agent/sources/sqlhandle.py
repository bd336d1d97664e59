"""What the SQL helpers (``sqlmeta``, ``sqlodbc``, ``sqlstream``) need of a SQL source:
the shape ``sql.SqlSource`` has, written down so that they depend on it and not on the
module that uses them."""

from __future__ import annotations

from typing import Any, Protocol

from .sqloptions import SqlOptions


class SqlHandle(Protocol):
    name: str
    type: str
    opts: SqlOptions

    @property
    def odbc(self) -> bool: ...

    @property
    def flavour(self) -> str: ...

    @property
    def dialect(self) -> str: ...

    @property
    def engine(self) -> Any: ...

    def note_flavour(self, dbms_name: str) -> None: ...

    def log_debug(self, message: str) -> None: ...

    def raw_connection(self) -> Any: ...

    def fresh_dbapi_connection(self) -> Any: ...
