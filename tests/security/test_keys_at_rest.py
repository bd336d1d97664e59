"""Keys and data at rest: relay data-key rotation, the agent's key ring (rotate-keys, the
post-quantum hybrid pair), and the KEM choice at the relay."""

from __future__ import annotations

import base64
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent import platform_win
from agent.jobs.keyring import KeyFiles, load_keyring, rotate_keys
from agent.paths import StatePaths
from relay.agents.kems import KemDirectory
from relay.app import create_app
from relay.config import ConfigError, RelayConfig, cipher_from_env, load_data_cipher
from shared import crypto
from shared.crypto import DataCipher
from shared.errors import DecryptionFailed
from tests.harness import command
from tests.relay.conftest import Api, FakeAgent

K1, K2 = os.urandom(32), os.urandom(32)


def _b64(k: bytes) -> str:
    return base64.b64encode(k).decode()


def test_data_keys_from_env_list_current_and_file(tmp_path: Path) -> None:
    """MC_RELAY_DATA_KEYS holds several ids; MC_RELAY_DATA_KEY_ID picks the current one
    (default the last); a key file may hold the same list; an unknown current id is refused."""
    c = cipher_from_env({"MC_RELAY_DATA_KEYS": f"k1:{_b64(K1)},k2:{_b64(K2)}"})
    assert c is not None and c.current == "k2"
    c = cipher_from_env({"MC_RELAY_DATA_KEYS": f"k1:{_b64(K1)}, k2:{_b64(K2)}", "MC_RELAY_DATA_KEY_ID": "k1"})
    assert c is not None and c.current == "k1"
    (tmp_path / "keys").write_text(f"k1:{_b64(K1)}\nk2:{_b64(K2)}\n")
    c = cipher_from_env({"MC_RELAY_DATA_KEY_FILE": str(tmp_path / "keys")})
    assert c is not None and c.current == "k2"
    old = cipher_from_env({"MC_RELAY_DATA_KEY": _b64(K1)})
    assert old is not None and old.current == "k1"
    with pytest.raises(ConfigError):
        cipher_from_env({"MC_RELAY_DATA_KEYS": f"k1:{_b64(K1)}", "MC_RELAY_DATA_KEY_ID": "k9"})
    with pytest.raises(ConfigError):
        cipher_from_env({"MC_RELAY_DATA_KEYS": "k1:notbase64!"})


async def _run_job(api: Api, agent: FakeAgent, rows: list[list[Any]]) -> str:
    job_id = await api.submit(agent.connector_id or "", "SELECT 1")
    assign = await agent.expect("job.assign.v1", jobId=job_id)
    await agent.start(assign, ["x"])
    await agent.chunk(assign, 0, rows)
    await agent.done(assign, 1, len(rows))
    return job_id


async def _rows(api: Api, job_id: str) -> str:
    _, body, _ = await api.call("GET", f"/jobs/{job_id}/results", expect=200)
    return body


def _key_ids(db: Path) -> dict[str, set[str]]:
    with sqlite3.connect(db) as conn:
        out: dict[str, set[str]] = {}
        for job_id, key_id in conn.execute("SELECT job_id, key_id FROM result_chunks"):
            out.setdefault(job_id, set()).add(key_id)
        return out


async def test_data_key_rotation_keeps_old_chunks_readable(aiohttp_client: Any, make_config: Any,
                                                           tmp_path: Path) -> None:  # fmt: skip
    """Chunks written under k1 stay readable after k2 becomes current; new chunks use k2."""
    db = tmp_path / "relay.db"
    first = await aiohttp_client(create_app(make_config(data_cipher=DataCipher({"k1": K1}, "k1"))))
    api = Api(first)
    con = await api.new_connector()
    agent = await FakeAgent(first, con["apiKey"]).connect()
    old_job = await _run_job(api, agent, [["secret-row-1"], ["secret-row-2"]])
    await agent.close()
    await first.close()
    assert b"secret-row-1" not in db.read_bytes()

    rotated = DataCipher({"k1": K1, "k2": K2}, "k2")
    second = await aiohttp_client(create_app(make_config(data_cipher=rotated)))
    api = Api(second)
    assert "secret-row-1" in await _rows(api, old_job)
    agent = await FakeAgent(second, con["apiKey"]).connect()
    new_job = await _run_job(api, agent, [["fresh-row"]])
    assert "fresh-row" in await _rows(api, new_job)
    await agent.close()
    await second.close()
    ids = _key_ids(db)
    assert ids[old_job] == {"k1"} and ids[new_job] == {"k2"}


