"""``mini-connector diagnose`` against a real relay process: each check's line and fix."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.admin.netchecks import Target, proxy_for
from shared.keys import generate_key
from tests.fakes.tls import make_tls
from tests.harness import Stack, command, run_cli
from tests.ops.conftest import run_agent_cli

EXIT_CHECK_FAILED = 8


def _line(out: str, name: str) -> str:
    return next(ln for ln in out.splitlines() if ln.split()[1:2] == [name])


def _configure(tmp: Path, relay_url: str, key: str, env: dict[str, str]) -> Path:
    config = tmp / "agent.toml"
    run_cli([*command("mini-connector"), "--config", str(config), "configure",
             "--relay-url", relay_url, "--api-key", key], env=env)  # fmt: skip
    return config


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.pop("MC_AGENT_API_KEY", None)
    env.update(extra)
    return env


def test_all_checks_pass_for_a_good_key(ops_stack: Stack) -> None:
    """With a registered key and a live relay every check is ok and the exit code is 0."""
    agent = ops_stack.add_agent("diag-good", [], start=False)
    r = run_agent_cli(agent.config, "diagnose", env=_clean_env(HOME=agent.env["HOME"]))
    assert r.code == 0, r.out + r.err
    for name in ("config", "dns", "proxy", "tcp", "auth", "clock"):
        assert _line(r.out, name).startswith("OK "), r.out
    assert _line(r.out, "tls").startswith("SKIP"), r.out  # ws:// to localhost
    assert "all checks passed" in r.out
    assert agent.api_key not in r.out + r.err


def test_revoked_key_fails_with_the_api_key_fix(ops_stack: Stack) -> None:
    """A revoked key is refused with 401 and the line says how to get and set a new key."""
    assert ops_stack.api is not None
    agent = ops_stack.add_agent("diag-revoked", [], start=False)
    ops_stack.api.delete_connector(agent.connector_id)
    r = run_agent_cli(agent.config, "diagnose", env=_clean_env())
    assert r.code == EXIT_CHECK_FAILED, r.out + r.err
    auth = _line(r.out, "auth")
    assert auth.startswith("FAIL") and "HTTP 401" in auth, r.out
    assert "rotate-key" in auth and "configure" in auth and "--api-key NEW" in auth
    # rotate-key answers 409 for a revoked connector: the fix names the way that works
    assert "a revoked connector gets no new key" in auth and "POST /connectors)" in auth
    assert _line(r.out, "tcp").startswith("OK")
    assert "1 check failed: auth" in r.out
    assert agent.api_key not in r.out + r.err


def test_unknown_key_fails_auth(ops_stack: Stack, tmp_path: Path) -> None:
    """A well-formed key the relay never issued is refused the same way."""
    assert ops_stack.relay is not None
    env = _clean_env()
    config = _configure(tmp_path, ops_stack.relay.ws_url, generate_key(), env)
    r = run_agent_cli(config, "diagnose", "--json", env=env)
    assert r.code == EXIT_CHECK_FAILED
    import json

    result = json.loads(r.out)
    by_name = {c["name"]: c for c in result["checks"]}
    assert result["ok"] is False and by_name["auth"]["status"] == "fail"
    assert "--api-key NEW" in by_name["auth"]["fix"]


def test_closed_port_fails_tcp_and_skips_the_rest(tmp_path: Path) -> None:
    """Nothing listening on the relay's port: the tcp line says refused, later checks skip."""
    port = _closed_port()
    env = _clean_env()
    config = _configure(tmp_path, f"ws://127.0.0.1:{port}", generate_key(), env)
    r = run_agent_cli(config, "diagnose", "--timeout", "2", env=env)
    assert r.code == EXIT_CHECK_FAILED, r.out + r.err
    tcp = _line(r.out, "tcp")
    assert tcp.startswith("FAIL") and f"127.0.0.1:{port}" in tcp and "connection refused" in tcp
    assert "Fix: check that the relay runs" in tcp and "firewall" in tcp
    for name in ("tls", "auth", "clock"):
        assert _line(r.out, name).startswith("SKIP")


def test_missing_config_is_a_failed_check(tmp_path: Path) -> None:
    """No config: the config line fails with the configure command as the fix."""
    r = run_agent_cli(tmp_path / "none.toml", "diagnose", env=_clean_env())
    assert r.code == EXIT_CHECK_FAILED
    assert _line(r.out, "config").startswith("FAIL") and "mini-connector configure" in r.out


def test_unreachable_proxy_fails_the_proxy_check(tmp_path: Path) -> None:
    """HTTPS_PROXY pointing at nothing: the proxy line fails and names HTTPS_PROXY."""
    port = _closed_port()
    env = _clean_env()
    config = _configure(tmp_path, "wss://relay.invalid", generate_key(), env)
    env["HTTPS_PROXY"] = f"http://user:pw-secret@127.0.0.1:{port}"
    r = run_agent_cli(config, "diagnose", "--timeout", "2", env=env)
    assert r.code == EXIT_CHECK_FAILED
    proxy = _line(r.out, "proxy")
    assert proxy.startswith("FAIL") and "HTTPS_PROXY" in proxy
    assert "pw-secret" not in r.out


