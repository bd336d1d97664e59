"""Opening sealed jobs with the agent's key ring (agent/jobwork.Opener): the usual job costs
one HPKE decryption, whichever way it was sealed (relay or platform ``info``, X25519 or the
hybrid, the previous key after ``rotate-keys``), and what fails still fails with
DECRYPTION_FAILED."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path
from typing import Any

import pytest

from agent.jobs.job import Job
from agent.jobs.keyring import KeyRing, load_keyring, rotate_keys
from agent.jobs.runner import Runner
from agent.jobs.work import Opener, open_request
from agent.paths import StatePaths
from shared import crypto
from shared.errors import DecryptionFailed
from shared.protocol import make

from ..conftest import DoneRecorder

QUERY = {"sql": "SELECT 1 AS one", "params": {}}


@pytest.fixture
def ring(tmp_path: Path) -> KeyRing:
    return load_keyring(StatePaths(tmp_path / "agent.toml"))


def _hybrid(ring: KeyRing) -> crypto.MLKEM768X25519PublicKey:
    return crypto.load_hybrid_public_key(ring.hybrid.public_b64())


def _job(job_id: str) -> Job:
    return Job(job_id, 1, "src", "query", {})


def _b64(blob: bytes) -> str:
    return base64.b64encode(blob).decode("ascii")


def test_every_way_of_sealing_opens_and_the_usual_one_costs_one_attempt(
    ring: KeyRing, attempts: list[str]
) -> None:
    opener = Opener(ring.opening_keys())
    for n in range(3):  # the relay seals with the hybrid the agent offered: by length, at once
        job = f"job_h{n}"
        sealed = crypto.seal_query(QUERY, _hybrid(ring), crypto.relay_info("con_1", job))
        attempts.clear()
        assert opener.open_job(sealed, "con_1", job) == QUERY
        assert attempts == ["hybrid"]
    for n in range(3):  # a relay that seals with X25519 (an agent without the hybrid)
        job = f"job_x{n}"
        sealed = crypto.seal_query(QUERY, ring.current.public_key(), crypto.relay_info("con_1", job))
        attempts.clear()
        assert opener.open_job(sealed, "con_1", job) == QUERY
        assert attempts == ["x25519"]
    for n in range(3):  # platform-sealed (sealedQuery): the relay form fails first, once
        sealed = crypto.seal_query(QUERY, ring.current.public_key(), crypto.platform_info("con_1"))
        attempts.clear()
        assert opener.open_job(sealed, "con_1", f"job_p{n}") == QUERY
        assert attempts == (["x25519", "x25519"] if n == 0 else ["x25519"])
    sealed = crypto.seal_query(QUERY, _hybrid(ring), crypto.relay_info("con_1", "job_h9"))
    attempts.clear()
    assert opener.open_job(sealed, "con_1", "job_h9") == QUERY  # the hybrid hint is kept apart
    assert attempts == ["hybrid"]


def test_jobs_sealed_to_the_previous_keys_still_open(tmp_path: Path, attempts: list[str]) -> None:
    paths = StatePaths(tmp_path / "agent.toml")
    old = load_keyring(paths, now=1000.0)
    old_x = crypto.seal_query(QUERY, old.public_key, crypto.relay_info("con_1", "job_1"))
    old_h = crypto.seal_query(QUERY, _hybrid(old), crypto.relay_info("con_1", "job_2"))
    rotate_keys(paths, grace_seconds=60, now=1000.0)
    ring = load_keyring(paths, now=1001.0)
    assert len(ring.opening_keys()) == 4
    opener = Opener(ring.opening_keys())
    assert opener.open_job(old_x, "con_1", "job_1") == QUERY
    assert opener.open_job(old_h, "con_1", "job_2") == QUERY
    fresh = crypto.seal_query(QUERY, _hybrid(ring), crypto.relay_info("con_1", "job_3"))
    attempts.clear()
    assert opener.open_job(fresh, "con_1", "job_3") == QUERY  # current hybrid key: 2nd try
    assert attempts == ["hybrid", "hybrid"]


def test_what_cannot_be_opened_fails_as_before(ring: KeyRing, attempts: list[str]) -> None:
    opener = Opener(ring.opening_keys())
    good = crypto.seal_query(QUERY, _hybrid(ring), crypto.relay_info("con_1", "job_1"))
    assert opener.open_job(good, "con_1", "job_1") == QUERY
    stranger = crypto.HybridKeyPair.generate()
    bad = [
        good[:-1] + bytes([good[-1] ^ 1]),  # tampered
        crypto.seal_query(QUERY, crypto.load_hybrid_public_key(stranger.public_b64()), crypto.relay_info("con_1", "job_2")),
        crypto.seal_query(QUERY, ring.current.public_key(), crypto.relay_info("con_1", "other_job")),
        b"",
    ]  # fmt: skip
    for blob in bad:
        attempts.clear()
        with pytest.raises(DecryptionFailed) as info:
            opener.open_job(blob, "con_1", "job_2")
        assert info.value.code == "DECRYPTION_FAILED"
        assert len(attempts) == 2 * len(ring.opening_keys())  # every key, both infos
    with pytest.raises(DecryptionFailed, match="base64"):
        open_request(_job("job_3"), "not base64!!", opener, "con_1")
    attempts.clear()
    again = crypto.seal_query(QUERY, _hybrid(ring), crypto.relay_info("con_1", "job_4"))
    assert open_request(_job("job_4"), _b64(again), opener, "con_1") == QUERY
    assert attempts == ["hybrid"]  # a failure does not spoil the hint


class _Source:
    def test(self) -> dict[str, Any]:
        return {"ok": True}


async def test_the_runner_keeps_its_opener_across_jobs(ring: KeyRing, attempts: list[str]) -> None:
    runner = Runner(get_source=lambda name: _Source(), private_key=ring.opening_keys(), capacity=8)
    link = DoneRecorder()
    await runner.attach(link, connector_id="con_1", window=8, max_chunk_bytes=1 << 20)
    for n in range(4):
        job = f"job_{n}"
        sealed = crypto.seal_query({}, _hybrid(ring), crypto.relay_info("con_1", job))
        await runner.on_message(make("job.assign.v1", jobId=job, attempt=1, source="erp", operation="test",
                                     sealed=_b64(sealed), options={}))  # fmt: skip
    await runner.on_message(make("job.assign.v1", jobId="job_bad", attempt=1, source="erp", operation="test",
                                 sealed=_b64(b"\x00" * 1200), options={}))  # fmt: skip
    deadline = time.monotonic() + 10
    while len(link.done) < 5:
        assert time.monotonic() < deadline, f"only {sorted(link.done)} done"
        await asyncio.sleep(0.01)
    assert all(link.done[f"job_{n}"]["status"] == "succeeded" for n in range(4))
    assert link.done["job_bad"]["status"] == "failed"
    assert link.done["job_bad"]["error"]["code"] == "DECRYPTION_FAILED"
    assert attempts.count("hybrid") == 4 + 2 and attempts.count("x25519") == 2  # 1 per good job
