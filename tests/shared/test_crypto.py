"""Job sealing (HPKE), key files and the data-at-rest cipher (shared/crypto.py)."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

from shared import crypto
from shared.errors import DecryptionFailed, ValidationError

QUERY = {"sql": "SELECT id FROM t WHERE id > :min", "params": {"min": 5, "name": "Zoë"}}


@pytest.fixture
def key() -> crypto.X25519PrivateKey:
    return crypto.generate_private_key()


def test_public_key_is_32_raw_bytes_base64(key: crypto.X25519PrivateKey) -> None:
    """Contract §4: the publicKey is the raw X25519 key, standard base64."""
    b64 = crypto.public_key_b64(key)
    assert len(base64.b64decode(b64, validate=True)) == 32
    assert crypto.public_key_b64(crypto.load_public_key(b64)) == b64


@pytest.mark.parametrize("bad", ["not base64!!", base64.b64encode(b"short").decode(), ""])
def test_bad_public_keys_are_validation_errors(bad: str) -> None:
    with pytest.raises(ValidationError):
        crypto.load_public_key(bad)


def test_relay_form_round_trips(key: crypto.X25519PrivateKey) -> None:
    """A query sealed with the relay's info (connector and job) opens on the agent."""
    sealed = crypto.seal_query(QUERY, crypto.public_key_b64(key), crypto.relay_info("con_1", "job_1"))
    assert crypto.open_job(sealed, key, "con_1", "job_1") == QUERY


def test_platform_form_round_trips(key: crypto.X25519PrivateKey) -> None:
    """The platform's base64 sealedQuery opens for any job of that connector."""
    sealed_b64 = crypto.seal_query_for_platform(QUERY, crypto.public_key_b64(key), "con_1")
    assert crypto.open_job(base64.b64decode(sealed_b64), key, "con_1", "job_42") == QUERY


def test_platform_form_matches_the_contract_recipe(key: crypto.X25519PrivateKey) -> None:
    """A platform following §4 with cryptography's Suite directly is understood."""
    import json

    suite = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM)
    info = ("mini-connector/job/v1:" + "con_abc").encode()
    sealed = suite.encrypt(json.dumps(QUERY).encode("utf-8"), key.public_key(), info)
    assert crypto.open_job(sealed, key, "con_abc", "job_x") == QUERY


def test_integers_past_64_bits_survive_sealing_both_ways(key: crypto.X25519PrivateKey) -> None:
    """A parameter past 64 bits is sealed (orjson cannot write it) and opened (orjson alone
    reads it as a float) exactly, in the relay's form and a platform's ``json.dumps``."""
    import json

    query = {"sql": "SELECT :n", "params": {"n": 10**30 + 1, "m": -(2**63) - 1, "l": [2**64]}}
    sealed = crypto.seal_query(query, crypto.public_key_b64(key), crypto.relay_info("con_1", "job_1"))
    assert crypto.open_job(sealed, key, "con_1", "job_1") == query
    suite = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM)
    info = ("mini-connector/job/v1:" + "con_abc").encode()
    sealed = suite.encrypt(json.dumps(query).encode("utf-8"), key.public_key(), info)
    assert crypto.open_job(sealed, key, "con_abc", "job_x") == query


