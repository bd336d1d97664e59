"""A private PgBouncer in front of the test PostgreSQL, for the tests that run the agent's
PostgreSQL source through it (``test_pg_pgbouncer.py``).

``start_pgbouncer`` writes an ini into a temporary folder (trust auth, one database
``test`` pointing at the server ``pg_url`` names, ``default_pool_size = 1`` so a second
client of the pooler gets the very server connection the agent used), starts the binary
on a free 127.0.0.1 port and waits, against a deadline, until it answers a query.
Without the binary the tests are skipped, or fail under ``MC_REQUIRE_SERVICES=1``
(``.ci/run`` installs it), as ``tests/conftest.py`` does for the databases.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import scaled, services_required, wait_until


@dataclass(frozen=True)
class Bouncer:
    mode: str  # pool_mode: transaction | session
    port: int
    url: str  # the agent's source URL through the pooler
    direct: str  # libpq URL of the server itself

    @property
    def conninfo(self) -> str:
        """libpq URL of the pooler (for a plain psycopg client)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/test"


def binary() -> str | None:
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(p, os.X_OK)), None
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ini(folder: Path, port: int, mode: str, server: Any, dbname: str, ignore: str) -> Path:
    (folder / "users.txt").write_text('"postgres" ""\n')
    ini = folder / "pgbouncer.ini"
    ini.write_text(
        f"[databases]\ntest = host={server.hostname or '127.0.0.1'} port={server.port or 5432} dbname={dbname}\n"
        "[pgbouncer]\nlisten_addr = 127.0.0.1\n"
        f"listen_port = {port}\nunix_socket_dir =\nauth_type = trust\n"
        f"auth_file = {folder / 'users.txt'}\npool_mode = {mode}\n"
        "default_pool_size = 1\nmax_client_conn = 50\nquery_wait_timeout = 20\n"
        f"ignore_startup_parameters = {ignore}\n"
    )
    return ini


def _answers(conninfo: str, proc: subprocess.Popen[bytes]) -> bool:
    import psycopg

    if proc.poll() is not None:
        return True  # it died: stop waiting, the caller reads why
    try:
        with psycopg.connect(conninfo, connect_timeout=2, autocommit=True) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.OperationalError:
        return False


@contextlib.contextmanager
def start_pgbouncer(pg_url: str, mode: str, *, ignore_options: bool = False) -> Iterator[Bouncer]:
    """A PgBouncer in ``pool_mode`` ``mode`` in front of ``pg_url``'s server, stopped on
    exit. ``ignore_options``: ``options`` is on ``ignore_startup_parameters`` (dropped);
    otherwise PgBouncer refuses a client that sends it."""
    exe = binary()
    if exe is None:
        if services_required():
            pytest.fail("MC_REQUIRE_SERVICES=1 but the pgbouncer binary is not installed")
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer)")
    server = urlsplit(pg_url)
    dbname = server.path.lstrip("/") or "test"
    ignore = "extra_float_digits" + (",options" if ignore_options else "")
    with tempfile.TemporaryDirectory(prefix="mc-pgbouncer-") as tmp:
        folder = Path(tmp)
        os.chmod(folder, 0o755)  # PgBouncer refuses to run as root: it runs as nobody then
        port = _free_port()
        ini = _ini(folder, port, mode, server, dbname, ignore)
        os.chmod(ini, 0o644)
        os.chmod(folder / "users.txt", 0o644)
        cmd = [exe, *(["-u", "nobody"] if os.geteuid() == 0 else []), str(ini)]
        log = (folder / "pgbouncer.log").open("wb")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        bouncer = Bouncer(mode, port, f"postgresql://postgres@127.0.0.1:{port}/test",
                          f"postgresql://postgres@{server.hostname or '127.0.0.1'}:{server.port or 5432}/{dbname}")  # fmt: skip
        try:
            wait_until(lambda: _answers(bouncer.conninfo, proc), 15, what="pgbouncer to accept connections")
            if proc.poll() is not None:
                pytest.fail(f"pgbouncer exited ({proc.returncode}): {(folder / 'pgbouncer.log').read_text()[-2000:]}")
            yield bouncer
        finally:
            proc.terminate()
            try:
                proc.wait(scaled(10))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
