"""Where the agent's config and state live, per operating system.

The config path comes from ``--config``, else ``MC_AGENT_CONFIG``, else the per-OS default
(contract §1). Everything else the agent keeps (its key pair, the password key, the spool,
logs, the status file) lives in the config's folder, so one ``--config`` moves it all.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ENV_CONFIG = "MC_AGENT_CONFIG"
CONFIG_NAME = "agent.toml"


def _is_root() -> bool:
    geteuid = getattr(os, "geteuid", None)
    return bool(geteuid is not None and geteuid() == 0)


def default_config_path(
    *,
    env: Mapping[str, str] | None = None,
    platform: str | None = None,
    is_root: bool | None = None,
    home: Path | None = None,
) -> Path:
    """The default config path for this OS and user (inputs injectable for tests)."""
    env = os.environ if env is None else env
    platform = sys.platform if platform is None else platform
    if platform.startswith("win"):
        base = env.get("ProgramData") or env.get("PROGRAMDATA") or r"C:\ProgramData"
        return Path(base) / "MiniConnector" / CONFIG_NAME
    if (_is_root() if is_root is None else is_root) and platform.startswith("linux"):
        return Path("/etc/mini-connector") / CONFIG_NAME
    xdg = env.get("XDG_CONFIG_HOME")
    root = Path(xdg) if xdg else (home or Path.home()) / ".config"
    return root / "mini-connector" / CONFIG_NAME


def resolve_config_path(cli_value: str | None, env: Mapping[str, str] | None = None) -> Path:
    """``--config`` wins, then ``MC_AGENT_CONFIG``, then the OS default."""
    env = os.environ if env is None else env
    if cli_value:
        return Path(cli_value).expanduser()
    if env.get(ENV_CONFIG):
        return Path(env[ENV_CONFIG]).expanduser()
    return default_config_path(env=env)


@dataclass(frozen=True)
class StatePaths:
    """Every file the agent keeps, beside its config."""

    config: Path

    @property
    def folder(self) -> Path:
        return self.config.parent

    @property
    def private_key(self) -> Path:
        return self.folder / "agent_key.pem"

    @property
    def secret_key(self) -> Path:
        return self.folder / "secret.key"

    @property
    def spool(self) -> Path:
        return self.folder / "spool.db"

    @property
    def logs_dir(self) -> Path:
        return self.folder / "logs"

    @property
    def log_file(self) -> Path:
        return self.logs_dir / "agent.log"

    @property
    def status_file(self) -> Path:
        return self.folder / "status.json"
