"""``mini-connector``: the agent's command line (contract §1).

Every subcommand takes ``--config PATH`` before or after its name (or ``MC_AGENT_CONFIG``).
Every failure is one sentence on stderr and a distinct exit code (below), never a
traceback (set ``MC_DEBUG=1`` to see one).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

import orjson

from shared import __version__
from shared.closedpipe import quiet_on_closed_pipe
from shared.errors import JobError, KeyFormatError
from shared.keys import validate_key

from .admin.errors import EXIT_REPLACED
from .admin.opscli import OPS_COMMANDS, add_ops_commands, run_ops_command
from .admin.seccli import (
    SECURITY_COMMANDS,
    add_security_commands,
    add_transport_options,
    apply_transport_options,
    run_security_command,
)
from .config import (
    CONTROL_CHARS,
    DEFAULT_CAPACITY,
    KNOWN_TYPES,
    SUPPORTED_TYPES,
    ConfigError,
    InvalidInput,
    SecretBox,
    SourceConfig,
    check_no_control,
    check_source_name,
    check_source_url,
    load_config,
    normalise_relay_url,
    redact_url,
    save_config,
    split_odbc_password,
    split_url_password,
)
from .jobs.keyring import ensure_keys
from .link.relays import split_urls
from .paths import StatePaths, default_config_path, resolve_config_path

EXIT_OK = 0
EXIT_ERROR = 1  # unexpected
EXIT_USAGE = 2  # bad arguments or values (argparse uses 2 as well)
EXIT_CONFIG = 3  # no config, unreadable config, unknown source
EXIT_SOURCE = 4  # a source test failed
EXIT_UNSUPPORTED = 5  # a source type this agent does not support yet
EXIT_NOT_RUNNING = 6  # status: the agent is not running


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.message, self.code = message, code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _config_option(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: a subparser's default must not overwrite a value given before its name.
    p.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                   help=f"agent config file (default: $MC_AGENT_CONFIG, else {default_config_path()})")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mini-connector", description="The Mini Connector agent.")
    parser.add_argument("--version", action="version", version=f"mini-connector {__version__}")
    _config_option(parser)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("configure", help="set the relay URL and API key")
    _config_option(p)
    p.add_argument("--relay-url", required=True, action="append",
                   help="the relay's URL; repeat it (or separate with commas) for several relay nodes")
    p.add_argument("--api-key",
                   help="the connector's API key (vmc_...), shown once when the connector was registered; "
                        "needed the first time, kept when omitted later")
    p.add_argument("--name", help="a name for this agent, shown in its status file and support bundles")
    p.add_argument("--capacity", type=int,
                   help=f"jobs run at once (default {DEFAULT_CAPACITY})")
    p.add_argument("--allow-insecure", action="store_true", help="allow plain ws:// off localhost")
    add_transport_options(p)  # --ca-file, --pin-sha256, --proxy (agent/admin/seccli.py)

    p = sub.add_parser("source", help="manage local sources")
    _config_option(p)
    ssub = p.add_subparsers(dest="source_command", required=True, parser_class=_Parser)
    a = ssub.add_parser("add", help="add or replace a source")
    _config_option(a)
    a.add_argument("name", help="the source's name, as jobs name it")
    a.add_argument("--type", required=True, choices=KNOWN_TYPES, help="the kind of system")
    a.add_argument("--url", required=True,
                   help="where it is: a SQLAlchemy URL (postgresql://user@host/db, sqlite:////path), "
                        "an ODBC connection string, or the Service Layer / Tally HTTP address")
    a.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    a.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a source option (repeatable); docs/SOURCES.md lists each type's options")
    lst = ssub.add_parser("list", help="list sources (never shows passwords)")
    _config_option(lst)
    lst.add_argument("--json", action="store_true", help="one JSON array instead of lines")
    for name, text in (("test", "test a source's connection"), ("remove", "remove a source")):
        sp = ssub.add_parser(name, help=text)
        _config_option(sp)
        sp.add_argument("name", help="the source's name")
        if name == "test":
            sp.add_argument("--json", action="store_true", help="one JSON object instead of lines")

    p = sub.add_parser("run", help="run the agent in the foreground")
    _config_option(p)
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                   help="the lowest level logged and shipped (default INFO)")

    p = sub.add_parser("status", help="show the running agent's state")
    _config_option(p)
    p.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    add_ops_commands(sub, _config_option)  # diagnose, logs, service (agent/admin/opscli.py)
    add_security_commands(sub, _config_option)  # rotate-keys (agent/admin/seccli.py)
    return parser


def _printable_streams() -> None:
    """Characters the output's encoding lacks are written as escapes, not fatal: on Windows
    a redirected stdout (``diagnose > out.txt``, a service wrapper, a pipe) is in the ANSI
    code page (cp1252 and the like), and a source's path, a database's message or a log
    line may hold any character; Python's default there is to raise UnicodeEncodeError."""
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "").replace("_", "")
        if encoding not in ("utf8", "utf8sig") and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def main(argv: Sequence[str] | None = None) -> int:
    _printable_streams()
    # The reader went away (``status | head -1``): stop quietly, as other Unix tools do.
    return quiet_on_closed_pipe(lambda: _main(argv))


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    paths = StatePaths(resolve_config_path(getattr(args, "config", None)))
    try:
        return _dispatch(args, paths)
    except BrokenPipeError:
        raise
    except CliError as exc:
        _err(exc.message)
        return exc.code
    except KeyFormatError as exc:
        _err(f"invalid API key: {exc.message}.")
        return EXIT_USAGE
    except InvalidInput as exc:
        _err(f"{exc}.")
        return EXIT_USAGE
    except ConfigError as exc:
        _err(f"{exc}.")
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_OK
    except PermissionError as exc:
        # The agent's state lives beside its config: a file there this user may not read.
        _err(f"permission denied: {exc.filename or exc}: run the command as the user the agent "
             "runs as, or with sudo.")  # fmt: skip
        return EXIT_CONFIG
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one sentence, no traceback
        if os.environ.get("MC_DEBUG"):
            traceback.print_exc()
        _err(f"unexpected error: {type(exc).__name__}: {exc}"[:500])
        return EXIT_ERROR


