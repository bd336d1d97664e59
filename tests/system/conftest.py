"""One real relay and one real agent for the whole system suite, plus log capture on failure.

The session stack is a ``mini-relay serve`` process (SQLite store in a temp folder) and a
``mini-connector run`` process with the sources ``erp`` (SQLite), ``pg`` and ``maria``
(when those servers are reachable). Tests that break or revoke an agent start their own
agent on the same relay. When a test fails, the tail of every process's output is
printed in its report.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import conftest as root
from tests.harness import Agent, HarnessError, Source, Stack
from tests.system import dataset

pytestmark = pytest.mark.system


@dataclass
class SystemEnv:
    stack: Stack
    agent: Agent
    sqlite_path: Path
    pg_url: str | None
    pg_schema: str | None
    mysql_url: str | None
    mysql_table: str | None

    @property
    def api(self) -> Any:
        return self.stack.api

    @property
    def connector_id(self) -> str:
        return self.agent.connector_id


def _reachable(env: str, default: str) -> str | None:
    url = os.environ.get(env) or default
    try:
        root._probe(url)
    except Exception:
        return None
    return url


@pytest.fixture(scope="session")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SystemEnv]:
    work = tmp_path_factory.mktemp("system")
    suffix = secrets.token_hex(4)
    sqlite_path = work / "erp.db"
    dataset.create_sqlite(sqlite_path)
    sources = [Source("erp", "sqlite", f"sqlite:///{sqlite_path}")]

    pg_url = _reachable("MC_TEST_POSTGRES_URL", root.DEFAULT_PG_URL)
    pg_schema = f"mc_sys_{suffix}" if pg_url else None
    if pg_url and pg_schema:
        dataset.create_postgres(pg_url, pg_schema)
        sources.append(Source("pg", "postgres", pg_url))
    mysql_url = _reachable("MC_TEST_MYSQL_URL", root.DEFAULT_MYSQL_URL)
    mysql_table = f"mc_sys_{suffix}" if mysql_url else None
    if mysql_url and mysql_table:
        dataset.create_mysql(mysql_url, mysql_table)
        sources.append(Source("maria", "mysql", mysql_url))

    stack = Stack(work / "stack", tenant=f"sys-{suffix}", heartbeat=1.0)
    try:
        try:
            stack.start_relay()
            agent = stack.add_agent("system-main", sources)
        except HarnessError as exc:
            pytest.fail(f"could not start relay + agent: {exc}\n{stack.logs_text()}")
        yield SystemEnv(stack, agent, sqlite_path, pg_url, pg_schema, mysql_url, mysql_table)
    finally:
        stack.close()
        if pg_url and pg_schema:
            dataset.drop_postgres(pg_url, pg_schema)
        if mysql_url and mysql_table:
            dataset.drop_mysql(mysql_url, mysql_table)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed and "system" in getattr(item, "funcargs", {}):
        env = item.funcargs["system"]
        if isinstance(env, SystemEnv):
            report.sections.append(("process output", env.stack.logs_text(80)))
    return report