async def test_chunks_are_stored_compressed_unless_the_setting_says_none(aiohttp_client: Any, make_config: Any,
                                                                        tmp_path: Path) -> None:  # fmt: skip
    """MC_RELAY_STORE_COMPRESSION: zstd (default) stores a chunk compressed, then encrypted;
    none stores it encrypted only. A relay reads either back, whichever way it now stores."""
    assert RelayConfig.from_env({}).store_compression == "zstd"
    assert RelayConfig.from_env({"MC_RELAY_STORE_COMPRESSION": " None "}).store_compression == "none"
    with pytest.raises(ConfigError, match="MC_RELAY_STORE_COMPRESSION"):
        RelayConfig.from_env({"MC_RELAY_STORE_COMPRESSION": "gzip"})
    db = tmp_path / "relay.db"
    rows = [[f"customer {i} of a rather repetitive table"] for i in range(2000)]
    cipher = DataCipher({"k1": K1}, "k1")
    sizes: dict[str, int] = {}
    jobs: dict[str, str] = {}
    for setting in ("none", "zstd"):
        client = await aiohttp_client(create_app(make_config(data_cipher=cipher, store_compression=setting)))
        api = Api(client)
        con = await api.new_connector()
        agent = await FakeAgent(client, con["apiKey"]).connect()
        jobs[setting] = await _run_job(api, agent, rows)
        await agent.close()
        with sqlite3.connect(db) as conn:
            (sizes[setting],) = conn.execute(
                "SELECT length(data) FROM result_chunks WHERE job_id = ?", (jobs[setting],)
            ).fetchone()
        for job_id in jobs.values():  # both forms read back on this relay
            body = await _rows(api, job_id)
            assert body.count("\n") == 2000 and "customer 1999 of a rather" in body
        await client.close()
    assert sizes["zstd"] * 5 < sizes["none"]
    assert b"customer 1999" not in db.read_bytes()
    fresh = await aiohttp_client(create_app(make_config(data_cipher=cipher)))  # nothing in memory
    for job_id in jobs.values():
        body = await _rows(Api(fresh), job_id)
        assert body.count("\n") == 2000 and "customer 1999 of a rather" in body


def test_rotate_keys_keeps_the_previous_key_for_its_grace(tmp_path: Path) -> None:
    """rotate-keys makes a new X25519 and hybrid pair (0600); a job sealed to the old public
    key still opens during the grace period and fails DECRYPTION_FAILED after it."""
    paths = StatePaths(tmp_path / "agent.toml")
    ring = load_keyring(paths, now=1000.0)
    old_public = ring.public_key
    sealed = crypto.seal_query({"sql": "SELECT 1"}, old_public, crypto.platform_info("con_1"))
    new_public, until = rotate_keys(paths, grace_seconds=60, now=1000.0)
    assert new_public != old_public and until == 1060.0
    files = KeyFiles.of(paths)
    for f in (files.current, files.hybrid, files.previous, files.previous_hybrid, files.previous_meta):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    during = load_keyring(paths, now=1059.0)
    assert during.public_key == new_public
    assert crypto.open_job(sealed, during.opening_keys(), "con_1", "job_1") == {"sql": "SELECT 1"}
    after = load_keyring(paths, now=1061.0)
    with pytest.raises(DecryptionFailed):
        crypto.open_job(sealed, after.opening_keys(), "con_1", "job_1")
    assert not files.previous.exists() and not files.previous_meta.exists()


