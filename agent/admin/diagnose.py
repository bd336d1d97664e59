"""``mini-connector diagnose``: run the checks in order, one line each, fix included.

Order: config, DNS, proxy, TCP, TLS, API key, clock. A check that cannot mean anything
after an earlier failure is shown as ``skip`` with the reason, so the first ``FAIL`` is
the one to fix. Any ``fail`` makes the exit code ``EXIT_CHECK_FAILED``. Lines are printed
as each check finishes (the network ones can take up to ``--timeout`` each).
``--bundle FILE.zip`` also writes a support bundle (``agent.admin.bundle``) with the results.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import orjson

from shared.errors import KeyFormatError
from shared.keys import key_prefix, validate_key

from ..config import (
    ConfigError,
    InvalidInput,
    SecretBox,
    agent_endpoint,
    api_key,
    load_config,
    normalise_relay_url,
)
from ..link.transport import Transport, connect_options
from ..paths import StatePaths
from .errors import EXIT_CHECK_FAILED
from .netchecks import (
    FAIL,
    OK,
    SKIP,
    WARN,
    Check,
    Target,
    check_auth,
    check_clock,
    check_dns,
    check_proxy,
    check_tcp,
    check_tls,
    format_check,
    proxy_for,
)

Report = Callable[[Check], None]


def run_checks(
    paths: StatePaths, *, timeout: float, env: Mapping[str, str] | None = None,
    report: Report | None = None,
) -> list[Check]:  # fmt: skip
    """Every check, in order; ``report`` sees each one as soon as it is done."""
    env = os.environ if env is None else env
    out: list[Check] = []

    def add(check: Check) -> Check:
        out.append(check)
        if report is not None:
            report(check)
        return check

    def skip_rest(names: tuple[str, ...], why: str) -> list[Check]:
        for name in names:
            add(Check(name, SKIP, why))
        return out

    try:
        cfg = load_config(paths.config)
        if not cfg.relay_url:
            raise ConfigError("the agent config has no relay URL")
        for url in cfg.all_relay_urls():  # what 'run' refuses, diagnose does not pass
            normalise_relay_url(url, allow_insecure=cfg.allow_insecure)
        box = SecretBox(paths.secret_key)
        key = validate_key(api_key(cfg, box, env))
        transport = Transport.from_config(cfg)
        explicit_proxy = transport.proxy_url(box)
        options = connect_options(agent_endpoint(cfg.relay_url), transport, box)
    except (ConfigError, KeyFormatError, InvalidInput, OSError) as exc:
        add(_config_failed(exc, paths))
        return skip_rest(("dns", "proxy", "tcp", "tls", "auth", "clock"), "needs a readable config")
    shown = key_prefix(key) + "…"
    target = Target.parse(agent_endpoint(cfg.relay_url))
    add(Check("config", OK, f"relay {cfg.relay_url}, API key {shown}, config {paths.config}"))

    proxy, explained = proxy_for(target, env, explicit_proxy)
    if explicit_proxy and proxy is None:
        options["proxy"] = None  # bypassed by NO_PROXY, as the agent does
    if proxy is None:
        dns, _ = check_dns(target.host, target.port, timeout)
    else:
        p = urlsplit(proxy)
        dns, _ = check_dns(p.hostname or "", p.port or 8080, timeout, what="the proxy")
        if dns.status == OK:
            dns.detail += f" (the proxy resolves {target.host})"
    if add(dns).status == FAIL:
        return skip_rest(("proxy", "tcp", "tls", "auth", "clock"), "needs DNS")
    if add(check_proxy(proxy, explained, target, timeout)).status == FAIL:
        return skip_rest(("tcp", "tls", "auth", "clock"), "needs the proxy")
    if proxy is None:
        tcp = check_tcp(target.host, target.port, timeout)
    else:
        p = urlsplit(proxy)
        tcp = check_tcp(p.hostname or "", p.port or 8080, timeout, what="the proxy")
    if add(tcp).status == FAIL:
        return skip_rest(("tls", "auth", "clock"), "needs a TCP connection")
    tls = check_tls(target, proxy, timeout, ca_file=transport.ca_file, pins=transport.pins)
    if add(tls).status == FAIL:
        return skip_rest(("auth", "clock"), "needs a trusted TLS connection")
    add(check_auth(target.url, key, shown, timeout, options))
    add(check_clock(target, timeout, proxy=proxy, ca_file=transport.ca_file))
    return out


def _config_failed(exc: Exception, paths: StatePaths) -> Check:
    """The config line for a config that does not load. Writing it again with
    ``configure`` fixes a missing or incomplete config, not one that is there but cannot
    be read (``configure`` cannot read it either): those errors name their own fix."""
    configure = f"run 'mini-connector configure --relay-url URL --api-key KEY' (config {paths.config})"
    if isinstance(exc, KeyFormatError):
        return Check("config", FAIL, exc.message.rstrip("."), configure)
    if isinstance(exc, ConfigError):
        return Check("config", FAIL, exc.brief.rstrip("."), exc.fix or configure)
    if isinstance(exc, OSError):  # a state file beside the config (secret.key)
        where = exc.filename or paths.config.parent
        if isinstance(exc, PermissionError):
            return Check("config", FAIL, f"cannot read {where}: {exc.strerror or exc}",
                         f"run the command as the user the agent runs as (or with sudo), or let that user read {where}")  # fmt: skip
        return Check("config", FAIL, f"cannot read {where}: {exc.strerror or exc}", f"check {where} and the disk it is on")
    return Check("config", FAIL, str(exc).rstrip("."), configure)


def account_checks(paths: StatePaths, *, report: Report | None = None) -> list[Check]:
    """One ``account`` line per SQL source: WARN when its account is privileged (with the
    SQL for a least-privilege reader as the fix), never FAIL (the exit code is the relay's)."""
    from ..sources.privilege import account_finding

    try:
        cfg = load_config(paths.config)
        box = SecretBox(paths.secret_key)
    except ConfigError:
        return []
    out: list[Check] = []
    for name, source in cfg.sources.items():
        if source.type not in ("postgres", "mysql", "mssql", "odbc"):
            continue
        finding, problem = account_finding(source, box)
        if finding is None:
            check = Check("account", WARN if problem else SKIP,
                          f"source {name}: " + (f"could not check its account ({problem})" if problem
                                                else "no account to check"))  # fmt: skip
        elif finding.privileged:
            check = Check("account", WARN, f"source {name}: {finding.summary}",
                          "use a least-privilege reader for this source:\n" + finding.reader_sql)  # fmt: skip
        else:
            check = Check("account", OK, f"source {name}: account {finding.account} is not privileged")
        out.append(check)
        if report is not None:
            report(check)
    return out


def summary(checks: list[Check]) -> str:
    failed = [c.name for c in checks if c.status == FAIL]
    if failed:
        return f"{len(failed)} check{'s' if len(failed) > 1 else ''} failed: {', '.join(failed)}"
    return f"all checks passed ({sum(c.status == OK for c in checks)} ok)"


def cmd_diagnose(args: argparse.Namespace, paths: StatePaths) -> int:
    timeout = max(0.5, min(float(args.timeout), 120.0))

    def show(check: Check) -> None:
        print(format_check(check), flush=True)

    checks = run_checks(paths, timeout=timeout, report=None if args.json else show)
    checks += account_checks(paths, report=None if args.json else show)
    failed = any(c.status == FAIL for c in checks)
    result: dict[str, Any] = {"ok": not failed, "checks": [c.as_dict() for c in checks]}
    if args.bundle:
        from .bundle import write_bundle

        written = write_bundle(args.bundle, paths, checks)
        result["bundle"] = str(written)
        if not args.json:
            print(f"support bundle written to {written}: logs, config without secrets, "
                  "versions and system facts; it holds no API key, password or key file")  # fmt: skip
    if args.json:
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
    else:
        print(summary(checks))
    return EXIT_CHECK_FAILED if failed else 0
