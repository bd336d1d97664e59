"""``make package``: the one-file binary runs a real job; the .deb installs and removes cleanly.

Slow (a PyInstaller build) and it installs a package on this machine (dpkg -i / -r / -P,
as root), so it runs only with ``MC_TEST_PACKAGE=1``. It builds with the scripts
``make package`` runs, into the repository's dist/, exactly as an admin's build would.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import shutil
import sqlite3
import stat
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.harness import Proc, Stack, scaled, wait_until

ROOT = Path(__file__).resolve().parents[2]
PY = Path(os.environ.get("MC_PACKAGE_PYTHON", str(ROOT / ".venv" / "bin" / "python")))

pytestmark = [
    pytest.mark.package,
    pytest.mark.timeout(900),
    pytest.mark.skipif(os.environ.get("MC_TEST_PACKAGE") != "1",
                       reason="builds and installs packages: set MC_TEST_PACKAGE=1"),
]


def _sh(*argv: str, timeout: float = 600, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=scaled(timeout),
                          check=False, env=env)  # fmt: skip
    assert done.returncode == 0, f"{' '.join(argv)} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_binary_runs_a_job_and_the_deb_installs_and_removes(tmp_path: Path) -> None:
    """Build both; the binary answers --version, configures, connects, runs a query; the .deb
    installs the binary, user, 0700 folder and unit, and purging removes them all."""
    if shutil.which("dpkg-deb") is None or os.geteuid() != 0:
        pytest.fail("the package test needs dpkg-deb and root")
    started = time.monotonic()
    _sh(str(PY), "-m", "pip", "install", "-q", "pyinstaller>=6")
    _sh("installers/linux/build_binary.sh", str(PY))
    binary = ROOT / "dist" / "mini-connector"
    assert re.fullmatch(r"mini-connector \d+\.\d+\.\d+\n", _sh(str(binary), "--version"))
    deb = Path(_sh("installers/linux/build_deb.sh", str(PY)).strip().splitlines()[-1])
    staged = _sh("installers/stage_downloads.sh").split()
    assert "mini-connector-linux" in staged and deb.name in staged
    built = time.monotonic() - started

    # The binary against a real relay: configure, add a source, run, one query.
    db = tmp_path / "erp.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total TEXT)")
        conn.executemany("INSERT INTO invoices VALUES (?, ?)", [(i, f"{i}.50") for i in range(1, 11)])
    # The relay serves what make package staged; the agent is the one a connector's
    # downloadUrl gives, checked against the relay's SHA256SUMS.
    stack = Stack(tmp_path / "stack", tenant="pkg",
                  extra_env={"MC_RELAY_DOWNLOADS_DIR": str(ROOT / "dist" / "downloads")})  # fmt: skip
    try:
        stack.start_relay()
        assert stack.api is not None and stack.relay is not None
        created = stack.api.create_connector("binary")
        url = created["downloadUrl"]
        assert url == "/downloads/mini-connector-linux", created
        with urllib.request.urlopen(stack.relay.url + url, timeout=60) as resp:
            body = resp.read()
            announced = resp.headers["X-Checksum-SHA256"]
        with urllib.request.urlopen(stack.relay.url + "/downloads/SHA256SUMS", timeout=10) as resp:
            sums = resp.read().decode()
        assert body == binary.read_bytes()
        assert f"{hashlib.sha256(body).hexdigest()}  mini-connector-linux" in sums.splitlines()
        assert announced == hashlib.sha256(body).hexdigest()
        binary = tmp_path / "mini-connector-linux"
        binary.write_bytes(body)
        binary.chmod(0o755)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MC_AGENT_")}
        env["HOME"] = str(tmp_path)
        config = tmp_path / "agent" / "agent.toml"
        base = [str(binary), "--config", str(config)]
        subprocess.run([*base, "configure", "--relay-url", stack.relay.ws_url, "--api-key", created["apiKey"]],
                       check=True, env=env, capture_output=True)  # fmt: skip
        subprocess.run([*base, "source", "add", "erp", "--type", "sqlite", "--url", f"sqlite:///{db}"],
                       check=True, env=env, capture_output=True)  # fmt: skip
        agent = Proc("binary-agent", [*base, "run"], env, tmp_path / "binary-agent.log")
        stack.procs.append(agent)
        wait_until(lambda: stack.api.connector(created["id"])["status"] == "online", 60,  # type: ignore[union-attr]
                   what="the binary agent online")  # fmt: skip
        _job, rows = stack.api.run_job(created["id"], "erp", sql="SELECT id, total FROM invoices WHERE id > :m",
                                      params={"m": 7})  # fmt: skip
        assert rows == [{"id": 8, "total": "8.50"}, {"id": 9, "total": "9.50"}, {"id": 10, "total": "10.50"}]
        diag = subprocess.run([*base, "diagnose"], env=env, capture_output=True, text=True, check=False)
        assert diag.returncode == 0, diag.stdout + diag.stderr
    finally:
        stack.close()

    # The .deb: install, inspect, remove, purge.
    subprocess.run(["dpkg", "-P", "mini-connector"], capture_output=True, check=False)
    try:
        _sh("dpkg", "-i", str(deb))
        assert _sh("/usr/bin/mini-connector", "--version").startswith("mini-connector ")
        entry = pwd.getpwnam("mini-connector")
        st = os.stat("/etc/mini-connector")
        assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == entry.pw_uid
        unit = Path("/lib/systemd/system/mini-connector.service").read_text()
        assert "User=mini-connector" in unit and "ReadWritePaths=/etc/mini-connector" in unit
        _sh("dpkg", "-r", "mini-connector")
        assert not Path("/usr/bin/mini-connector").exists()
        assert Path("/etc/mini-connector").is_dir()  # remove keeps the config; purge does not
        _sh("dpkg", "-P", "mini-connector")
        assert not Path("/etc/mini-connector").exists()
        with pytest.raises(KeyError):
            pwd.getpwnam("mini-connector")
    finally:
        subprocess.run(["dpkg", "-P", "mini-connector"], capture_output=True, check=False)
    total = time.monotonic() - started
    print(f"\npackage test: build {built:.0f} s, total {total:.0f} s, binary {binary.stat().st_size / 1e6:.1f} MB")