def test_hybrid_seal_opens_only_with_the_hybrid_key(tmp_path: Path) -> None:
    """A query sealed with ML-KEM-768 + X25519 opens with the agent's key ring; tampering or
    the wrong connector fails DECRYPTION_FAILED."""
    ring = load_keyring(StatePaths(tmp_path / "agent.toml"))
    hello = {"publicKey": ring.public_key, **ring.hello_fields()}
    kems = KemDirectory()
    kems.note_hello("con_1", hello)
    connector = {"id": "con_1", "public_key": ring.public_key}
    sealed = kems.seal_for(connector, {"sql": "SELECT 2"}, crypto.relay_info("con_1", "job_1"))
    assert len(sealed) > crypto.KEM.MLKEM768_X25519.enc_length()  # hybrid encapsulation
    assert crypto.open_job(sealed, ring.opening_keys(), "con_1", "job_1") == {"sql": "SELECT 2"}
    with pytest.raises(DecryptionFailed):
        crypto.open_job(sealed, [ring.current], "con_1", "job_1")  # X25519 alone cannot
    with pytest.raises(DecryptionFailed):
        crypto.open_job(sealed, ring.opening_keys(), "con_2", "job_1")
    bad = bytearray(sealed)
    bad[-5] ^= 1
    with pytest.raises(DecryptionFailed):
        crypto.open_job(bytes(bad), ring.opening_keys(), "con_1", "job_1")
    # A later hello without the hybrid (an older agent) goes back to X25519.
    kems.note_hello("con_1", {"publicKey": ring.public_key})
    plain = kems.seal_for(connector, {"sql": "SELECT 3"}, crypto.relay_info("con_1", "job_2"))
    assert len(plain) < 200 and crypto.open_job(plain, [ring.current], "con_1", "job_2")


def test_hybrid_key_is_ignored_when_it_belongs_to_an_older_public_key(tmp_path: Path) -> None:
    """After the agent's X25519 key changes, a remembered hybrid key of the old pair is not used."""
    ring = load_keyring(StatePaths(tmp_path / "agent.toml"))
    kems = KemDirectory()
    kems.note_hello("con_1", {"publicKey": ring.public_key, **ring.hello_fields()})
    other = crypto.public_key_b64(crypto.generate_private_key())
    assert kems.hybrid_key("con_1", other) is None


def test_windows_acl_grants_only_system_administrators_and_owner() -> None:
    """On Windows secret files get an explicit ACL (SYSTEM, Administrators, the service
    account) with inheritance removed; elsewhere the call is a no-op (0600 does the job)."""
    argv = platform_win.icacls_argv(Path("C:/ProgramData/MiniConnector/secret.key"), "svc")
    assert argv[1:3] == [str(Path("C:/ProgramData/MiniConnector/secret.key")), "/inheritance:r"]
    assert argv[0].endswith("\\system32\\icacls.exe")  # by full path, never looked up on PATH
    assert platform_win.icacls_path({"SystemRoot": "D:\\Win"}) == "D:\\Win\\system32\\icacls.exe"
    grants = [argv[i + 1] for i, a in enumerate(argv) if a == "/grant:r"]
    assert grants == ["*S-1-5-18:F", "*S-1-5-32-544:F", "svc:F"]
    if not platform_win.IS_WINDOWS:
        assert platform_win.restrict_to_owner(Path("/nonexistent")) is False


def test_relay_log_formatter_redacts_secrets() -> None:
    """The relay's JSON-lines formatter removes keys, tokens, JWTs and passwords, in the
    message and in a stack trace."""
    import logging

    from relay.cli import JsonLines
    from relay.web.auth import make_token
    from shared.keys import generate_key

    key, token = generate_key(), make_token("s" * 32, "t", "admin")
    try:
        raise ValueError(f"password=hunter2 in postgresql://u:pw123@h/db {token}")
    except ValueError:
        import sys

        exc_info = sys.exc_info()
    record = logging.LogRecord("relay.x", logging.ERROR, __file__, 1, "key %s bearer %s", (key, token), exc_info)
    line = JsonLines().format(record)
    for secret in (key, token, "hunter2", "pw123", token.split(".")[2]):
        assert secret not in line, secret


async def _result_stored_under_k1(aiohttp_client: Any, make_config: Any) -> str:
    """A job's one-row result stored by a relay whose data key is k1 = K1; that relay closed."""
    first = await aiohttp_client(create_app(make_config(data_cipher=DataCipher({"k1": K1}, "k1"))))
    api = Api(first)
    con = await api.new_connector()
    agent = await FakeAgent(first, con["apiKey"]).connect()
    job_id = await _run_job(api, agent, [["row"]])
    await agent.close()
    await first.close()
    return job_id