def _err(message: str) -> None:
    print(f"mini-connector: {message}", file=sys.stderr)


def _dispatch(args: argparse.Namespace, paths: StatePaths) -> int:
    if args.command == "configure":
        return cmd_configure(args, paths)
    if args.command == "source":
        return {"add": cmd_source_add, "list": cmd_source_list, "test": cmd_source_test,
                "remove": cmd_source_remove}[args.source_command](args, paths)  # fmt: skip
    if args.command == "run":
        return cmd_run(args, paths)
    if args.command in SECURITY_COMMANDS:
        return run_security_command(args, paths)
    if args.command in OPS_COMMANDS:
        return run_ops_command(args, paths)
    return cmd_status(args, paths)


# ---------------------------------------------------------------- configure


def cmd_configure(args: argparse.Namespace, paths: StatePaths) -> int:
    # The key first: a typo must not half-write a config. Without --api-key, the key the
    # config already holds stays (it was shown once; changing only the relay URL must
    # not need it again).
    key = validate_key(args.api_key) if args.api_key is not None else None
    cfg = load_config(paths.config, missing_ok=True)
    if key is None and not cfg.api_key_enc:
        raise CliError("--api-key is required the first time (the key shown when the connector was created)",
                       EXIT_USAGE)  # fmt: skip
    urls = [normalise_relay_url(u, allow_insecure=bool(args.allow_insecure)) for u in split_urls(args.relay_url)]
    cfg.relay_url, cfg.relay_urls = urls[0], urls
    cfg.allow_insecure = bool(args.allow_insecure)
    if args.name is not None:
        if not 1 <= len(args.name.strip()) <= 100:
            raise InvalidInput("the connector name must be 1 to 100 characters")
        check_no_control(args.name.strip(), "the connector name")
        cfg.name = args.name.strip()
    if args.capacity is not None:
        if not 1 <= args.capacity <= 256:
            raise InvalidInput("--capacity must be a whole number from 1 to 256")
        cfg.capacity = args.capacity
    box = SecretBox(paths.secret_key)
    if key is not None:
        cfg.api_key_enc = box.encrypt(key, "api_key")
    apply_transport_options(args, cfg, box)
    save_config(paths.config, cfg)
    created = ensure_keys(paths)  # X25519 (+ the post-quantum hybrid pair), 0600
    print(f"configured: relay {', '.join(urls)}, config {paths.config}")
    print(f"agent key pair {'created' if created else 'kept'}: {paths.private_key}")
    return EXIT_OK


