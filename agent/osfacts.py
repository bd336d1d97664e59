"""What system the agent runs on, without the ``platform`` module.

On Windows, CPython 3.12+ answers ``platform.system()``, ``release()``, ``machine()`` and
``platform()`` with a WMI query: slow on real Windows (tens to hundreds of ms, more on a
busy host) and fatal under Wine 8, whose propsys lacks ``VariantToString``. ``sys.platform``,
``sys.getwindowsversion()`` and ``os.uname()`` answer the same questions at once.
"""

from __future__ import annotations

import os
import sys


def is_windows() -> bool:
    return sys.platform == "win32"


def os_name() -> str:
    """The contract's ``os`` of a connector: ``windows`` or ``linux``."""
    return "windows" if is_windows() else "linux"


def facts() -> dict[str, str]:
    """system, release, version, machine and a one-line platform string."""
    if is_windows():
        v = sys.getwindowsversion()  # type: ignore[attr-defined,unused-ignore]
        system, release, version = "Windows", f"{v.major}.{v.minor}", f"{v.major}.{v.minor}.{v.build}"
        machine = os.environ.get("PROCESSOR_ARCHITECTURE", "")
    else:
        u = os.uname()
        system, release, version, machine = u.sysname, u.release, u.version, u.machine
    return {"system": system, "release": release, "version": version, "machine": machine,
            "platform": f"{system}-{release}-{machine}"}  # fmt: skip
