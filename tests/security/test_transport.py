"""Transport through real processes: the relay serving TLS itself, the agent trusting it by
``--ca-file`` and pinning it with ``--pin-sha256`` (a wrong pin refused before the API key
is sent), a real HTTP proxy (tinyproxy with BasicAuth) by ``--proxy`` and by
``HTTPS_PROXY``/``NO_PROXY``, and plain ``ws://`` off localhost refused at run time."""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import ssl
import subprocess
import tomllib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.link.transport import spki_sha256
from tests.fakes.tls import TlsFiles, make_tls
from tests.harness import Agent, Proc, Relay, Source, Stack, command, scaled, wait_until
from tests.system import dataset

pytestmark = pytest.mark.system
_HTTPS = re.compile(r"listening on (https://127\.0\.0\.1:(\d+))")


@dataclass
class TlsEnv:
    stack: Stack
    tls: TlsFiles
    pin: str
    port: int
    sqlite: Path

    def agent(self, name: str, *flags: str, env: dict[str, str] | None = None,
              wait_online: bool = True) -> Agent:  # fmt: skip
        agent = self.stack.add_agent(name, [Source("erp", "sqlite", f"sqlite:///{self.sqlite}")], start=False)
        agent.env.pop("SSL_CERT_FILE", None)
        agent.env.update(env or {})
        agent.cli("configure", "--relay-url", f"wss://127.0.0.1:{self.port}", "--api-key", agent.api_key,
                  *flags)  # fmt: skip
        return self.stack.start_agent(agent, wait_online=wait_online)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tls_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsEnv]:
    work = tmp_path_factory.mktemp("tls")
    tls = make_tls(work)
    sqlite = work / "erp.db"
    dataset.create_sqlite(sqlite)
    stack = Stack(work / "stack", tenant="tls", heartbeat=1.0)
    env = stack._env()
    env.update({"MC_RELAY_JWT_SECRET": "tls-test-secret-" + "x" * 20, "MC_RELAY_HEARTBEAT_INTERVAL": "1"})
    argv = [*command("mini-relay"), "serve", "--dev", "--host", "127.0.0.1", "--port", "0",
            "--database-url", f"sqlite:///{stack.workdir}/relay.db",
            "--tls-cert", str(tls.cert), "--tls-key", str(tls.key)]  # fmt: skip
    proc = Proc("mini-relay-tls", argv, env, stack.workdir / "relay.log")
    stack.procs.append(proc)
    # The platform client (urllib) trusts the test certificate for this module only.
    ctx = ssl.create_default_context(cafile=str(tls.cert))
    urllib.request.install_opener(urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx)))
    try:
        m = proc.wait_for_line(_HTTPS, 30)
        stack.relay = Relay(proc, m.group(1), int(m.group(2)), env)
        stack.api = stack.relay.platform_api(stack.tenant)
        der = ssl.PEM_cert_to_DER_cert(tls.cert.read_text())
        yield TlsEnv(stack, tls, spki_sha256(der), int(m.group(2)), sqlite)
    finally:
        urllib.request.install_opener(None)  # type: ignore[arg-type]
        stack.close()


def _said(agent: Agent, text: str, timeout: float = 15) -> str:
    assert agent.proc is not None
    return wait_until(lambda: next((line for line in list(agent.proc.lines) if text in line), None),
                      timeout, interval=0.1, what=f"agent output {text!r}")  # fmt: skip


def test_relay_serves_tls_and_agent_trusts_ca_file_and_pin(tls_env: TlsEnv) -> None:
    """mini-relay serve --tls-cert/--tls-key; the agent with --ca-file and the right pin
    connects over wss:// and runs a job."""
    agent = tls_env.agent("tls-pinned", "--ca-file", str(tls_env.tls.cert), "--pin-sha256", tls_env.pin)
    assert tls_env.stack.api is not None
    _, rows = tls_env.stack.api.run_job(agent.connector_id, "erp", sql="SELECT count(*) AS n FROM items")
    assert rows == [{"n": dataset.ROWS}]
    cfg = tomllib.loads(agent.config.read_text())
    assert cfg["transport"]["pin_sha256"] == [tls_env.pin]
    agent.proc.stop()  # type: ignore[union-attr]