def test_tampered_ciphertext_fails(key: crypto.X25519PrivateKey) -> None:
    """Flipping any single byte makes the seal unopenable."""
    sealed = crypto.seal_query(QUERY, key.public_key(), crypto.relay_info("c", "j"))
    for i in range(0, len(sealed), max(1, len(sealed) // 25)):
        bad = sealed[:i] + bytes([sealed[i] ^ 0x01]) + sealed[i + 1 :]
        with pytest.raises(DecryptionFailed):
            crypto.open_job(bad, key, "c", "j")
    for bad in (b"", sealed[:16], sealed + b"x"):
        with pytest.raises(DecryptionFailed):
            crypto.open_job(bad, key, "c", "j")


def test_wrong_connector_or_job_fails(key: crypto.X25519PrivateKey) -> None:
    """The relay form binds connector and job; the platform form binds the connector."""
    relay_sealed = crypto.seal_query(QUERY, key.public_key(), crypto.relay_info("c", "j"))
    with pytest.raises(DecryptionFailed):
        crypto.open_job(relay_sealed, key, "c", "other_job")
    with pytest.raises(DecryptionFailed):
        crypto.open_job(relay_sealed, key, "other_con", "j")
    platform_sealed = crypto.seal_query(QUERY, key.public_key(), crypto.platform_info("c"))
    with pytest.raises(DecryptionFailed):
        crypto.open_job(platform_sealed, key, "other_con", "j")


def test_wrong_private_key_fails(key: crypto.X25519PrivateKey) -> None:
    sealed = crypto.seal_query(QUERY, key.public_key(), crypto.relay_info("c", "j"))
    with pytest.raises(DecryptionFailed) as info:
        crypto.open_job(sealed, crypto.generate_private_key(), "c", "j")
    assert info.value.code == "DECRYPTION_FAILED"


def test_sealed_non_json_is_decryption_failed(key: crypto.X25519PrivateKey) -> None:
    sealed = crypto.seal(b"\xff not json", key.public_key(), crypto.relay_info("c", "j"))
    with pytest.raises(DecryptionFailed, match="JSON"):
        crypto.open_job(sealed, key, "c", "j")


def test_key_file_is_0600_and_reloads(tmp_path: Path, key: crypto.X25519PrivateKey) -> None:
    """The private key file is owner-only and loads back to the same key."""
    path = tmp_path / "deep" / "agent.key"
    crypto.save_private_key(key, path)
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = crypto.load_private_key(path)
    assert crypto.public_key_b64(again) == crypto.public_key_b64(key)
    assert not list(tmp_path.rglob("*.tmp"))


def test_load_or_create_is_stable(tmp_path: Path) -> None:
    path = tmp_path / "agent.key"
    first = crypto.load_or_create_private_key(path)
    second = crypto.load_or_create_private_key(path)
    assert crypto.public_key_b64(first) == crypto.public_key_b64(second)


def test_secret_file_overwrite_keeps_0600(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.write_bytes(b"old")
    path.chmod(0o644)
    crypto.write_secret_file(path, b"new")
    assert path.read_bytes() == b"new"
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_data_cipher_round_trip_and_aad() -> None:
    """AES-GCM at rest: round trip, fresh nonces, the AAD is bound."""
    cipher = crypto.DataCipher.generate("k1")
    kid, blob = cipher.encrypt(b"rows", b"job_1:0")
    _, blob2 = cipher.encrypt(b"rows", b"job_1:0")
    assert kid == "k1" and blob != blob2 and b"rows" not in blob
    assert cipher.decrypt(kid, blob, b"job_1:0") == b"rows"
    with pytest.raises(DecryptionFailed):
        cipher.decrypt(kid, blob, b"job_1:1")
    with pytest.raises(DecryptionFailed):
        cipher.decrypt(kid, blob[:-1] + bytes([blob[-1] ^ 1]), b"job_1:0")


def test_data_cipher_key_rotation() -> None:
    """After rotation new data uses the new id; old ids stay readable while configured."""
    k1, k2 = os.urandom(32), os.urandom(32)
    old = crypto.DataCipher({"k1": k1}, "k1")
    kid1, blob1 = old.encrypt(b"before")
    rotated = crypto.DataCipher({"k1": k1, "k2": k2}, "k2")
    kid2, blob2 = rotated.encrypt(b"after")
    assert (kid1, kid2) == ("k1", "k2")
    assert rotated.decrypt(kid1, blob1) == b"before"
    assert rotated.decrypt(kid2, blob2) == b"after"
    retired = crypto.DataCipher({"k2": k2}, "k2")
    with pytest.raises(DecryptionFailed, match="not configured"):
        retired.decrypt(kid1, blob1)
    with pytest.raises(DecryptionFailed):
        crypto.DataCipher({"k3": k1}, "k3").decrypt("k3", blob2)


@pytest.mark.parametrize(("keys_", "current"), [({"k1": b"x" * 31}, "k1"), ({"k1": b"x" * 32}, "k2")])
def test_data_cipher_rejects_bad_configuration(keys_: dict[str, bytes], current: str) -> None:
    with pytest.raises(ValueError):
        crypto.DataCipher(keys_, current)


# ---------------------------------------------------------------- opening in a chosen order


@pytest.mark.parametrize("n_keys", [1, 2, 3, 4])
@pytest.mark.parametrize("length", [66, 1135, 1136, 5000])
def test_opening_order_is_every_pair_once(n_keys: int, length: int) -> None:
    hybrid = crypto.HybridKeyPair.generate().private_key()
    keys = [crypto.generate_private_key(), hybrid, crypto.generate_private_key(), hybrid][:n_keys]
    for first in [None, *((k, i) for k in range(n_keys) for i in range(2))]:
        order = crypto.opening_order(length, keys, 2, first)
        assert sorted(order) == [(k, i) for k in range(n_keys) for i in range(2)]
        if first is not None:
            assert order[0] == first
        elif n_keys > 1:  # no hint: the suite the length allows (or suggests) comes first
            assert isinstance(keys[order[0][0]], crypto.MLKEM768X25519PrivateKey) == (length >= 1136)


def test_open_sealed_first_costs_one_attempt_once_it_knows(attempts: list[str]) -> None:
    x, pair = crypto.generate_private_key(), crypto.HybridKeyPair.generate()
    keys = [x, pair.private_key(), crypto.generate_private_key()]  # current, hybrid, previous
    hybrid_public = crypto.load_hybrid_public_key(pair.public_b64())
    infos = crypto.job_infos("con_1", "job_1")
    relay_hybrid = crypto.seal_query(QUERY, hybrid_public, infos[0])
    plain, hit = crypto.open_sealed_first(relay_hybrid, keys, infos)
    assert crypto.parse_query(plain) == QUERY and hit == (1, 0)
    assert attempts == ["hybrid"]  # by its length, before any X25519 attempt
    attempts.clear()
    platform_x = crypto.seal_query(QUERY, x.public_key(), infos[1])
    plain, hit2 = crypto.open_sealed_first(platform_x, keys, infos)
    assert crypto.parse_query(plain) == QUERY and hit2 == (0, 1)
    assert attempts == ["x25519", "x25519"]  # the relay form first, then the platform's
    attempts.clear()
    crypto.open_sealed_first(crypto.seal_query(QUERY, x.public_key(), infos[1]), keys, infos, hit2)
    crypto.open_sealed_first(crypto.seal_query(QUERY, hybrid_public, infos[0]), keys, infos, hit)
    assert attempts == ["x25519", "hybrid"]  # told what opened the last one: one each


def test_open_sealed_first_fails_as_open_sealed_does(attempts: list[str]) -> None:
    """A blob nothing opens is tried with every key and info (as before) and fails with
    the same error; so does a sealed non-JSON query once parsed."""
    x, pair = crypto.generate_private_key(), crypto.HybridKeyPair.generate()
    keys = [x, pair.private_key()]
    infos = crypto.job_infos("con_1", "job_1")
    sealed = crypto.seal_query(QUERY, crypto.generate_private_key().public_key(), infos[0])
    for blob in (sealed, sealed[:-1] + bytes([sealed[-1] ^ 1]), b"", b"x" * 2000):
        attempts.clear()
        with pytest.raises(DecryptionFailed) as got:
            crypto.open_sealed_first(blob, keys, infos, (1, 0))
        with pytest.raises(DecryptionFailed) as want:
            crypto.open_sealed(blob, keys, infos)
        assert got.value.code == want.value.code == "DECRYPTION_FAILED"
        assert got.value.message == want.value.message
        assert sorted(attempts[:4]) == ["hybrid", "hybrid", "x25519", "x25519"]
    not_json = crypto.seal(b"\xff not json", x.public_key(), infos[0])
    plain, _ = crypto.open_sealed_first(not_json, keys, infos)
    with pytest.raises(DecryptionFailed, match="JSON"):
        crypto.parse_query(plain)
