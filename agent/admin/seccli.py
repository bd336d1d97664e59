"""The agent's security options and commands, registered by ``agent.cli``.

``configure`` gains ``--ca-file``, ``--pin-sha256`` (repeatable), ``--proxy``; ``rotate-keys``
makes new job-opening key pairs (``agent.jobs.keyring``). Kept apart so the main CLI only
registers them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import AgentConfig, InvalidInput, SecretBox, load_config
from ..jobs.keyring import DEFAULT_GRACE_SECONDS, rotate_keys
from ..link.transport import Transport, check_pin
from ..paths import StatePaths

SECURITY_COMMANDS = ("rotate-keys",)


def add_transport_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ca-file", metavar="PEM", help="trust this CA bundle for wss:// instead of the system CAs")
    p.add_argument("--pin-sha256", action="append", metavar="BASE64",
                   help="accept only a relay certificate whose SubjectPublicKeyInfo has this "
                        "base64 SHA-256 (repeat for a backup pin)")  # fmt: skip
    p.add_argument("--proxy", metavar="URL",
                   help="HTTP proxy (http://[user:password@]host:port); '' for none. "
                        "Default: HTTPS_PROXY / NO_PROXY")  # fmt: skip


def apply_transport_options(args: argparse.Namespace, cfg: AgentConfig, box: SecretBox) -> None:
    """Store what was given on the command line in ``cfg.transport`` (others are kept)."""
    t = Transport.from_config(cfg)
    if getattr(args, "ca_file", None) is not None:
        if args.ca_file and not Path(args.ca_file).is_file():
            raise InvalidInput(f"--ca-file {args.ca_file[:200]!r} is not a readable file")
        t.ca_file = str(Path(args.ca_file).resolve()) if args.ca_file else None
    if getattr(args, "pin_sha256", None):
        t.pins = tuple(check_pin(v) for v in args.pin_sha256 if v.strip())
    if getattr(args, "proxy", None) is not None:
        t.set_proxy(args.proxy.strip(), box)
    cfg.transport = t.to_config()


def add_security_commands(
    sub: Any, config_option: Callable[[argparse.ArgumentParser], None]
) -> None:
    p = sub.add_parser("rotate-keys", help="make a new key pair for sealed jobs")
    config_option(p)
    p.add_argument("--grace-seconds", type=float, default=DEFAULT_GRACE_SECONDS,
                   help="keep the previous private key this long for jobs already sealed to it "
                        "(default 7 days)")  # fmt: skip


def run_security_command(args: argparse.Namespace, paths: StatePaths) -> int:
    load_config(paths.config)  # a configured agent only
    if not 0 <= args.grace_seconds <= 365 * 86400:
        raise InvalidInput("--grace-seconds must be 0 to 31536000")
    public, _until = rotate_keys(paths, grace_seconds=args.grace_seconds)
    print(f"new agent key pair created; public key {public}")
    print(f"the previous key is kept for {args.grace_seconds:.0f} s for jobs already sealed to it")
    print("restart the agent (or its service): the relay learns the new key at its next hello")
    return 0