def test_wrong_pin_is_refused_with_a_clear_message(tls_env: TlsEnv) -> None:
    """A certificate whose key is not pinned is refused before the HTTP upgrade: the agent
    says why and the connector never comes online."""
    wrong = base64.b64encode(b"\x00" * 32).decode()
    agent = tls_env.agent("tls-wrong-pin", "--ca-file", str(tls_env.tls.cert), "--pin-sha256", wrong,
                          wait_online=False)
    line = _said(agent, "does not match the configured --pin-sha256")
    assert tls_env.pin in line and "refusing to send the API key" in line
    assert tls_env.stack.api is not None
    assert tls_env.stack.api.connector(agent.connector_id)["status"] == "pending"
    agent.proc.stop()  # type: ignore[union-attr]


def test_untrusted_certificate_is_refused_without_ca_file(tls_env: TlsEnv) -> None:
    """System CAs do not trust a self-signed relay: the agent says the certificate failed."""
    agent = tls_env.agent("tls-no-ca", wait_online=False)
    _said(agent, "CERTIFICATE_VERIFY_FAILED")
    assert tls_env.stack.api is not None
    assert tls_env.stack.api.connector(agent.connector_id)["status"] == "pending"
    agent.proc.stop()  # type: ignore[union-attr]


@dataclass
class Tinyproxy:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def connects(self) -> int:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return len(re.findall(r"Request \(file descriptor \d+\): CONNECT 127\.0\.0\.1:", text))