# ---------------------------------------------------------------- sources


def cmd_source_add(args: argparse.Namespace, paths: StatePaths) -> int:
    name = check_source_name(args.name)
    if args.type not in SUPPORTED_TYPES:
        raise CliError(
            f"source type {args.type!r} is not supported yet; this agent supports "
            f"{', '.join(SUPPORTED_TYPES)}.",
            EXIT_UNSUPPORTED,
        )
    cfg = load_config(paths.config)
    check_no_control(args.url, "the source URL")
    check_source_url(args.type, args.url)
    url, password = split_url_password(args.url)
    if args.type in ("odbc", "mssql"):
        url, odbc_password = split_odbc_password(url)
        password = password or odbc_password
    if args.password_stdin:
        try:
            # (a C locale reads stdin with surrogateescape, a UTF-8 one strictly)
            password = sys.stdin.readline().rstrip("\r\n")
            password.encode("utf-8")
        except UnicodeError:
            # (the bytes are not shown: they are the password)
            raise InvalidInput("the password on stdin is not UTF-8 text: send it UTF-8 encoded") from None
        if not password:
            raise InvalidInput("--password-stdin was given but no password arrived on stdin")
    options: dict[str, str] = {}
    for item in args.option:
        k, sep, v = item.partition("=")
        if not sep or not k.strip():
            raise InvalidInput(f"--option {item[:60]!r} must look like KEY=VALUE")
        check_no_control(item, "--option")
        if k.strip().lower() in ("password", "passwd", "pwd"):
            raise InvalidInput("give the password with --password-stdin, not --option")
        if k.strip() in options:
            raise InvalidInput(f"--option {k.strip()[:60]!r} was given twice: give each option once")
        options[k.strip()] = v
    if args.type in ("postgres", "mysql", "mssql", "odbc", "sqlite"):
        from .sources.sqloptions import OptionError, parse_sql_options

        try:
            checked = parse_sql_options(options)
            if args.type == "mysql":
                from .sources.mysqlsession import check_driver_args

                check_driver_args(checked.driver_args)
        except (OptionError, ValueError) as exc:
            raise InvalidInput(str(exc)) from exc
    if args.type == "sqlite":
        _check_sqlite_file(url)
    box = SecretBox(paths.secret_key)
    enc = box.encrypt(password, f"source:{name}") if password else None
    replaced = name in cfg.sources
    cfg.sources[name] = SourceConfig(name=name, type=args.type, url=url, password_enc=enc, options=options)
    save_config(paths.config, cfg)
    print(f"source {name!r} {'replaced' if replaced else 'added'} ({args.type}, {url})")
    _restart_note(paths)
    if password:
        print("its password is stored encrypted, not in the config")
    if args.type in PRIVILEGE_TYPES:
        _privilege_note(cfg.sources[name], SecretBox(paths.secret_key), when_unreachable=True)
    return EXIT_OK


PRIVILEGE_TYPES = ("postgres", "mysql", "mssql", "odbc")


def _check_sqlite_file(url: str) -> None:
    """A SQLite source is opened read-only, so its file must exist: say so at ``source
    add`` instead of at the first job."""
    from sqlalchemy.engine import make_url

    try:
        path = make_url(url).database or ""
    except Exception as exc:
        raise InvalidInput(f"{redact_url(url)!r} is not a SQLite URL (sqlite:////absolute/path.db)") from exc
    if not path or path == ":memory:":
        raise InvalidInput("a sqlite source needs a file path: sqlite:////absolute/path.db")
    if not os.path.isfile(path):
        # A warning, not a refusal: the file may be made later, or be readable only by the
        # service's account (like the privilege note, what is found is said, not enforced).
        print(f"warning: no SQLite database file at {path} (yet): the agent opens it read-only and "
              "never creates it, so jobs fail until it exists; check the path "
              "(sqlite:////absolute/path.db has four slashes)", file=sys.stderr)  # fmt: skip


