"""The job state machine's table, job expiry, and configuration from the environment."""

from __future__ import annotations

import pytest

from relay.config import ConfigError, RelayConfig
from relay.jobs import lifecycle
from tests.relay.conftest import Api, FakeAgent, wait_until


def test_transition_table_walk() -> None:
    """Every entry leads to a known status; final statuses have no way out; the rest have one."""
    events = {e for _, e in lifecycle.TRANSITIONS}
    for status in lifecycle.STATUSES:
        for event in events:
            target = lifecycle.next_status(status, event)
            if status in lifecycle.FINAL:
                assert target is None, (status, event)
            elif target is not None:
                assert target in lifecycle.STATUSES
    for status in set(lifecycle.STATUSES) - lifecycle.FINAL:
        assert any(s == status for s, _ in lifecycle.TRANSITIONS), status
    assert lifecycle.next_status("queued", "start") is None
    assert lifecycle.next_status("running", "requeue") == "queued"
    assert set(lifecycle.DONE_EVENTS) == {"succeeded", "failed", "cancelled", "timed_out"}


async def test_queued_job_past_its_ttl_expires(start_relay: object) -> None:
    """A job nobody picked up within ttlSeconds becomes expired with error EXPIRED."""
    client = await start_relay(maintenance_interval=0.05, sweep_interval=0.05)
    api = Api(client)
    con = await api.new_connector()
    agent = await FakeAgent(client, con["apiKey"]).connect()
    await agent.close()
    await wait_until(lambda: _status(api, con["id"]), what="offline")
    job_id = await api.submit(con["id"], ttlSeconds=1)

    async def expired() -> dict | None:
        job = await api.job(job_id)
        return job if job["status"] == "expired" else None

    job = await wait_until(expired, timeout=5, what="expired")
    assert job["error"]["code"] == "EXPIRED"


async def _status(api: Api, cid: str) -> bool:
    return (await api.connector(cid))["status"] == "offline"


def test_config_from_env_reads_the_documented_variables() -> None:
    """MC_RELAY_* variables configure the relay; explicit overrides win."""
    env = {"MC_RELAY_HEARTBEAT_INTERVAL": "0.5", "MC_RELAY_RATE_LIMIT": "7", "MC_RELAY_RESULT_TTL": "60",
           "MC_RELAY_JWT_SECRET": "s" * 40, "MC_RELAY_DATABASE_URL": "sqlite:///x.db",
           "MC_RELAY_DATA_KEY": "A" * 43 + "="}
    cfg = RelayConfig.from_env(env, port=9999)
    assert (cfg.heartbeat_interval, cfg.rate_limit_per_minute, cfg.result_ttl_seconds) == (0.5, 7, 60.0)
    assert cfg.port == 9999 and cfg.database_url == "sqlite:///x.db" and cfg.data_cipher is not None
    with pytest.raises(ConfigError):
        RelayConfig.from_env({"MC_RELAY_RATE_LIMIT": "many"})
    with pytest.raises(ConfigError):
        RelayConfig.from_env({"MC_RELAY_DATA_KEY": "short"})
    with pytest.raises(ConfigError):
        RelayConfig.from_env({}).check()
    RelayConfig.from_env({}, dev=True).check()


def test_data_key_file_is_created_0600_beside_sqlite(tmp_path: object) -> None:
    """Without a configured data key, one is generated once, 0600, beside the SQLite file."""
    import os
    import stat

    cfg = RelayConfig.from_env({}, database_url=f"sqlite:///{tmp_path}/relay.db", jwt_secret="s" * 40)
    first = cfg.cipher()
    key_file = tmp_path / "relay-data.key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    again = RelayConfig.from_env({}, database_url=f"sqlite:///{tmp_path}/relay.db", jwt_secret="s" * 40).cipher()
    kid, blob = first.encrypt(b"rows")
    assert again.decrypt(kid, blob) == b"rows"


async def test_the_window_is_set_by_environment_and_told_to_agents(start_relay: object) -> None:
    """MC_RELAY_WINDOW: how many unacknowledged chunks an agent may have in flight per job
    (1-64), sent in the welcome; anything else is refused at start."""
    assert RelayConfig.from_env({"MC_RELAY_WINDOW": "16"}).window == 16
    assert RelayConfig.from_env({}).window == 8
    for bad in ("0", "65", "eight"):
        with pytest.raises(ConfigError, match="MC_RELAY_WINDOW"):
            RelayConfig.from_env({"MC_RELAY_WINDOW": bad})
    client = await start_relay(window=16)  # type: ignore[operator]
    con = await Api(client).new_connector()
    agent = FakeAgent(client, con["apiKey"])
    await agent.connect()
    assert agent.welcome is not None and agent.welcome["window"] == 16
    await agent.close()