@pytest.fixture(scope="module")
def tinyproxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tinyproxy]:
    binary = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"
    if not os.path.exists(binary):
        pytest.fail("tinyproxy is not installed (apt-get install tinyproxy; .ci/run installs it)")
    work = tmp_path_factory.mktemp("proxy")
    port = _free_port()
    log = work / "tinyproxy.log"
    conf = work / "tinyproxy.conf"
    conf.write_text(
        f'Port {port}\nListen 127.0.0.1\nTimeout 600\nLogFile "{log}"\nLogLevel Connect\n'
        f'PidFile "{work}/tinyproxy.pid"\nMaxClients 50\nAllow 127.0.0.1\n'
        "BasicAuth proxyuser proxy-s3cret\nDisableViaHeader Yes\n"
    )
    os.chmod(work, 0o777)  # tinyproxy may drop to 'nobody' when started as root
    proc = subprocess.Popen([binary, "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip

    def listening() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except OSError:
            return False
        return True

    try:
        wait_until(listening, 10, what="tinyproxy listening")
        yield Tinyproxy(proc, port, log)
    finally:
        proc.terminate()
        proc.wait(timeout=scaled(10))


def test_agent_through_tinyproxy_with_basic_auth(tls_env: TlsEnv, tinyproxy: Tinyproxy) -> None:
    """--proxy http://user:password@host:port: the agent tunnels wss:// through CONNECT with
    Proxy-Authorization; the password is stored encrypted, not in the config."""
    before = tinyproxy.connects()
    url = f"http://proxyuser:proxy-s3cret@127.0.0.1:{tinyproxy.port}"
    agent = tls_env.agent("via-proxy", "--ca-file", str(tls_env.tls.cert), "--pin-sha256", tls_env.pin,
                          "--proxy", url, env={"NO_PROXY": "", "no_proxy": ""})
    assert tinyproxy.connects() > before
    text = agent.config.read_text()
    assert "proxy-s3cret" not in text and f"127.0.0.1:{tinyproxy.port}" in text
    agent.proc.stop()  # type: ignore[union-attr]


def test_agent_through_https_proxy_env_and_no_proxy(tls_env: TlsEnv, tinyproxy: Tinyproxy) -> None:
    """HTTPS_PROXY (with credentials) is honoured; NO_PROXY naming the relay bypasses even a
    dead proxy."""
    before = tinyproxy.connects()
    env = {"HTTPS_PROXY": f"http://proxyuser:proxy-s3cret@127.0.0.1:{tinyproxy.port}", "NO_PROXY": "",
           "no_proxy": "", "https_proxy": ""}  # fmt: skip
    env["https_proxy"] = env["HTTPS_PROXY"]
    agent = tls_env.agent("env-proxy", "--ca-file", str(tls_env.tls.cert), env=env)
    assert tinyproxy.connects() > before
    agent.proc.stop()  # type: ignore[union-attr]
    dead = f"http://127.0.0.1:{_free_port()}"
    bypass = {"HTTPS_PROXY": dead, "https_proxy": dead, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    agent = tls_env.agent("no-proxy", "--ca-file", str(tls_env.tls.cert), env=bypass)
    agent.proc.stop()  # type: ignore[union-attr]


def test_wrong_proxy_password_is_reported(tls_env: TlsEnv, tinyproxy: Tinyproxy) -> None:
    """A proxy that refuses the credentials leaves the agent offline and saying so
    (tinyproxy answers 401 to a CONNECT with bad BasicAuth; others say 407)."""
    url = f"http://proxyuser:wrong@127.0.0.1:{tinyproxy.port}"
    agent = tls_env.agent("bad-proxy", "--ca-file", str(tls_env.tls.cert), "--proxy", url,
                          env={"NO_PROXY": "", "no_proxy": ""}, wait_online=False)
    _said(agent, "proxy rejected connection")
    assert tls_env.stack.api is not None
    assert tls_env.stack.api.connector(agent.connector_id)["status"] == "pending"
    agent.proc.stop()  # type: ignore[union-attr]


def test_diagnose_blames_the_proxy_password_not_connect_rules(tls_env: TlsEnv, tinyproxy: Tinyproxy) -> None:
    """tinyproxy answers a CONNECT with bad BasicAuth with 401, not 407: diagnose must
    still say the credentials were refused (it used to send the admin to the CONNECT rules)."""
    url = f"http://proxyuser:wrong@127.0.0.1:{tinyproxy.port}"
    agent = tls_env.agent("diag-bad-proxy", "--ca-file", str(tls_env.tls.cert), "--proxy", url,
                          env={"NO_PROXY": "", "no_proxy": ""}, wait_online=False)  # fmt: skip
    agent.proc.stop()  # type: ignore[union-attr]
    done = subprocess.run([*command("mini-connector"), "--config", str(agent.config), "diagnose"],
                          env=agent.env, capture_output=True, text=True, timeout=scaled(60))  # fmt: skip
    assert done.returncode != 0
    proxy_line = next(line for line in done.stdout.splitlines() if "proxy" in line.lower())
    assert "refused the user name or password" in done.stdout, done.stdout
    assert "allow CONNECT" not in done.stdout and "wrong" not in done.stdout  # no password shown
    assert "HTTP 401" in proxy_line or "HTTP 401" in done.stdout


def test_plain_ws_off_localhost_is_refused_at_run(tls_env: TlsEnv) -> None:
    """A config naming ws:// to another host without allow_insecure is refused by run too."""
    agent = tls_env.stack.add_agent("insecure", [], start=False)
    agent.cli("configure", "--relay-url", "ws://relay.example.invalid", "--api-key", agent.api_key,
              "--allow-insecure")  # fmt: skip
    agent.config.write_text(agent.config.read_text().replace("allow_insecure = true\n", ""))
    done = subprocess.run([*command("mini-connector"), "--config", str(agent.config), "run"],
                          env=agent.env, capture_output=True, text=True, timeout=scaled(30))  # fmt: skip
    assert done.returncode == 2, done
    assert "plain ws:// is only allowed to localhost" in done.stderr


@pytest.mark.parametrize("flag", ['"false"', '"no"', "0", '""'])
def test_allow_insecure_must_be_a_toml_boolean(tls_env: TlsEnv, flag: str) -> None:
    """A hand edit writing allow_insecure = "false" (a string) turned plain ws:// to another
    host on (bool("false") is True). Now anything but true or false is a config error."""
    agent = tls_env.stack.add_agent("insecure-flag", [], start=False)
    agent.cli("configure", "--relay-url", "ws://relay.example.invalid", "--api-key", agent.api_key,
              "--allow-insecure")  # fmt: skip
    agent.config.write_text(agent.config.read_text().replace("allow_insecure = true", f"allow_insecure = {flag}"))
    done = subprocess.run([*command("mini-connector"), "--config", str(agent.config), "run"],
                          env=agent.env, capture_output=True, text=True, timeout=scaled(30))  # fmt: skip
    assert done.returncode == 3, done  # EXIT_CONFIG
    assert "allow_insecure" in done.stderr and "true or false" in done.stderr and "Traceback" not in done.stderr