def _privilege_note(source_cfg: SourceConfig, box: SecretBox, *, when_unreachable: bool) -> dict[str, Any] | None:
    """Say plainly when the source's account is privileged (a warning, never a failure);
    the finding as a dict for ``--json``, or None when it could not be checked."""
    from .sources.privilege import account_finding

    finding, problem = account_finding(source_cfg, box)
    if finding is not None and finding.privileged:
        print(finding.warning(), file=sys.stderr)
    elif problem and when_unreachable:
        print(f"note: could not check whether the account is privileged ({problem}); "
              f"'mini-connector source test {source_cfg.name}' checks it later", file=sys.stderr)  # fmt: skip
    if finding is None:
        return None
    return {"privileged": finding.privileged, "account": finding.account, "reasons": finding.reasons,
            "readerSql": finding.reader_sql if finding.privileged else None}  # fmt: skip


def cmd_source_list(args: argparse.Namespace, paths: StatePaths) -> int:
    cfg = load_config(paths.config)
    rows = [
        {"name": s.name, "type": s.type, "url": s.url, "password": "stored" if s.password_enc else None,
         "options": s.options}
        for s in cfg.sources.values()
    ]  # fmt: skip
    if args.json:
        print(orjson.dumps(rows).decode())
        return EXIT_OK
    if not rows:
        print("no sources configured; add one with 'mini-connector source add'")
        return EXIT_OK
    for r in rows:
        extra = " (password stored encrypted)" if r["password"] else ""
        print(f"{r['name']:<20} {r['type']:<9} {r['url']}{extra}")
    return EXIT_OK


def cmd_source_remove(args: argparse.Namespace, paths: StatePaths) -> int:
    cfg = load_config(paths.config)
    if args.name not in cfg.sources:
        raise CliError(f"there is no source named {args.name[:100]!r}.", EXIT_CONFIG)
    del cfg.sources[args.name]
    save_config(paths.config, cfg)
    print(f"source {args.name!r} removed")
    _restart_note(paths)
    return EXIT_OK


def _restart_note(paths: StatePaths) -> None:
    """A running agent reloads its sources when the config changes (agent/app.py): say
    when it will, since the change is not in use the moment the command returns."""
    from .status import read_status

    st = read_status(paths.status_file)
    if st["running"]:
        print(f"note: the running agent (pid {st.get('pid')}) picks this up within a few seconds; "
              "'mini-connector status' shows the sources it uses", file=sys.stderr)  # fmt: skip


def cmd_source_test(args: argparse.Namespace, paths: StatePaths) -> int:
    from .sources.configured import SourceSet

    cfg = load_config(paths.config)
    if args.name not in cfg.sources:
        raise CliError(f"there is no source named {args.name[:100]!r}.", EXIT_CONFIG)
    sources = SourceSet(cfg.sources, SecretBox(paths.secret_key), pool_size=1)
    try:
        result: dict[str, Any] = sources.get(args.name).test()
    except JobError as exc:
        if args.json:
            print(orjson.dumps({"connected": False, "error": exc.to_dict()}).decode())
        _err(f"source {args.name!r} failed its test: {exc.code}: {exc.message}")
        return EXIT_SOURCE
    finally:
        sources.close()
    if cfg.sources[args.name].type in PRIVILEGE_TYPES:
        account = _privilege_note(cfg.sources[args.name], SecretBox(paths.secret_key), when_unreachable=False)
        if account is not None:
            result = {**result, "account": account}
    if args.json:
        print(orjson.dumps(result).decode())
    else:
        for k in ("connected", "latencyMs", "serverVersion", "tablesFound"):
            print(f"{k}: {str(result[k]).lower() if isinstance(result[k], bool) else result[k]}")
        if "account" in result:
            print(f"privileged: {str(result['account']['privileged']).lower()} ({result['account']['account']})")
    return EXIT_OK


# ---------------------------------------------------------------- run, status


def cmd_run(args: argparse.Namespace, paths: StatePaths) -> int:
    import logging

    from shared.fdlimit import raise_nofile

    from .app import run_agent
    from .logs import setup_logging

    raise_nofile()  # jobs, sources and sockets: never short of descriptors
    cfg = load_config(paths.config)
    if not cfg.relay_url:
        raise ConfigError("the agent config has no relay URL: run 'mini-connector configure'")
    ship = setup_logging(paths.log_file, level=getattr(logging, args.log_level))
    reason = asyncio.run(run_agent(cfg, paths, ship=ship))
    if reason == "SESSION_REPLACED":
        _err("another agent using this connector's key took over the session; stopped.")
        return EXIT_REPLACED
    return EXIT_OK


