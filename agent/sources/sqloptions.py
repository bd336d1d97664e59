"""The ``--option KEY=VALUE`` settings of a SQL source, parsed and checked in one place.

The agent's own settings (fetch batch size, pool size/overflow/recycle/pre-ping/timeout,
connect timeout, private tables and columns, PostgreSQL's COPY fast path) are taken out; whatever is left goes to the
driver (``sslmode=require`` for psycopg2, ``ssl_ca=...`` for PyMySQL, extra
``KEY=VALUE`` attributes of an ODBC connection string). Pure: ``source add`` checks the
same rules before anything is saved, without importing SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

DEFAULT_BATCH_SIZE = 10_000


class OptionError(ValueError):
    """An option value the admin gave is not acceptable (one sentence)."""


@dataclass(frozen=True)
class SqlOptions:
    batch_size: int = DEFAULT_BATCH_SIZE
    pool_size: int = 4
    max_overflow: int = 2
    pool_recycle: int = 3600
    pool_pre_ping: bool = True
    pool_timeout: int = 30
    connect_timeout: int = 10
    copy_fast_path: bool = True  # PostgreSQL: COPY ... TO STDOUT when the types allow it
    private_tables: tuple[str, ...] = ()
    private_columns: tuple[tuple[str, str], ...] = ()  # (table, column), lower case
    driver_args: dict[str, str] = field(default_factory=dict)


_INTS = {
    # name: (lowest, highest)
    "batch_size": (1, 100_000),
    "pool_size": (1, 100),
    "max_overflow": (0, 100),
    "pool_recycle": (-1, 7 * 86400),
    "pool_timeout": (1, 3600),
    "connect_timeout": (1, 600),
}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_BOOLS = ("pool_pre_ping", "copy_fast_path")


def parse_sql_options(options: Mapping[str, str] | None, *, pool_size: int = 4) -> SqlOptions:
    """Split ``options`` into the agent's settings and the driver's; ``OptionError`` if bad."""
    values: dict[str, object] = {"pool_size": pool_size}
    driver: dict[str, str] = {}
    for raw_key, raw_value in (options or {}).items():
        key, value = raw_key.strip().lower(), str(raw_value).strip()
        if key in _INTS:
            values[key] = _int(key, value)
        elif key in _BOOLS:
            values[key] = _bool(key, value)
        elif key == "private_tables":
            values[key] = tuple(_names(value))
        elif key == "private_columns":
            values[key] = tuple(_columns(value))
        else:
            driver[raw_key.strip()] = str(raw_value)
    return SqlOptions(driver_args=driver, **values)  # type: ignore[arg-type]


def _int(key: str, value: str) -> int:
    lo, hi = _INTS[key]
    try:
        number = int(value)
    except ValueError:
        number = lo - 1
    if not lo <= number <= hi:
        raise OptionError(f"option {key} must be a whole number from {lo} to {hi}, not {value[:40]!r}")
    return number


def _bool(key: str, value: str) -> bool:
    low = value.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise OptionError(f"option {key} must be true or false, not {value[:40]!r}")


def _names(value: str) -> list[str]:
    names = [n.strip().strip('"`[]').lower() for n in value.split(",") if n.strip()]
    for n in names:
        if not n or any(ch.isspace() for ch in n):
            raise OptionError(f"private_tables holds a name that is not a table: {n[:60]!r}")
    return names


def _columns(value: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for item in (n.strip() for n in value.split(",") if n.strip()):
        table, dot, column = item.rpartition(".")
        if not dot or not table.strip() or not column.strip():
            raise OptionError(
                f"private_columns entries look like table.column (or schema.table.column), "
                f"not {item[:60]!r}"
            )
        out.append((table.strip().strip('"`[]').lower(), column.strip().strip('"`[]').lower()))
    return out


def bare_name(name: str) -> str:
    """``schema.table`` -> ``table`` (names are compared without their schema)."""
    return name.rpartition(".")[2]
