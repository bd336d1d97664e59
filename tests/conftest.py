"""Fixtures every test folder shares: database URLs that skip (or fail) when unreachable.

``pg_url`` / ``mysql_url`` read ``MC_TEST_POSTGRES_URL`` / ``MC_TEST_MYSQL_URL``. When the
server cannot be reached the test is skipped with the reason, unless
``MC_REQUIRE_SERVICES=1`` (set by ``.ci/run``), which turns the skip into a failure so a
missing service can never pass CI silently. ``TIMEOUT_FACTOR`` scales every wait.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_MYSQL_URL = "mysql+pymysql://root@127.0.0.1:3306/test"

TIMEOUT_FACTOR = float(os.environ.get("MC_TEST_TIMEOUT_FACTOR", "1") or 1)


def scaled(seconds: float) -> float:
    """A deadline scaled for slow machines (``MC_TEST_TIMEOUT_FACTOR``)."""
    return seconds * TIMEOUT_FACTOR


def wait_until(
    predicate: Callable[[], Any], timeout: float, *, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + scaled(timeout)
    last: Any = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {scaled(timeout):.1f}s waiting for {what or predicate}")
        time.sleep(interval)


def same_outcome(expected: Callable[[Any], Any], got: Callable[[Any], Any], raw: Any) -> None:
    """``got(raw)`` returns what ``expected(raw)`` returns, of the same type, or both raise
    the same kind of exception (a fast path held to the reference it shortcuts)."""
    outcomes = []
    for fn in (expected, got):
        try:
            outcomes.append(fn(raw))
        except Exception as exc:
            outcomes.append(type(exc))
    assert outcomes[1] == outcomes[0] and type(outcomes[1]) is type(outcomes[0]), raw


def services_required() -> bool:
    return os.environ.get("MC_REQUIRE_SERVICES", "") not in ("", "0", "false", "no")


def _unavailable(name: str, url: str, exc: BaseException) -> None:
    reason = f"{name} unreachable at {url}: {type(exc).__name__}: {exc}".splitlines()[0]
    if services_required():
        pytest.fail(f"MC_REQUIRE_SERVICES=1 but {reason}")
    pytest.skip(reason)


def _probe(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(driver_url(url), pool_pre_ping=False, connect_args=_connect_timeout(url))
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    finally:
        engine.dispose()


def driver_url(url: str) -> str:
    """``url`` with an explicit driver: SQLAlchemy 2.1 maps bare ``postgresql://`` to psycopg 3,
    which is not installed; psycopg2 is."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


def _connect_timeout(url: str) -> dict[str, Any]:
    if url.startswith("postgresql"):
        return {"connect_timeout": 3}
    if url.startswith("mysql"):
        return {"connect_timeout": 3}
    return {}


_probed: dict[str, BaseException | None] = {}


def _service_url(name: str, env: str, default: str) -> str:
    url = os.environ.get(env) or default
    if url not in _probed:
        try:
            _probe(url)
            _probed[url] = None
        except Exception as exc:  # any driver/network failure means "unreachable"
            _probed[url] = exc
    exc = _probed[url]
    if exc is not None:
        _unavailable(name, url, exc)
    return url


@pytest.fixture
def pg_url() -> str:
    """A reachable PostgreSQL URL (SQLAlchemy form), or skip/fail with the reason."""
    return _service_url("PostgreSQL", "MC_TEST_POSTGRES_URL", DEFAULT_PG_URL)


@pytest.fixture
def pg_database(pg_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database for one test (a relay store), dropped afterwards; its
    URL in the psycopg2 form SQLAlchemy and ``mini-relay --database-url`` both take."""
    from tests.harness import fresh_pg_database

    with fresh_pg_database(pg_url) as url:
        yield url


@pytest.fixture
def mysql_url() -> str:
    """A reachable MariaDB/MySQL URL (SQLAlchemy form), or skip/fail with the reason."""
    return _service_url("MariaDB/MySQL", "MC_TEST_MYSQL_URL", DEFAULT_MYSQL_URL)


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    """A path for a fresh SQLite database file in the test's temporary folder."""
    return tmp_path / "source.db"


@pytest.fixture
def timeout_factor() -> float:
    return TIMEOUT_FACTOR


# ---------------------------------------------------------------- HPKE attempts


class _CountingSuite:
    """An HPKE suite whose ``decrypt`` calls are counted (the real suite does the work)."""

    def __init__(self, suite: Any, calls: list[str], name: str) -> None:
        self.suite, self.calls, self.name = suite, calls, name

    def decrypt(self, sealed: bytes, key: object, info: bytes) -> bytes:
        self.calls.append(self.name)
        return self.suite.decrypt(sealed, key, info)  # type: ignore[no-any-return]

    def encrypt(self, plain: bytes, key: object, info: bytes) -> bytes:
        return self.suite.encrypt(plain, key, info)  # type: ignore[no-any-return]


@pytest.fixture
def attempts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The HPKE decryptions tried, in order: "x25519" or "hybrid" each."""
    from shared import crypto

    calls: list[str] = []
    monkeypatch.setattr(crypto, "SUITE", _CountingSuite(crypto.SUITE, calls, "x25519"))
    monkeypatch.setattr(crypto, "SUITE_HYBRID", _CountingSuite(crypto.SUITE_HYBRID, calls, "hybrid"))
    return calls


@pytest.fixture
def root_logging() -> Iterator[logging.Logger]:
    """The root logger, its handlers and level put back as they were after the test (for
    tests that install the agent's real handlers with ``setup_logging``)."""
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    try:
        yield root
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
            h.close()
        for h in saved:
            root.addHandler(h)
        root.setLevel(level)