async def test_a_result_whose_data_key_was_removed_gets_a_clear_error(
    aiohttp_client: Any, make_config: Any
) -> None:
    """Reading chunks encrypted under a data key the relay no longer has answers 500 with a
    sentence naming the key, before any row is sent, never a cut-off 200."""
    job_id = await _result_stored_under_k1(aiohttp_client, make_config)
    second = await aiohttp_client(create_app(make_config(data_cipher=DataCipher({"k2": K2}, "k2"))))
    _, body, _ = await Api(second).call("GET", f"/jobs/{job_id}/results", expect=500)
    assert body["error"]["code"] == "INTERNAL_ERROR" and "'k1'" in body["error"]["message"]
    assert body["error"]["details"] == {"missingKeyIds": ["k1"]}


async def test_a_result_stored_under_another_key_of_the_same_id_gets_a_clear_error(
    aiohttp_client: Any, make_config: Any
) -> None:
    """A relay restarted (or another node) with other bytes under the same key id answers
    500 naming the key id before any row, not a stream cut in the middle."""
    job_id = await _result_stored_under_k1(aiohttp_client, make_config)
    second = await aiohttp_client(create_app(make_config(data_cipher=DataCipher({"k1": K2}, "k1"))))
    _, body, _ = await Api(second).call("GET", f"/jobs/{job_id}/results", expect=500)
    assert body["error"]["code"] == "INTERNAL_ERROR", body
    assert "MC_RELAY_DATA_KEY" in body["error"]["message"] and body["error"]["details"] == {"keyId": "k1"}


def test_a_relay_on_a_shared_store_without_a_data_key_refuses_to_start(tmp_path: Path) -> None:
    """No per-process key on PostgreSQL: `mini-relay serve` exits at once naming the variable,
    in --dev too; a SQLite relay still makes its key file."""
    for dev in (False, True):
        with pytest.raises(ConfigError, match="MC_RELAY_DATA_KEY"):
            load_data_cipher("postgresql://postgres@127.0.0.1:5432/test", dev=dev)
    assert load_data_cipher(f"sqlite:///{tmp_path / 'relay.db'}", dev=False).has("k1")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MC_RELAY_")}
    env["MC_RELAY_JWT_SECRET"] = "s" * 32
    done = subprocess.run(
        [*command("mini-relay"), "serve", "--port", "0", "--database-url", "postgresql://postgres@127.0.0.1:1/none"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "MC_RELAY_DATA_KEY is not set" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


def test_relays_starting_together_in_one_folder_share_one_data_key(tmp_path: Path) -> None:
    """Two SQLite relays whose databases share a folder start at the same moment: both
    start, and both hold the one key the folder keeps (before, they raced on one fixed
    temporary name and the second died at start-up, or each kept a key of its own).
    Processes, not threads: that is how relays start."""
    folder = tmp_path / "data"
    script = ("import sys, base64; from relay.config import load_data_cipher\n"
              "c = load_data_cipher(f'sqlite:///{sys.argv[1]}', dev=False)\n"
              "print(base64.b64encode(c.encrypt(b'sealed by ' + sys.argv[1].encode())[1]).decode())")  # fmt: skip
    for round_ in range(3):
        here = folder / str(round_)
        procs = [subprocess.Popen([sys.executable, "-c", script, str(here / f"relay{i}.db")],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(6)]  # fmt: skip
        outs = [p.communicate(timeout=60) for p in procs]
        assert [p.returncode for p in procs] == [0] * 6, outs
        kept = DataCipher({"k1": base64.b64decode((here / "relay-data.key").read_bytes())}, "k1")
        for i, (out, _) in enumerate(outs):  # every relay sealed with the key the folder kept
            assert kept.decrypt("k1", base64.b64decode(out.strip())) == f"sealed by {here / f'relay{i}.db'}".encode()
        assert stat.S_IMODE((here / "relay-data.key").stat().st_mode) == 0o600
        assert sorted(p.name for p in here.iterdir()) == ["relay-data.key"]  # no temporary left behind