def test_no_proxy_and_scheme_choose_like_the_agent() -> None:
    """NO_PROXY bypasses; wss:// uses HTTPS_PROXY; ws:// also honours HTTP_PROXY."""
    wss = Target.parse("wss://relay.example.com/api/v1/agent/connect")
    ws = Target.parse("ws://relay.example.com/api/v1/agent/connect")
    assert proxy_for(wss, {})[0] is None
    assert proxy_for(wss, {"HTTPS_PROXY": "http://p:3128"})[0] == "http://p:3128"
    assert proxy_for(wss, {"HTTP_PROXY": "http://p:3128"})[0] is None
    assert proxy_for(ws, {"HTTP_PROXY": "http://p:3128"})[0] == "http://p:3128"
    assert proxy_for(wss, {"HTTPS_PROXY": "http://p:3128", "NO_PROXY": ".example.com"})[0] is None


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A TLS listener with a self-signed localhost certificate that answers nothing."""
    files = make_tls(tmp_path)
    ctx = files.server_context()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1024)
            except (OSError, ssl.SSLError):
                pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield sock.getsockname()[1], files.cert
    stop.set()
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)  # wakes the accept (close alone does not, on Linux)
    sock.close()
    t.join(timeout=5)
    assert not t.is_alive()


def test_untrusted_certificate_fails_tls_with_the_ca_fix(tls_server: tuple[int, Path], tmp_path: Path) -> None:
    """A certificate no system CA signed: the tls line fails and says how to trust the CA."""
    port, cert = tls_server
    env = _clean_env()
    config = _configure(tmp_path, f"wss://localhost:{port}", generate_key(), env)
    r = run_agent_cli(config, "diagnose", "--timeout", "3", env=env)
    tls = _line(r.out, "tls")
    assert r.code == EXIT_CHECK_FAILED and tls.startswith("FAIL"), r.out
    assert "SSL_CERT_FILE" in tls and "update-ca-certificates" in tls

    trusted = run_agent_cli(config, "diagnose", "--timeout", "3", env={**env, "SSL_CERT_FILE": str(cert)})
    line = _line(trusted.out, "tls")
    # verified; the fake certificate lives about a day, so "expires soon" may be a warning
    assert line.split()[0] in ("OK", "WARN") and "verified" in line and "valid until" in line, trusted.out


def test_configured_ca_file_and_pin_are_checked(tls_server: tuple[int, Path], tmp_path: Path) -> None:
    """--ca-file makes the chain trusted; a wrong --pin-sha256 fails tls, the right one matches."""
    from agent.link.transport import spki_sha256

    port, cert = tls_server
    env = _clean_env()
    config = _configure(tmp_path, f"wss://localhost:{port}", generate_key(), env)
    right = spki_sha256(ssl.PEM_cert_to_DER_cert(cert.read_text()))
    wrong = "A" * 43 + "="
    run_cli([*command("mini-connector"), "--config", str(config), "configure", "--relay-url",
             f"wss://localhost:{port}", "--api-key", generate_key(), "--ca-file", str(cert),
             "--pin-sha256", wrong], env=env)  # fmt: skip
    r = run_agent_cli(config, "diagnose", "--timeout", "3", env=env)
    tls = _line(r.out, "tls")
    assert tls.startswith("FAIL") and "does not match the configured --pin-sha256" in tls, r.out
    assert right in tls
    run_cli([*command("mini-connector"), "--config", str(config), "configure", "--relay-url",
             f"wss://localhost:{port}", "--api-key", generate_key(), "--pin-sha256", right], env=env)  # fmt: skip
    ok = _line(run_agent_cli(config, "diagnose", "--timeout", "3", env=env).out, "tls")
    assert ok.split()[0] in ("OK", "WARN") and f"the CA file {cert}" in ok and "pin matches" in ok, ok


def test_a_hand_edited_relay_url_that_run_refuses_fails_the_config_check(tmp_path: Path) -> None:
    """What ``run`` refuses (a relay URL that is not one) is a config FAIL, not an OK line
    followed by a DNS lookup of an empty host name."""
    env = _clean_env(HOME=str(tmp_path))
    config = _configure(tmp_path, "ws://127.0.0.1:9", generate_key(), env)
    config.write_text(config.read_text().replace('"ws://127.0.0.1:9"', '"not a url"'))
    r = run_agent_cli(config, "diagnose", env=env)
    assert r.code == EXIT_CHECK_FAILED, r.out + r.err
    assert _line(r.out, "config").startswith("FAIL") and "must look like wss://" in r.out, r.out
    assert _line(r.out, "dns").startswith("SKIP"), r.out
