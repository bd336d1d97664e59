"""Config files, secrets at rest and the mini-connector command line (in process)."""

from __future__ import annotations

import io
import logging
import stat
from pathlib import Path

import orjson
import pytest

from agent import cli
from agent.config import (
    InvalidInput,
    SecretBox,
    agent_endpoint,
    load_config,
    normalise_relay_url,
    source_password,
    split_url_password,
)
from agent.logs import JsonFormatter, RedactFilter, redact
from agent.paths import StatePaths, default_config_path, resolve_config_path
from shared.crypto import load_private_key


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_default_paths_per_platform(tmp_path: Path) -> None:
    assert default_config_path(env={}, platform="linux", is_root=True) == Path("/etc/mini-connector/agent.toml")
    assert default_config_path(env={}, platform="linux", is_root=False, home=tmp_path) == (
        tmp_path / ".config/mini-connector/agent.toml"
    )
    win = default_config_path(env={"ProgramData": "D:\\PD"}, platform="win32", is_root=False)
    assert win.name == "agent.toml" and "MiniConnector" in str(win)
    assert resolve_config_path("/x/a.toml", {"MC_AGENT_CONFIG": "/y/b.toml"}) == Path("/x/a.toml")
    assert resolve_config_path(None, {"MC_AGENT_CONFIG": "/y/b.toml"}) == Path("/y/b.toml")


def test_relay_url_rules() -> None:
    assert normalise_relay_url("http://127.0.0.1:8080/", allow_insecure=False) == "ws://127.0.0.1:8080"
    assert normalise_relay_url("https://relay.example.com", allow_insecure=False) == "wss://relay.example.com"
    assert normalise_relay_url("ws://relay.lan", allow_insecure=True) == "ws://relay.lan"
    for bad in ("ws://relay.example.com", "ftp://x", "relay.example.com", "wss://u:p@x"):
        with pytest.raises(InvalidInput):
            normalise_relay_url(bad, allow_insecure=False)
    assert agent_endpoint("ws://h:1") == "ws://h:1/api/v1/agent/connect"
    assert agent_endpoint("wss://h/custom/path") == "wss://h/custom/path"


def test_password_is_split_out_of_urls() -> None:
    assert split_url_password("postgresql://bob:p%40ss@h:5432/db") == ("postgresql://bob@h:5432/db", "p@ss")
    assert split_url_password("sqlite:////tmp/x.db") == ("sqlite:////tmp/x.db", None)


def test_configure_writes_owner_only_files_and_a_key_pair(tmp_path: Path, api_key: str, capsys) -> None:
    cfg = tmp_path / "state" / "agent.toml"
    rc = cli.main(["configure", "--config", str(cfg), "--relay-url", "ws://127.0.0.1:9", "--api-key", api_key, "--name", "n1"])
    assert rc == 0
    paths = StatePaths(cfg)
    for p in (cfg, paths.private_key, paths.secret_key):
        assert _mode(p) == 0o600, p
    assert _mode(cfg.parent) == 0o700
    assert api_key not in cfg.read_text()
    load_private_key(paths.private_key)
    before = paths.private_key.read_bytes()
    assert cli.main(["--config", str(cfg), "configure", "--relay-url", "ws://localhost:9", "--api-key", api_key]) == 0
    assert paths.private_key.read_bytes() == before  # the key pair is kept, not replaced


def test_configure_rejects_a_mistyped_key_with_one_sentence(tmp_path: Path, api_key: str, capsys) -> None:
    cfg = tmp_path / "agent.toml"
    typo = api_key[:10] + ("A" if api_key[10] != "A" else "B") + api_key[11:]
    rc = cli.main(["configure", "--config", str(cfg), "--relay-url", "ws://127.0.0.1:9", "--api-key", typo])
    err = capsys.readouterr().err
    assert rc == 2 and "checksum" in err and "Traceback" not in err and err.count("\n") == 1
    assert not cfg.exists()


