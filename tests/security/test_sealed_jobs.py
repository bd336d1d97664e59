"""Sealed jobs end to end through real processes: platform-sealed queries the relay never
sees in clear, the post-quantum hybrid, tampered and mis-addressed seals, and
``mini-connector rotate-keys`` with jobs already sealed to the old key."""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared import crypto
from tests.harness import Agent, Source, Stack
from tests.system import dataset

pytestmark = pytest.mark.system

MARKER = "ZEBRA_SEALED_7f3a9c"


@pytest.fixture(scope="module")
def sealed_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Agent]]:
    work = tmp_path_factory.mktemp("sealed")
    db = work / "erp.db"
    dataset.create_sqlite(db)
    stack = Stack(work / "stack", tenant="sealed", heartbeat=1.0)
    try:
        stack.start_relay()
        agent = stack.add_agent("sealer", [Source("erp", "sqlite", f"sqlite:///{db}")])
        yield stack, agent
    finally:
        stack.close()


def _sql(tag: str) -> dict[str, Any]:
    return {"sql": f"SELECT count(*) AS n FROM items WHERE '{MARKER}_{tag}' <> ''", "params": {}}


def _submit_sealed(stack: Stack, connector_id: str, sealed_b64: str) -> str:
    assert stack.api is not None
    body = {"connectorId": connector_id, "source": "erp", "operation": "query", "sealedQuery": sealed_b64}
    return stack.api.call("POST", "/jobs", body, expect=202).data["id"]


def _store_bytes(stack: Stack) -> bytes:
    folder = stack.workdir
    return b"".join(p.read_bytes() for p in folder.glob("relay.db*"))


def _stored_seal(stack: Stack, job_id: str) -> bytes:
    with sqlite3.connect(stack.workdir / "relay.db") as conn:
        return conn.execute("SELECT sealed FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]


def test_platform_sealed_job_runs_and_the_relay_never_sees_the_sql(sealed_stack: tuple[Stack, Agent]) -> None:
    """The documented helper seals to the connector's publicKey; the job succeeds; the clear
    SQL is nowhere in the relay's store files (relay-sealed SQL neither)."""
    stack, agent = sealed_stack
    assert stack.api is not None
    con = stack.api.connector(agent.connector_id)
    sealed = crypto.seal_query_for_platform(_sql("platform"), con["publicKey"], agent.connector_id)
    job = stack.api.wait_job(_submit_sealed(stack, agent.connector_id, sealed))
    assert job["status"] == "succeeded", job
    assert stack.api.results(job["id"]) == [{"n": dataset.ROWS}]
    relay_job, rows = stack.api.run_job(agent.connector_id, "erp", query=_sql("relay"))
    assert rows == [{"n": dataset.ROWS}]
    store = _store_bytes(stack)
    assert MARKER.encode() not in store
    assert b"SELECT count(*)" not in store
    # The agent offered the hybrid in its hello, so the relay sealed with ML-KEM-768 + X25519.
    assert len(_stored_seal(stack, relay_job["id"])) > crypto.KEM.MLKEM768_X25519.enc_length()


@pytest.mark.parametrize("how", ["tampered", "other connector", "other key", "not json", "garbage"])
def test_bad_seals_fail_decryption_failed(sealed_stack: tuple[Stack, Agent], how: str) -> None:
    """A seal that was altered, addressed to another connector or key, or is not a sealed
    query at all fails the job with DECRYPTION_FAILED (not retryable) and nothing else."""
    stack, agent = sealed_stack
    assert stack.api is not None
    public = stack.api.connector(agent.connector_id)["publicKey"]
    query = _sql("bad")
    if how == "tampered":
        raw = bytearray(base64.b64decode(crypto.seal_query_for_platform(query, public, agent.connector_id)))
        raw[40] ^= 0x01
        sealed = base64.b64encode(bytes(raw)).decode()
    elif how == "other connector":
        sealed = crypto.seal_query_for_platform(query, public, "con_" + "1" * 20)
    elif how == "other key":
        other = crypto.public_key_b64(crypto.generate_private_key())
        sealed = crypto.seal_query_for_platform(query, other, agent.connector_id)
    elif how == "not json":
        blob = crypto.seal(b"\x00not json", public, crypto.platform_info(agent.connector_id))
        sealed = base64.b64encode(blob).decode()
    else:
        sealed = base64.b64encode(b"\x01" * 80).decode()
    job = stack.api.wait_job(_submit_sealed(stack, agent.connector_id, sealed))
    assert job["status"] == "failed", job
    assert job["error"]["code"] == "DECRYPTION_FAILED" and job["error"]["retryable"] is False, job
    assert stack.api.connector(agent.connector_id)["status"] == "online"


def test_rotate_keys_new_key_at_next_hello_and_old_seals_open_in_grace(
    sealed_stack: tuple[Stack, Agent]
) -> None:
    """rotate-keys on a stopped agent: the relay learns the new publicKey at the next hello;
    a job sealed to the old key while it was away still runs (previous key kept); after a
    rotation with --grace-seconds 0 such a job fails DECRYPTION_FAILED."""
    stack, agent = sealed_stack
    api = stack.api
    assert api is not None and agent.proc is not None
    old_public = api.connector(agent.connector_id)["publicKey"]

    agent.proc.stop()
    queued = _submit_sealed(stack, agent.connector_id,
                            crypto.seal_query_for_platform(_sql("old"), old_public, agent.connector_id))
    out = agent.cli("rotate-keys")
    assert "new agent key pair" in out
    new_public = out.split("public key ", 1)[1].split()[0]
    stack.start_agent(agent)
    assert api.wait_job(queued)["status"] == "succeeded"
    assert api.connector(agent.connector_id)["publicKey"] == new_public != old_public

    agent.proc.stop()
    doomed = _submit_sealed(stack, agent.connector_id,
                            crypto.seal_query_for_platform(_sql("gone"), new_public, agent.connector_id))
    agent.cli("rotate-keys", "--grace-seconds", "0")
    stack.start_agent(agent)
    job = api.wait_job(doomed)
    assert job["status"] == "failed" and job["error"]["code"] == "DECRYPTION_FAILED", job
    key_folder = Path(agent.config).parent
    assert not (key_folder / "agent_key.prev.pem").exists()
