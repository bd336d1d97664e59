"""Privileged accounts are made visible (issue 13): ``source add``, ``source test`` and
``diagnose`` through the real CLI (a subprocess), against real MariaDB and PostgreSQL, with
the privileged account (root, postgres) and with a reader created for the test.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import sqlalchemy
from sqlalchemy import text
from sqlalchemy.engine import make_url

from agent.sources.privilege import check
from agent.sources.sql import SqlSource
from tests.conftest import driver_url
from tests.ops.conftest import run_agent_cli


def _exec(url: str, *statements: str) -> None:
    eng = sqlalchemy.create_engine(driver_url(url), isolation_level="AUTOCOMMIT")
    try:
        with eng.connect() as conn:
            for s in statements:
                conn.execute(text(s))
    finally:
        eng.dispose()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    from shared.keys import generate_key

    cfg = tmp_path / "agent.toml"
    r = run_agent_cli(cfg, "configure", "--relay-url", "ws://127.0.0.1:9", "--api-key", generate_key())
    assert r.code == 0, r.err
    return cfg


@pytest.fixture
def mysql_reader(mysql_url: str) -> Iterator[str]:
    user, pw = "mc_ro_" + uuid.uuid4().hex[:8], "pw-" + uuid.uuid4().hex[:12]
    db = make_url(mysql_url).database or "test"
    _exec(mysql_url, f"CREATE USER '{user}'@'%' IDENTIFIED BY '{pw}'",
          f"GRANT SELECT, SHOW VIEW ON `{db}`.* TO '{user}'@'%'")  # fmt: skip
    try:
        yield str(make_url(mysql_url).set(username=user, password=pw).render_as_string(hide_password=False))
    finally:
        _exec(mysql_url, f"DROP USER '{user}'@'%'")


@pytest.fixture
def pg_reader(pg_url: str) -> Iterator[tuple[str, str]]:
    """(a SELECT-only role's URL, a role's URL that may read server files)."""
    tag = uuid.uuid4().hex[:8]
    reader, filer, pw = f"mc_ro_{tag}", f"mc_files_{tag}", "pw-" + tag
    _exec(pg_url, f"CREATE ROLE {reader} LOGIN PASSWORD '{pw}'", f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {reader}",
          f"CREATE ROLE {filer} LOGIN PASSWORD '{pw}'", f"GRANT pg_read_server_files TO {filer}")  # fmt: skip
    base = make_url(pg_url)
    try:
        yield (base.set(username=reader, password=pw).render_as_string(hide_password=False),
               base.set(username=filer, password=pw).render_as_string(hide_password=False))  # fmt: skip
    finally:
        _exec(pg_url, f"REVOKE SELECT ON ALL TABLES IN SCHEMA public FROM {reader}", f"DROP ROLE {reader}",
              f"DROP ROLE {filer}")  # fmt: skip


def _add(config: Path, name: str, kind: str, url: str) -> tuple[int, str, str]:
    u = make_url(url)
    password = u.password
    bare = u.set(password=None).render_as_string(hide_password=False)
    if password:
        r = run_agent_cli_stdin(config, password, "source", "add", name, "--type", kind, "--url", bare, "--password-stdin")
    else:
        r = run_agent_cli(config, "source", "add", name, "--type", kind, "--url", bare)
    return r.code, r.out, r.err


def run_agent_cli_stdin(config: Path, stdin: str, *args: str) -> object:
    import subprocess

    from tests.harness import command, scaled
    from tests.ops.conftest import Result

    done = subprocess.run([*command("mini-connector"), "--config", str(config), *args], input=stdin + "\n",
                          capture_output=True, text=True, timeout=scaled(60), check=False)  # fmt: skip
    return Result(done.returncode, done.stdout, done.stderr)


def _test_json(config: Path, name: str) -> dict[str, object]:
    r = run_agent_cli(config, "source", "test", name, "--json")
    assert r.code == 0, r.err
    return orjson.loads(r.out)


def test_mariadb_root_is_privileged_and_a_reader_is_not(config: Path, mysql_url: str, mysql_reader: str) -> None:
    code, _, err = _add(config, "root", "mysql", mysql_url)
    assert code == 0
    assert "WARNING" in err and "privileged" in err and "FILE" in err
    assert "CREATE USER 'mc_reader'@" in err and "GRANT SELECT, SHOW VIEW ON" in err
    assert _test_json(config, "root")["account"]["privileged"] is True  # type: ignore[index]

    code, _, err = _add(config, "reader", "mysql", mysql_reader)
    assert code == 0 and "WARNING" not in err, err
    result = _test_json(config, "reader")
    assert result["connected"] is True and result["account"]["privileged"] is False  # type: ignore[index]

    r = run_agent_cli(config, "diagnose", "--timeout", "1")
    lines = [line for line in r.out.splitlines() if line.split()[1:2] == ["account"]]
    assert any(line.startswith("WARN") and "source root" in line and "CREATE USER" in r.out for line in lines)
    assert any(line.startswith("OK") and "source reader" in line for line in lines)


def test_postgres_superuser_and_file_roles_are_privileged(config: Path, pg_url: str, pg_reader: tuple[str, str]) -> None:
    reader, filer = pg_reader
    code, _, err = _add(config, "pg", "postgres", pg_url)
    assert code == 0 and "WARNING" in err and "superuser" in err
    assert "ALTER ROLE mc_reader SET default_transaction_read_only = on;" in err
    code, _, err = _add(config, "pgread", "postgres", reader)
    assert code == 0 and "WARNING" not in err, err
    assert _test_json(config, "pgread")["account"]["privileged"] is False  # type: ignore[index]
    code, _, err = _add(config, "pgfiles", "postgres", filer)
    assert code == 0 and "pg_read_server_files" in err


def test_an_unreachable_source_is_added_with_a_note(config: Path) -> None:
    code, out, err = _add(config, "gone", "mysql", "mysql+pymysql://root@127.0.0.1:9/db")
    assert code == 0 and "added" in out
    assert "could not check whether the account is privileged" in err and "Traceback" not in err


def test_check_on_a_live_source(mysql_url: str) -> None:
    src = SqlSource("mc_priv", "mysql", mysql_url)
    try:
        finding = check(src)
    finally:
        src.close()
    assert finding is not None and finding.privileged and "FILE" in finding.reasons