def test_source_add_list_test_remove(tmp_path: Path, api_key: str, sample_db: Path, capsys, monkeypatch) -> None:
    cfg = str(tmp_path / "agent.toml")
    assert cli.main(["configure", "--config", cfg, "--relay-url", "ws://127.0.0.1:9", "--api-key", api_key]) == 0
    assert cli.main(["source", "add", "lite", "--type", "sqlite", "--url", f"sqlite:///{sample_db}", "--config", cfg]) == 0
    assert cli.main(["source", "add", "pg", "--type", "postgres", "--url", "postgresql://bob:s3cret-pw@h/db", "--config", cfg]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("other-pw\n"))
    assert cli.main(["--config", cfg, "source", "add", "my", "--type", "mysql", "--url", "mysql+pymysql://root@h/db",
                     "--password-stdin", "--option", "read_timeout=30"]) == 0  # fmt: skip
    text = Path(cfg).read_text()
    assert "s3cret-pw" not in text and "other-pw" not in text
    conf = load_config(Path(cfg))
    box = SecretBox(tmp_path / "secret.key")
    assert source_password(conf.sources["pg"], box, env={}) == "s3cret-pw"
    assert source_password(conf.sources["my"], box, env={"MC_SOURCE_MY_PASSWORD": "env-pw"}) == "env-pw"
    capsys.readouterr()
    assert cli.main(["source", "list", "--json", "--config", cfg]) == 0
    listed = orjson.loads(capsys.readouterr().out)
    assert [s["name"] for s in listed] == ["lite", "pg", "my"]
    assert "s3cret" not in orjson.dumps(listed).decode()
    assert cli.main(["source", "test", "lite", "--config", cfg]) == 0
    out = capsys.readouterr().out
    assert "connected: true" in out and "tablesFound: 2" in out
    assert cli.main(["source", "test", "absent", "--config", cfg]) == 3
    assert cli.main(["source", "add", "tl", "--type", "tally", "--url", "ftp://x", "--config", cfg]) != 0
    assert "tally source needs a URL" in capsys.readouterr().err
    assert cli.main(["source", "remove", "pg", "--config", cfg]) == 0
    assert "pg" not in load_config(Path(cfg)).sources
    assert cli.main(["source", "remove", "pg", "--config", cfg]) == 3


def test_source_test_failure_exits_non_zero(tmp_path: Path, api_key: str, capsys) -> None:
    cfg = str(tmp_path / "agent.toml")
    cli.main(["configure", "--config", cfg, "--relay-url", "ws://127.0.0.1:9", "--api-key", api_key])
    (tmp_path / "absent.db").write_bytes(b"")  # there when added (source add checks), gone by the test
    assert cli.main(["source", "add", "gone", "--type", "sqlite", "--url", f"sqlite:///{tmp_path}/absent.db", "--config", cfg]) == 0
    (tmp_path / "absent.db").unlink()
    assert cli.main(["source", "test", "gone", "--config", cfg]) == 4
    assert "SOURCE_UNAVAILABLE" in capsys.readouterr().err


def test_version_missing_config_and_status_not_running(tmp_path: Path, capsys, api_key: str) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == "mini-connector 0.1.0"
    cfg = str(tmp_path / "none.toml")
    assert cli.main(["source", "list", "--config", cfg]) == 3
    assert "configure" in capsys.readouterr().err
    cli.main(["configure", "--config", cfg, "--relay-url", "ws://127.0.0.1:9", "--api-key", api_key])
    assert cli.main(["status", "--config", cfg]) == 6
    assert "not running" in capsys.readouterr().out


def test_redaction_removes_keys_passwords_and_url_credentials(api_key: str) -> None:
    text = (
        f"key {api_key} url postgresql://bob:hunter2@db/x Authorization: Bearer abc.def "
        'password=pw1; PWD=pw2 {"password": "pw3"} token=tok4'
    )
    clean = redact(text)
    for secret in (api_key, "hunter2", "abc.def", "pw1", "pw2", "pw3", "tok4"):
        assert secret not in clean
    rec = logging.LogRecord("agent.x", logging.INFO, __file__, 1, "connecting with %s", (api_key,), None)
    RedactFilter().filter(rec)
    assert api_key not in JsonFormatter().format(rec)


def test_configure_keeps_the_key_when_only_the_relay_changes(tmp_path: Path, api_key: str, capsys) -> None:
    """The key is shown once: moving the agent to another relay URL must not need it."""
    from agent.config import api_key as stored_key

    cfg = tmp_path / "agent.toml"
    assert cli.main(["configure", "--config", str(cfg), "--relay-url", "ws://127.0.0.1:9"]) == cli.EXIT_USAGE
    assert "--api-key is required the first time" in capsys.readouterr().err and not cfg.exists()
    assert cli.main(["configure", "--config", str(cfg), "--relay-url", "ws://127.0.0.1:9", "--api-key", api_key]) == 0
    assert cli.main(["configure", "--config", str(cfg), "--relay-url", "ws://127.0.0.1:7", "--capacity", "3"]) == 0
    loaded = load_config(cfg)
    assert loaded.relay_url == "ws://127.0.0.1:7" and loaded.capacity == 3
    assert stored_key(loaded, SecretBox(StatePaths(cfg).secret_key), env={}) == api_key


