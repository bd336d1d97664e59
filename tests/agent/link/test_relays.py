"""Several relay URLs: configured as a list, tried in turn, one URL still works as before."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import cli
from agent.config import InvalidInput, load_config
from agent.link.relays import Endpoint, RelayChoice, split_urls


def test_repeated_and_comma_separated_relay_urls_are_stored_as_one_list(tmp_path: Path, api_key: str) -> None:
    """configure takes --relay-url twice or comma-separated; the first is still relay_url."""
    cfg = tmp_path / "agent.toml"
    argv = ["configure", "--config", str(cfg), "--api-key", api_key,
            "--relay-url", "ws://127.0.0.1:1,ws://127.0.0.1:2", "--relay-url", "http://localhost:3"]  # fmt: skip
    assert cli.main(argv) == 0
    loaded = load_config(cfg)
    assert loaded.relay_urls == ["ws://127.0.0.1:1", "ws://127.0.0.1:2", "ws://localhost:3"]
    assert loaded.relay_url == "ws://127.0.0.1:1"
    assert cli.main(["configure", "--config", str(cfg), "--api-key", api_key, "--relay-url", "ws://127.0.0.1:9"]) == 0
    one = load_config(cfg)
    assert one.all_relay_urls() == ["ws://127.0.0.1:9"] and "relay_urls" not in cfg.read_text()


def test_a_relay_list_needs_a_url_and_each_url_follows_the_rules(tmp_path: Path, api_key: str) -> None:
    """An empty list is refused; plain ws:// off localhost is refused in a list too."""
    with pytest.raises(InvalidInput):
        split_urls([" , "])
    argv = ["configure", "--config", str(tmp_path / "a.toml"), "--api-key", api_key,
            "--relay-url", "ws://127.0.0.1:1,ws://relay.example.com"]  # fmt: skip
    assert cli.main(argv) != 0


def test_the_choice_moves_to_the_next_relay_and_says_when_a_round_ends() -> None:
    """advance() walks the list in order and wraps; one URL is a round by itself."""
    choice = RelayChoice([Endpoint("a", "ws://a"), Endpoint("b", "ws://b")])
    assert choice.current.shown == "a"
    assert choice.advance() is False and choice.current.shown == "b"
    assert choice.advance() is True and choice.current.shown == "a"
    single = RelayChoice([Endpoint("a", "ws://a")])
    assert single.advance() is True and single.current.shown == "a"
