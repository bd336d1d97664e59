"""Drive real ``mini-relay`` and ``mini-connector`` processes: for system tests, the demo, benches.

Everything goes through the console scripts and the HTTP API, exactly as a user would:
``mini-relay serve`` as a subprocess (its port read from its one "listening on" line),
``mini-relay token`` for platform tokens, ``POST /connectors`` to register, and
``mini-connector configure`` / ``source add`` / ``run`` for the agent. Process output is
kept in log files so a failure can show it. Waiting is always a polled condition with a
deadline (``wait_until``), scaled by ``MC_TEST_TIMEOUT_FACTOR``; never a bare sleep.
No pytest import: the demo uses this module too.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

TIMEOUT_FACTOR = float(os.environ.get("MC_TEST_TIMEOUT_FACTOR", "1") or 1)
BIN = Path(sys.executable).parent
FINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled", "timed_out", "expired"})
_LISTENING = re.compile(r"listening on (http://[\w.\-\[\]:]+?:(\d+))")
_MODULES = {"mini-relay": "relay.cli", "mini-connector": "agent.cli"}


class HarnessError(RuntimeError):
    """A step of the harness failed; the message says which and shows the output."""


def scaled(seconds: float) -> float:
    return seconds * TIMEOUT_FACTOR


@contextlib.contextmanager
def fresh_pg_database(url: str, prefix: str = "mc_relay_") -> Iterator[str]:
    """A fresh PostgreSQL database (a relay store) on the server at ``url``, dropped
    afterwards; yields its URL in the psycopg2 form SQLAlchemy and ``mini-relay
    --database-url`` both take."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from relay.store.engine import normalise_url

    admin_url = normalise_url(url)
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = prefix + secrets.token_hex(6)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def wait_until(
    predicate: Callable[[], T], timeout: float, *, interval: float = 0.05, what: str = ""
) -> T:
    """Poll ``predicate`` until it returns something truthy; ``HarnessError`` at the deadline."""
    deadline = time.monotonic() + scaled(timeout)
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise HarnessError(f"timed out after {scaled(timeout):.1f}s waiting for {what or predicate}")
        time.sleep(interval)