def test_a_sqlite_source_needs_its_file_and_its_errors_name_it(tmp_path: Path, api_key: str, capsys) -> None:
    """A SQLite source is opened read-only and never created: a missing file is a warning at
    ``source add`` (it may be made later), and ``source test`` names the path."""
    cfg = tmp_path / "agent.toml"
    assert cli.main(["configure", "--config", str(cfg), "--relay-url", "ws://127.0.0.1:9", "--api-key", api_key]) == 0
    missing = tmp_path / "nope.db"
    capsys.readouterr()
    assert cli.main(["source", "add", "s", "--type", "sqlite", "--url", f"sqlite:///{missing}", "--config", str(cfg)]) == 0
    assert f"warning: no SQLite database file at {missing}" in capsys.readouterr().err
    db = tmp_path / "real.db"
    import sqlite3

    sqlite3.connect(db).close()
    assert cli.main(["source", "add", "s", "--type", "sqlite", "--url", f"sqlite:///{db}", "--config", str(cfg)]) == 0
    db.unlink()
    capsys.readouterr()
    assert cli.main(["source", "test", "s", "--config", str(cfg)]) != 0
    assert str(db) in capsys.readouterr().err


def test_names_urls_and_options_with_control_characters_are_refused(tmp_path: Path, api_key: str, sample_db: Path, capsys) -> None:
    cfg = str(tmp_path / "agent.toml")
    rc = cli.main(["configure", "--config", cfg, "--relay-url", "ws://127.0.0.1:9", "--api-key", api_key, "--name", "a\nb"])
    assert rc == 2 and "control character" in capsys.readouterr().err
    assert cli.main(["configure", "--config", cfg, "--relay-url", "ws://127.0.0.1:9", "--api-key", api_key]) == 0
    url = f"sqlite:///{sample_db}"
    for argv in (["lite\n", "--url", url], ["lite", "--url", url + "\n"], ["lite", "--url", url, "--option", "a\n=b"],
                 ["lite", "--url", url, "--option", "a=b\x1b[2J"]):  # fmt: skip
        capsys.readouterr()
        assert cli.main(["source", "add", argv[0], "--type", "sqlite", *argv[1:], "--config", cfg]) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
    assert load_config(Path(cfg)).sources == {}
    capsys.readouterr()
    assert cli.main(["source", "add", "pg", "--type", "postgres", "--url", "postgresql://bob:s3cret@h/db\t", "--config", cfg]) == 2
    assert "s3cret" not in capsys.readouterr().err  # the refusal does not echo a URL's password


@pytest.mark.parametrize("source", ['options = 5', 'options = "abc"', 'password_enc = 7'])
def test_a_hand_edited_config_with_wrong_types_is_a_config_error(tmp_path: Path, capsys, source: str) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[agent]\nrelay_url = "ws://127.0.0.1:9"\n[sources.x]\ntype = "sqlite"\nurl = "sqlite:////x.db"\n{source}\n')
    for cmd in (["source", "list"], ["source", "test", "x"], ["status"]):
        capsys.readouterr()
        assert cli.main([*cmd, "--config", str(cfg)]) == 3, cmd
        err = capsys.readouterr().err
        assert "unexpected error" not in err and str(cfg) in err and err.count("\n") == 1, err


_PIN = "q" * 43 + "="


@pytest.mark.parametrize(
    ("table", "error"),
    [
        ('transport = "pinned"', "malformed [transport] table"),
        ('[transport]\npin_sha256 = 5', "pin_sha256 in [transport]"),
        (f'[transport]\npin_sha256 = ["{_PIN}", 7]', "pin_sha256 in [transport]"),
        ("[transport]\nca_file = 5", "ca_file in [transport]"),
        ("[transport]\nproxy = true", "proxy in [transport]"),
    ],
)
def test_a_hand_edited_transport_table_of_the_wrong_shape_is_refused(tmp_path: Path, table: str, error: str) -> None:
    """Was: a [transport] that was not a table was dropped without a word (its pins and CA
    with it), and wrong types reached the TLS code."""
    from agent.config import ConfigError, load_config

    path = tmp_path / "agent.toml"
    path.write_text(f'{table}\n\n[agent]\nrelay_url = "wss://relay.example.com"\n' if table.startswith("transport =")
                    else f'[agent]\nrelay_url = "wss://relay.example.com"\n\n{table}\n')  # fmt: skip
    with pytest.raises(ConfigError, match=error.replace("[", r"\[").replace("]", r"\]")):
        load_config(path)


def test_a_single_pin_written_as_a_string_is_one_pin(tmp_path: Path) -> None:
    """Was: pin_sha256 = "<pin>" read as one pin per character (every connection refused)."""
    from agent.config import load_config
    from agent.link.transport import Transport

    path = tmp_path / "agent.toml"
    path.write_text(f'[agent]\nrelay_url = "wss://relay.example.com"\n\n[transport]\npin_sha256 = "{_PIN}"\n')
    assert Transport.from_config(load_config(path)).pins == (_PIN,)