def _when(ts: Any) -> str:
    if not isinstance(ts, (int, float)):
        return "never"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _sources_changed_note(running: list[dict[str, Any]], configured: list[dict[str, Any]]) -> str | None:
    """What the config says that the running agent does not use (yet: it reloads its
    sources within seconds of a change)."""
    have = {(s.get("name"), s.get("type")) for s in running}
    want = {(s.get("name"), s.get("type")) for s in configured}
    if have == want:
        return None
    added = sorted(str(n) for n, _ in want - have)
    removed = sorted(str(n) for n, _ in have - want)
    parts = ([f"added or changed {', '.join(added)}"] if added else []) + (
        [f"removed {', '.join(removed)}"] if removed else [])  # fmt: skip
    return (f"note:           the config differs from what the agent uses ({'; '.join(parts)}): "
            "it reloads within seconds; if this stays, see its log (a config it cannot read is kept out)")


def cmd_status(args: argparse.Namespace, paths: StatePaths) -> int:
    from .status import read_status

    cfg = load_config(paths.config)
    st = read_status(paths.status_file)
    configured = [s.public() for s in cfg.sources.values()]
    running_sources = st.get("sources") if isinstance(st.get("sources"), list) else configured
    if args.json:
        out = {
            "running": st["running"],
            "state": st["state"] if st["running"] else "not running",
            "relayUrl": st.get("relayUrl", cfg.relay_url),
            "relayUrls": cfg.all_relay_urls(),
            "connectorId": st.get("connectorId"),
            "lastHeartbeat": st.get("lastHeartbeat"),
            "activeJobs": st.get("activeJobs", []) if st["running"] else [],
            "sources": running_sources if st["running"] else configured,
            "configSources": configured,
            "lastError": st.get("lastError") if st["running"] else None,
            "pid": st.get("pid") if st["running"] else None,
            **({"statusProblem": st["statusProblem"]} if st.get("statusProblem") else {}),
        }
        print(orjson.dumps(out).decode())
        return EXIT_OK if st["running"] else EXIT_NOT_RUNNING
    if not st["running"]:
        _print_escaped(f"the agent is not running (config {paths.config}, relay {cfg.relay_url or 'not set'})")
        if st.get("statusProblem"):
            _print_escaped(f"note:           {st['statusProblem']}")
        return EXIT_NOT_RUNNING
    _status_lines(st, cfg, running_sources, configured)
    return EXIT_OK


def _status_lines(st: dict[str, Any], cfg: Any, running_sources: Any,
                  configured: list[dict[str, Any]]) -> None:  # fmt: skip
    # Job ids, source names and the connector id come from the relay or the status file:
    # a control character in one (an escape sequence) is shown escaped, never obeyed.
    _print_escaped(f"state:          {st.get('state')}")
    if st.get("state") != "connected" and st.get("lastError"):
        _print_escaped(f"why:            {st['lastError']}")
    _print_escaped(f"relay:          {st.get('relayUrl', cfg.relay_url)}")
    if len(cfg.all_relay_urls()) > 1:
        _print_escaped(f"relays:         {', '.join(cfg.all_relay_urls())} (tried in turn)")
    _print_escaped(f"connector id:   {st.get('connectorId') or 'unknown (not welcomed yet)'}")
    _print_escaped(f"last heartbeat: {_when(st.get('lastHeartbeat'))}")
    jobs = st.get("activeJobs") or []
    _print_escaped(f"active jobs:    {len(jobs)}")
    for j in jobs:
        _print_escaped(f"  {j.get('jobId')} {j.get('operation')} on {j.get('source')} ({j.get('state')}, {j.get('rows')} rows)")
    names = ", ".join(f"{s['name']} ({s['type']})" for s in running_sources) or "none"
    _print_escaped(f"sources:        {names}")
    note = _sources_changed_note(running_sources, configured)
    if note:
        _print_escaped(note)
    _print_escaped(f"pid:            {st.get('pid')}")


def _print_escaped(text: str) -> None:
    sys.stdout.write(CONTROL_CHARS.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text) + "\n")


if __name__ == "__main__":
    sys.exit(main())
