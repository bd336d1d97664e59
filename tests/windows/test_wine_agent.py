"""The Windows agent, run here under Wine against a Linux relay on loopback (issue 19).

What this proves and what it cannot is in docs/OPERATIONS.md ("Windows: what runs under
Wine"). The runtime is the Windows embeddable CPython 3.13 with the agent's win_amd64
wheels (tests/windows/runtime.py); the agent's code is this checkout's.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Proc, Stack, stack, wait_until

from .runtime import ROOT, Wine, assemble, windows_path

ROWS = [(i, f"name {i}", i * 1.5) for i in range(1, 501)]
# Wine is slow to start programs (2-4 s each) and PyInstaller takes ~90 s under it.
pytestmark = pytest.mark.timeout(1500)


@pytest.fixture(scope="module")
def wine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Wine]:
    w = Wine(assemble(), tmp_path_factory.mktemp("wineprefix") / "prefix")
    w.use_checkout()
    w.boot()
    try:
        yield w
    finally:
        w.shutdown()


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with stack(tmp_path_factory.mktemp("relay"), tenant="acme", heartbeat=1.0) as s:
        yield s


@pytest.fixture(scope="module")
def erp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("erp") / "erp.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, name TEXT, total REAL)")
    con.executemany("INSERT INTO orders VALUES (?, ?, ?)", ROWS)
    con.commit()
    con.close()
    return db


def _ok(done: object) -> str:
    out = getattr(done, "stdout", "") + getattr(done, "stderr", "")
    assert getattr(done, "returncode", 1) == 0, out[-3000:]
    return out


def test_the_agent_runs_under_wine_and_serves_a_job(wine: Wine, relay: Stack, erp: Path) -> None:
    """--version, configure (config and keys under %ProgramData%), source add, run, a job's
    rows, status and diagnose: the Python agent as an IT admin would drive it."""
    assert relay.api is not None and relay.relay is not None
    assert "mini-connector 0.1.0" in _ok(wine.agent("--version"))
    created = relay.api.create_connector("windows-office", "windows")
    out = _ok(wine.agent("configure", "--relay-url", relay.relay.ws_url, "--api-key", created["apiKey"],
                         "--name", "windows-office"))  # fmt: skip
    assert r"C:\ProgramData\MiniConnector\agent.toml" in out and created["apiKey"] not in out
    home = wine.drive_c / "ProgramData" / "MiniConnector"
    assert (home / "agent.toml").is_file() and (home / "agent_key.pem").is_file()
    _ok(wine.agent("source", "add", "erp", "--type", "sqlite", "--url", f"sqlite:///{windows_path(erp)}"))
    # a path cp1252 cannot print: escaped on the redirected output, not a UnicodeEncodeError
    japanese = erp.parent / "名前.db"
    sqlite3.connect(japanese).close()
    _ok(wine.agent("source", "add", "jp", "--type", "sqlite", "--url", f"sqlite:///{windows_path(japanese)}"))
    assert "\\u540d\\u524d.db" in _ok(wine.agent("source", "list"))

    agent = Proc("wine-agent", ["wine", str(wine.python), "-m", "agent.cli", "run"], wine.env(),
                 erp.parent / "wine-agent.log")  # fmt: skip
    try:
        con = wait_until(lambda: (c := relay.api.connector(created["id"]))["status"] == "online" and c,  # type: ignore[union-attr]
                         120, interval=0.2, what="the Wine agent online")  # fmt: skip
        assert con["os"] == "windows" and {"name": "erp", "type": "sqlite"} in con["sources"]
        job, rows = relay.api.run_job(created["id"], "erp", sql="SELECT id, name, total FROM orders ORDER BY id")
        assert job["status"] == "succeeded" and job["rowCount"] == len(ROWS)
        assert [(r["id"], r["name"], r["total"]) for r in rows] == ROWS
        wait_until(lambda: relay.api.connector(created["id"])["cpuUsage"] is not None,  # type: ignore[union-attr]
                   30, what="a heartbeat with CPU from psutil on Windows")  # fmt: skip
        status = _ok(wine.agent("status"))
        assert "state:          connected" in status and "erp (sqlite)" in status
        diagnose = _ok(wine.agent("diagnose"))
        assert "all checks passed" in diagnose and created["apiKey"] not in diagnose
    finally:
        agent.stop()
    assert "Traceback" not in agent.tail(200)


def test_the_secret_file_acl_code_runs(wine: Wine) -> None:
    """agent/platform_win.restrict_to_owner runs icacls from System32 and reports success.
    Wine's icacls accepts the arguments but applies nothing, and Wine derives a file's
    DACL from its Unix mode bits: that the ACL really holds needs Windows (documented)."""
    probe = wine.drive_c / "acl-probe.txt"
    probe.write_text("secret")
    code = ("import sys; from pathlib import Path; from agent import platform_win as p; "
            "print(p.IS_WINDOWS, p.icacls_argv(Path(sys.argv[1]), 'svc')[0], p.restrict_to_owner(Path(sys.argv[1])))")  # fmt: skip
    out = _ok(wine.run([str(wine.python), "-c", code, r"C:\acl-probe.txt"]))
    assert out.split()[:3] == ["True", r"C:\windows\system32\icacls.exe", "True"], out


@pytest.fixture(scope="module")
def exe(wine: Wine, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """installers/windows/mini-connector.spec built by PyInstaller under Wine. With
    MC_WINDOWS_DIST set (make windows-check), also copied there as
    mini-connector-windows.exe and into its downloads/ folder, which `make demo` serves."""
    out = tmp_path_factory.mktemp("pyinstaller")
    spec = ROOT / "installers" / "windows" / "mini-connector.spec"
    done = wine.run([str(wine.python), "-m", "PyInstaller", "--noconfirm", "--distpath", windows_path(out / "dist"),
                     "--workpath", windows_path(out / "build"), windows_path(spec)], timeout=1200, cwd=out)  # fmt: skip
    _ok(done)
    built = out / "dist" / "mini-connector.exe"
    assert built.is_file() and built.stat().st_size > 10_000_000
    # the harness's ProcessPrng shim stays out of the product (the spec drops Windows' own DLLs)
    assert "bcryptprimitives" not in (out / "build" / "mini-connector" / "EXE-00.toc").read_text().lower()
    if os.environ.get("MC_WINDOWS_DIST"):
        dist = Path(os.environ["MC_WINDOWS_DIST"])
        (dist / "downloads").mkdir(parents=True, exist_ok=True)
        for target in (dist / "mini-connector-windows.exe", dist / "downloads" / "mini-connector-windows.exe"):
            shutil.copyfile(built, target)
    return built


def _sc(wine: Wine, *args: str) -> str:
    return wine.run(["sc", *args], timeout=60).stdout


def test_the_one_file_exe_runs_as_a_service_and_serves_a_job(wine: Wine, relay: Stack, erp: Path, exe: Path) -> None:
    """The .exe in Program Files: --version, configure, then `service install` registers and
    starts it in Wine's service manager (LocalSystem, automatic start); it connects and
    serves a job; `service uninstall` stops it (the connector goes offline) and removes it."""
    assert relay.api is not None and relay.relay is not None
    folder = wine.drive_c / "Program Files" / "MiniConnector"
    folder.mkdir(parents=True, exist_ok=True)
    installed = folder / "mini-connector.exe"
    shutil.copyfile(exe, installed)
    # the harness's shim (tests/windows/runtime.py), beside the program as Windows' own
    # DLL would be in System32: Wine 8's bcryptprimitives lacks ProcessPrng
    shutil.copyfile(wine.runtime / "python" / "bcryptprimitives.dll", folder / "bcryptprimitives.dll")
    program = r"C:\Program Files\MiniConnector\mini-connector.exe"
    key = r"HKLM\SYSTEM\CurrentControlSet\Services\MiniConnector"
    assert "mini-connector 0.1.0" in _ok(wine.run([program, "--version"]))
    created = relay.api.create_connector("windows-service", "windows")
    _ok(wine.run([program, "configure", "--relay-url", relay.relay.ws_url, "--api-key", created["apiKey"]]))
    sources = _ok(wine.run([program, "source", "list"]))
    if "erp" not in sources:
        _ok(wine.run([program, "source", "add", "erp", "--type", "sqlite", "--url", f"sqlite:///{windows_path(erp)}"]))
    try:
        out = _ok(wine.run([program, "service", "install"], timeout=180))
        assert "installed and started" in out
        # Wine's sc has no qc: the registration, from the registry
        image = wine.run(["reg", "query", key, "/v", "ImagePath"], timeout=60).stdout
        assert program in image and "service run" in image, image
        assert "0x2" in wine.run(["reg", "query", key, "/v", "Start"], timeout=60).stdout  # automatic start
        wait_until(lambda: relay.api.connector(created["id"])["status"] == "online",  # type: ignore[union-attr]
                   120, interval=0.2, what="the service's agent online")  # fmt: skip
        assert "RUNNING" in _sc(wine, "query", "MiniConnector")
        job, rows = relay.api.run_job(created["id"], "erp", sql="SELECT count(*) AS n, sum(total) AS s FROM orders")
        assert job["status"] == "succeeded" and rows == [{"n": len(ROWS), "s": sum(r[2] for r in ROWS)}]
    finally:
        removed = wine.run([program, "service", "uninstall"], timeout=180)
    assert removed.returncode == 0 and "removed" in removed.stdout, removed.stdout + removed.stderr
    wait_until(lambda: relay.api.connector(created["id"])["status"] == "offline",  # type: ignore[union-attr]
               60, what="the stopped service's connector offline")  # fmt: skip
    wait_until(lambda: wine.run(["reg", "query", key], timeout=60).returncode != 0, 60,
               what="the service's registration gone")  # fmt: skip
    assert wine.run(["sc", "query", "MiniConnector"], timeout=60).returncode != 0


def test_the_relay_serves_the_windows_build(exe: Path, tmp_path: Path) -> None:
    """POST /connectors for a windows connector links the .exe, and the download is it."""
    builds = tmp_path / "downloads"
    builds.mkdir()
    shutil.copyfile(exe, builds / "mini-connector-windows.exe")
    with stack(tmp_path / "stack", tenant="acme", extra_env={"MC_RELAY_DOWNLOADS_DIR": str(builds)}) as s:
        assert s.api is not None and s.relay is not None
        created = s.api.create_connector("branch", "windows")
        assert created["downloadUrl"] == "/downloads/mini-connector-windows.exe"
        body = urllib.request.urlopen(s.relay.url + created["downloadUrl"], timeout=60).read()
        sums = urllib.request.urlopen(s.relay.url + "/downloads/SHA256SUMS", timeout=10).read().decode()
    assert body == exe.read_bytes()
    assert f"{hashlib.sha256(body).hexdigest()}  mini-connector-windows.exe" in sums.splitlines()
