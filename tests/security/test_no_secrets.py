"""No secrets in logs or responses: a full session through real processes (a source with a
password, a failed query, an unreachable password source, an API-key rotation, a
revocation, a bad key at the door), then every log file, the logs API and every response
body are searched for the API keys, the platform tokens and the password: zero hits."""

from __future__ import annotations

import secrets
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Api, Response, Source, Stack, wait_until
from tests.system import dataset

pytestmark = pytest.mark.system

PASSWORD = "Pw-" + secrets.token_urlsafe(18)


class RecordingApi(Api):
    """The harness client, keeping every response (status, headers, body) it saw."""

    def __init__(self, *args: Any, seen: list[tuple[str, Response]], **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.seen = seen

    def call(self, method: str, path: str, *args: Any, **kw: Any) -> Response:
        out = super().call(method, path, *args, **kw)
        self.seen.append((f"{method} {path}", out))
        return out


def _needles(secrets_: dict[str, str]) -> dict[str, str]:
    out = dict(secrets_)
    for name, value in secrets_.items():
        if name.startswith("key"):
            out[name + " (random part)"] = value[4:36]
        if name.startswith("token"):
            out[name + " (signature)"] = value.rsplit(".", 1)[1]
    return out


def test_full_session_leaves_no_secret_anywhere(tmp_path: Path) -> None:
    sqlite = tmp_path / "erp.db"
    dataset.create_sqlite(sqlite)
    seen: list[tuple[str, Response]] = []
    stack = Stack(tmp_path / "stack", tenant="nosecrets", extra_env={"MC_RELAY_LOG_LEVEL": "DEBUG"})
    try:
        relay = stack.start_relay()
        tokens = {f"token {role}": relay.token(stack.tenant, role) for role in ("admin", "service", "support")}
        api = stack.api = RecordingApi(relay.url, tokens["token admin"], stack.tenant, seen=seen)
        service = RecordingApi(relay.url, tokens["token service"], stack.tenant, seen=seen)
        support = RecordingApi(relay.url, tokens["token support"], stack.tenant, seen=seen)

        agent = stack.add_agent("leaky?", [Source("erp", "sqlite", f"sqlite:///{sqlite}")], start=False)
        agent.cli("source", "add", "vault", "--type", "postgres", "--url",
                  "postgresql://scott@127.0.0.1:1/payroll", "--password-stdin", input=PASSWORD + "\n")
        agent.cli("source", "add", "erp2", "--type", "sqlite", "--url", f"sqlite:///{sqlite}",
                  "--password-stdin", input=PASSWORD + "\n")  # fmt: skip
        out = agent.cli("source", "list")
        assert PASSWORD not in out and PASSWORD not in agent.config.read_text()
        stack.start_agent(agent)
        cid = agent.connector_id

        service.run_job(cid, "erp2", sql="SELECT count(*) AS n FROM items")
        failed = service.wait_job(service.submit(cid, "erp", sql="SELECT * FROM no_such_table"))
        assert failed["status"] == "failed"
        unreachable = service.wait_job(service.submit(cid, "vault", sql="SELECT 1"))
        assert unreachable["status"] == "failed"
        service.wait_job(service.submit(cid, "vault", "test"))
        service.call("POST", "/jobs", {"connectorId": cid, "source": "erp", "operation": "query",
                                       "query": {"sql": "DELETE FROM items"}})  # fmt: skip

        # API-key rotation: the agent moves to the new key; the old one is refused.
        rotated = api.call("POST", f"/connectors/{cid}/rotate-key", {"gracePeriodSeconds": 0}, expect=200).data
        assert agent.proc is not None
        agent.proc.stop()
        agent.cli("configure", "--relay-url", relay.ws_url, "--api-key", rotated["apiKey"])
        stack.start_agent(agent)
        support.call("GET", f"/connectors/{cid}")
        support.call("GET", f"/connectors/{cid}/metrics")
        support.call("GET", f"/jobs/{failed['id']}/results")  # 403 for support
        service.call("GET", f"/jobs/{failed['id']}/results")  # 409 with the job's error
        api.call("GET", "/connectors", params={"status": "online"})
        Api(relay.url, "not-a-token", stack.tenant).call("GET", "/connectors")

        # A stranger knocks with the old key (now invalid) and garbage.
        for bad in (agent.api_key, "vmc_" + "x" * 38, rotated["apiKey"][:-1] + "Z"):
            req = urllib.request.Request(relay.url + "/api/v1/agent/connect",
                                         headers={"Authorization": f"Bearer {bad}"})
            try:
                urllib.request.urlopen(req, timeout=10).read()
            except OSError as exc:  # HTTPError 401 expected
                body = exc.read() if hasattr(exc, "read") else b""
                seen.append(("GET /agent/connect", Response(getattr(exc, "code", 0), {}, body)))

        wait_until(lambda: api.logs(cid, level="DEBUG").get("logs"), 15, interval=0.2, what="agent logs")
        api.call("DELETE", f"/connectors/{cid}", expect=204)
        wait_until(lambda: any("REVOKED" in line for line in list(agent.proc.lines)),
                   20, interval=0.1, what="the agent to see its key revoked")  # fmt: skip
        logs_api = api.call("GET", f"/connectors/{cid}/logs", params={"level": "DEBUG", "limit": 1000})
        assert logs_api.status == 200 and logs_api.json["data"]["logs"]
    finally:
        stack.close()

    needles = _needles({"key original": agent.api_key, "key rotated": rotated["apiKey"],
                        "password": PASSWORD, **tokens})  # fmt: skip
    haystacks: dict[str, str] = {}
    for path in [*stack.workdir.rglob("*.log"), *stack.workdir.rglob("*.log.*"),
                 *stack.workdir.rglob("logs/*")]:  # fmt: skip
        if path.is_file():
            haystacks[str(path)] = path.read_text(errors="replace")
    assert any("relay.log" in p for p in haystacks) and any("agent-run.log" in p for p in haystacks)
    assert any("/logs/" in p for p in haystacks), sorted(haystacks)
    shown_once = {"POST /connectors", f"POST /connectors/{cid}/rotate-key"}
    for i, (what, resp) in enumerate(seen):
        if what in shown_once:
            continue  # the contract shows the key here, once
        haystacks[f"response {i}: {what} -> {resp.status}"] = (
            resp.body.decode("utf-8", "replace") + repr(resp.headers))
    hits = [(where, name) for where, text in haystacks.items() for name, value in needles.items()
            if value and value in text]  # fmt: skip
    assert not hits, hits
    assert len(seen) > 20