def holds_for(predicate: Callable[[], Any], seconds: float, *, interval: float = 0.1) -> bool:
    """True if ``predicate`` stays truthy for the whole window (asserting an absence)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not predicate():
            return False
        time.sleep(interval)
    return bool(predicate())


def command(name: str) -> list[str]:
    """argv prefix for a console script of this venv (or its module if not installed)."""
    script = BIN / name
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", f"import sys; from {_MODULES[name]} import main; sys.exit(main())"]


def run_cli(
    argv: list[str], *, env: dict[str, str] | None = None, input: str | None = None,
    timeout: float = 60,
) -> str:  # fmt: skip
    """Run a one-shot command; its stdout, or ``HarnessError`` with all output on failure."""
    try:
        done = subprocess.run(
            argv, env=env, input=input, capture_output=True, text=True, timeout=scaled(timeout),
            check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"{' '.join(argv)} did not finish in {timeout}s") from exc
    if done.returncode != 0:
        raise HarnessError(
            f"{' '.join(argv)} exited {done.returncode}\n--- stdout\n{done.stdout}"
            f"\n--- stderr\n{done.stderr}"
        )
    return done.stdout


class Proc:
    """A long-running subprocess whose merged output goes to a log file and a ring buffer."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name, self.argv, self.log_path = name, argv, log_path
        self.lines: collections.deque[str] = collections.deque(maxlen=5000)
        self._cond = threading.Condition()
        self._log = log_path.open("a", encoding="utf-8")
        self.popen = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, text=True, bufsize=1, encoding="utf-8", errors="replace",
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read, name=f"{name}-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._log.write(line)
            self._log.flush()
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_for_line(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        """The first output line matching ``pattern``; fails if the process dies first."""
        deadline = time.monotonic() + scaled(timeout)
        seen = 0
        with self._cond:
            while True:
                lines = list(self.lines)
                for line in lines[seen:]:
                    m = pattern.search(line)
                    if m:
                        return m
                seen = len(lines)
                if not self.alive() and not self._reader.is_alive():
                    raise HarnessError(
                        f"{self.name} exited {self.popen.returncode} before printing "
                        f"{pattern.pattern!r}\n{self.tail()}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise HarnessError(f"{self.name} printed no {pattern.pattern!r}\n{self.tail()}")
                self._cond.wait(min(left, 0.2))

    def tail(self, n: int = 60) -> str:
        with self._cond:
            lines = list(self.lines)[-n:]
        return f"--- last {len(lines)} lines of {self.name} (pid {self.pid})\n" + "\n".join(lines)

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM, wait, then SIGKILL: the process is gone when this returns."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=scaled(timeout))
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        self._reader.join(timeout=5)
        self._log.close()
        return self.popen.returncode

    def kill(self) -> None:
        """SIGKILL, for crash tests."""
        if self.alive():
            self.popen.kill()
            self.popen.wait(timeout=10)


# ---------------------------------------------------------------- HTTP


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    @property
    def data(self) -> Any:
        return self.json["data"]

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def ndjson(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines() if line.strip()]


class Api:
    """A small synchronous client of the relay's REST API (urllib, Bearer + X-Tenant-ID).

    With a ``platform_token`` (a ``service`` token, ``Relay.platform_api``) it is the
    platform and its console together, as in production: the jobs routes and connector
    reads go with the platform's token (the ``service`` limits, sized for dispatch load),
    the rest (registering, revoking, logs, metrics) with ``token``, a person's ``admin``
    token and its 100 requests a minute. So no test raises a limit."""

    def __init__(self, base_url: str, token: str | None, tenant: str | None, *,
                 platform_token: str | None = None) -> None:  # fmt: skip
        self.base_url = base_url.rstrip("/")
        self.token, self.tenant = token, tenant
        self.platform_token = platform_token

    @property
    def jobs_token(self) -> str | None:
        """The token for jobs, results and events: the platform's if there is one."""
        return self.platform_token or self.token

    def _token_for(self, method: str, path: str) -> str | None:
        if self.platform_token is None:
            return self.token
        path = path.removeprefix("/api/v1")
        if path.startswith("/jobs") or path.startswith("/events"):
            return self.platform_token
        if method == "GET" and path.startswith("/connectors") and not path.endswith(("/logs", "/metrics")):
            return self.platform_token
        return self.token

    def call(
        self, method: str, path: str, body: Any = None, *, params: dict[str, Any] | None = None,
        expect: int | tuple[int, ...] | None = None, timeout: float = 30,
    ) -> Response:  # fmt: skip
        url = self.base_url + (path if path.startswith("/api/") or path == "/metrics" else "/api/v1" + path)
        if params:
            url += "?" + urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        headers = {"Accept": "*/*"}
        token = self._token_for(method, path)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if self.tenant:
            headers["X-Tenant-ID"] = self.tenant
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=scaled(timeout)) as resp:
                out = Response(resp.status, dict(resp.headers), resp.read())
        except urllib.error.HTTPError as exc:
            out = Response(exc.code, dict(exc.headers), exc.read())
        if expect is not None:
            wanted = (expect,) if isinstance(expect, int) else expect
            if out.status not in wanted:
                raise HarnessError(f"{method} {path} -> {out.status}, wanted {wanted}: {out.body[:2000]!r}")
        return out

    # -- connectors
    def create_connector(self, name: str, os_: str = "linux") -> dict[str, Any]:
        return self.call("POST", "/connectors", {"name": name, "os": os_}, expect=201).data

    def connector(self, connector_id: str) -> dict[str, Any]:
        return self.call("GET", f"/connectors/{connector_id}", expect=200).data

    def delete_connector(self, connector_id: str) -> Response:
        return self.call("DELETE", f"/connectors/{connector_id}", expect=204)

    def logs(self, connector_id: str, **params: Any) -> dict[str, Any]:
        return self.call("GET", f"/connectors/{connector_id}/logs", params=params, expect=200).data

    def health(self) -> dict[str, Any]:
        return self.call("GET", "/health", expect=(200, 503)).json

    # -- jobs
    def submit(
        self, connector_id: str, source: str, operation: str = "query", *, sql: str | None = None,
        params: dict[str, Any] | None = None, options: dict[str, Any] | None = None,
        query: dict[str, Any] | None = None,
    ) -> str:  # fmt: skip
        body: dict[str, Any] = {"connectorId": connector_id, "source": source, "operation": operation}
        if query is not None:
            body["query"] = query
        elif sql is not None:
            body["query"] = {"sql": sql, "params": params or {}}
        if options:
            body["options"] = options
        return self.call("POST", "/jobs", body, expect=(200, 202)).data["id"]

    def job(self, job_id: str) -> dict[str, Any]:
        return self.call("GET", f"/jobs/{job_id}", expect=200).data

    def wait_job(self, job_id: str, timeout: float = 30, *, interval: float = 0.05) -> dict[str, Any]:
        """Poll until the job reaches a final status; returns the job."""
        return wait_until(
            lambda: (j := self.job(job_id))["status"] in FINAL_STATUSES and j,
            timeout, interval=interval, what=f"job {job_id} to finish",
        )  # fmt: skip

    def wait_status(self, job_id: str, statuses: set[str], timeout: float = 30) -> dict[str, Any]:
        return wait_until(
            lambda: (j := self.job(job_id))["status"] in statuses and j,
            timeout, what=f"job {job_id} to reach {sorted(statuses)}",
        )  # fmt: skip

    def results(self, job_id: str, *, offset: int | None = None) -> list[dict[str, Any]]:
        return self.call(
            "GET", f"/jobs/{job_id}/results", params={"offset": offset}, expect=200, timeout=120
        ).ndjson()

    def results_csv(self, job_id: str, *, raw: bool = False) -> str:
        params = {"format": "csv", **({"csvFormulas": "raw"} if raw else {})}
        return self.call("GET", f"/jobs/{job_id}/results", params=params, expect=200, timeout=120).text

    def cancel(self, job_id: str) -> Response:
        return self.call("POST", f"/jobs/{job_id}/cancel")

    def run_job(self, connector_id: str, source: str, operation: str = "query", *,
                timeout: float = 60, **kw: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:  # fmt: skip
        """Submit, wait, and read the rows of a job that must succeed."""
        job_id = self.submit(connector_id, source, operation, **kw)
        job = self.wait_job(job_id, timeout)
        if job["status"] != "succeeded":
            raise HarnessError(f"job {job_id} ended {job['status']}: {job.get('error')}")
        return job, self.results(job_id)


# ---------------------------------------------------------------- processes


@dataclass
class Relay:
    proc: Proc
    url: str
    port: int
    env: dict[str, str]

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def token(self, tenant: str, role: str = "admin", ttl: int | None = None) -> str:
        argv = [*command("mini-relay"), "token", "--tenant", tenant, "--role", role]
        if ttl is not None:
            argv += ["--ttl", str(ttl)]
        return run_cli(argv, env=self.env).strip()

    def api(self, tenant: str, role: str = "admin") -> Api:
        return Api(self.url, self.token(tenant, role), tenant)

    def platform_api(self, tenant: str) -> Api:
        """The platform (a ``service`` token) with its console (an ``admin`` token): ``Api``."""
        return Api(self.url, self.token(tenant, "admin"), tenant, platform_token=self.token(tenant, "service"))


@dataclass
class Source:
    name: str
    type: str
    url: str
    options: dict[str, str] = field(default_factory=dict)


@dataclass
class Agent:
    proc: Proc | None
    config: Path
    connector_id: str
    api_key: str
    env: dict[str, str]
    download_url: str | None = None  # the connector's downloadUrl, as POST /connectors answered
    run_log: Path | None = None  # the process's output (default: beside the config)

    def cli(self, *args: str, input: str | None = None, timeout: float = 60) -> str:
        return run_cli([*command("mini-connector"), "--config", str(self.config), *args],
                       env=self.env, input=input, timeout=timeout)  # fmt: skip


class Stack:
    """One relay and any number of agents under ``workdir``; ``close()`` stops them all."""

    def __init__(self, workdir: Path, *, tenant: str = "acme", heartbeat: float = 1.0,
                 extra_env: dict[str, str] | None = None) -> None:  # fmt: skip
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tenant = tenant
        self.heartbeat = heartbeat
        self.extra_env = dict(extra_env or {})
        self.relay: Relay | None = None
        self.api: Api | None = None
        self.agents: list[Agent] = []
        self.procs: list[Proc] = []
        self.relay_db = self.workdir / "relay.db"  # the SQLite store (elsewhere: a small disk)

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MC_RELAY_", "MC_AGENT_"))}
        env.update(self.extra_env)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start_relay(self, timeout: float = 30) -> Relay:
        env = self._env()
        env.setdefault("MC_RELAY_JWT_SECRET", secrets.token_hex(32))
        env.setdefault("MC_RELAY_HEARTBEAT_INTERVAL", str(self.heartbeat))
        db = self.relay_db
        argv = [*command("mini-relay"), "serve", "--dev", "--host", "127.0.0.1", "--port", "0",
                "--database-url", f"sqlite:///{db}"]  # fmt: skip
        proc = Proc("mini-relay", argv, env, self.workdir / "relay.log")
        self.procs.append(proc)
        m = proc.wait_for_line(_LISTENING, timeout)
        self.relay = Relay(proc, m.group(1), int(m.group(2)), env)
        self.api = self.relay.platform_api(self.tenant)
        wait_until(lambda: self._healthy(), 15, what="relay /health")
        return self.relay

    def start_relay_on(self, port: int | None = None, timeout: float = 30) -> Relay:
        """Start the relay on a fixed port (a free one picked once if None) with a fixed JWT
        secret and data key, so a restart on the same store (``relay.db``) serves what the
        previous process stored, and agents reconnect to the same address."""
        self.extra_env.setdefault("MC_RELAY_JWT_SECRET", secrets.token_hex(32))
        self.extra_env.setdefault("MC_RELAY_DATA_KEY", base64.b64encode(secrets.token_bytes(32)).decode())
        port = port or (self.relay.port if self.relay is not None else free_port())
        env = self._env()
        env.setdefault("MC_RELAY_HEARTBEAT_INTERVAL", str(self.heartbeat))
        db = self.relay_db
        argv = [*command("mini-relay"), "serve", "--dev", "--host", "127.0.0.1", "--port", str(port),
                "--database-url", f"sqlite:///{db}"]  # fmt: skip
        n = sum(1 for p in self.procs if p.name.startswith("mini-relay"))
        proc = Proc(f"mini-relay#{n + 1}", argv, env, self.workdir / "relay.log")
        self.procs.append(proc)
        m = proc.wait_for_line(_LISTENING, timeout)  # SO_REUSEADDR: the port is free at once
        self.relay = Relay(proc, m.group(1), int(m.group(2)), env)
        self.api = self.relay.platform_api(self.tenant)
        wait_until(lambda: self._healthy(), 15, what="relay /health")
        return self.relay

    def start_relay_node(self, database_url: str, timeout: float = 30) -> Relay:
        """Start one more relay node on a shared store (``postgresql://``), with the stack's
        JWT secret and data key, so any node verifies the same tokens and reads the chunks
        another stored. The first node started becomes ``self.relay`` / ``self.api``."""
        self.extra_env.setdefault("MC_RELAY_JWT_SECRET", secrets.token_hex(32))
        self.extra_env.setdefault("MC_RELAY_DATA_KEY", base64.b64encode(secrets.token_bytes(32)).decode())
        env = self._env()
        env.setdefault("MC_RELAY_HEARTBEAT_INTERVAL", str(self.heartbeat))
        n = sum(1 for p in self.procs if p.name.startswith("mini-relay")) + 1
        argv = [*command("mini-relay"), "serve", "--host", "127.0.0.1", "--port", "0",
                "--database-url", database_url]  # fmt: skip
        proc = Proc(f"mini-relay#{n}", argv, env, self.workdir / f"relay-{n}.log")
        self.procs.append(proc)
        m = proc.wait_for_line(_LISTENING, timeout)
        relay = Relay(proc, m.group(1), int(m.group(2)), env)
        api = relay.platform_api(self.tenant)
        wait_until(lambda: _healthy(api), 15, what=f"relay node {n} /health")
        if self.relay is None:
            self.relay, self.api = relay, api
        return relay

    def kill_relay(self) -> None:
        """``kill -9`` the relay (its port and store stay for ``start_relay_on``)."""
        assert self.relay is not None
        self.relay.proc.kill()

    def _healthy(self) -> bool:
        assert self.api is not None
        try:
            return self.api.health().get("status") == "healthy"
        except OSError:
            return False

    def add_agent(self, name: str, sources: list[Source], *, start: bool = True,
                  wait_online: bool = True, timeout: float = 30,
                  relay_url: str | None = None, created: dict[str, Any] | None = None,
                  state_dir: Path | None = None) -> Agent:  # fmt: skip
        """Register a connector (or take ``created``, one registered already), configure an
        agent for it with ``sources``, start it. ``relay_url`` points the agent elsewhere (a
        fault proxy) than the relay itself; ``state_dir`` holds its config and state (else
        its home, which keeps the process's output log either way)."""
        assert self.relay is not None and self.api is not None, "start the relay first"
        created = created or self.api.create_connector(name)
        home = self.workdir / f"agent-{len(self.agents) + 1}"
        home.mkdir(parents=True, exist_ok=True)
        env = self._env()
        env["HOME"] = str(home)  # keeps any per-user default paths inside the temp folder
        config = (state_dir or home) / "agent.toml"
        agent = Agent(None, config, created["id"], created["apiKey"], env, created.get("downloadUrl"),
                      home / "agent-run.log")  # fmt: skip
        agent.cli("configure", "--relay-url", relay_url or self.relay.ws_url, "--api-key", created["apiKey"],
                  "--name", name)  # fmt: skip
        for src in sources:
            args = ["source", "add", src.name, "--type", src.type, "--url", src.url]
            for k, v in src.options.items():
                args += ["--option", f"{k}={v}"]
            agent.cli(*args)
        self.agents.append(agent)
        if start:
            self.start_agent(agent, wait_online=wait_online, timeout=timeout)
        return agent

    def start_agent(self, agent: Agent, *, wait_online: bool = True, timeout: float = 30) -> Agent:
        argv = [*command("mini-connector"), "--config", str(agent.config), "run"]
        n = sum(1 for p in self.procs if p.name.startswith("mini-connector"))
        agent.proc = Proc(f"mini-connector#{n + 1}", argv, agent.env,
                          agent.run_log or agent.config.parent / "agent-run.log")  # fmt: skip
        self.procs.append(agent.proc)
        if wait_online:
            self.wait_online(agent, timeout)
        return agent

    def wait_online(self, agent: Agent, timeout: float = 30) -> dict[str, Any]:
        assert self.api is not None

        def online() -> dict[str, Any] | None:
            if agent.proc is not None and not agent.proc.alive():
                raise HarnessError(f"agent exited {agent.proc.popen.returncode}\n{agent.proc.tail()}")
            con = self.api.connector(agent.connector_id)  # type: ignore[union-attr]
            return con if con["status"] == "online" else None

        return wait_until(online, timeout, interval=0.1, what=f"connector {agent.connector_id} online")

    def logs_text(self, n: int = 60) -> str:
        return "\n".join(p.tail(n) for p in self.procs)

    def close(self) -> None:
        # Agents first, so the relay sees clean goodbyes rather than dropped sockets.
        for proc in reversed(self.procs):
            proc.stop()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _healthy(api: Api) -> bool:
    try:
        return api.health().get("status") == "healthy"
    except OSError:
        return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def stack(workdir: Path, **kw: Any) -> Iterator[Stack]:
    s = Stack(workdir, **kw)
    try:
        s.start_relay()
        yield s
    finally:
        s.close()
