"""Every subcommand and every option of ``mini-connector`` says what it is for (issue 16):
walked from the parser itself, so a new option without help fails here."""

from __future__ import annotations

import argparse

import pytest

from agent import cli


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], argparse.Action]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _walk(sub, (*path, name))
            found += [((*path, c.dest), c) for c in action._choices_actions]
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            found.append((path, action))
    return found


ACTIONS = _walk(cli.build_parser())


@pytest.mark.parametrize(("path", "action"), ACTIONS, ids=[
    " ".join(p) + " " + ("/".join(a.option_strings) or a.dest) for p, a in ACTIONS
])  # fmt: skip
def test_every_option_and_subcommand_has_help(path: tuple[str, ...], action: argparse.Action) -> None:
    assert action.help and action.help != argparse.SUPPRESS and len(action.help) > 8, (path, action)


def test_config_shows_where_it_is_looked_for_and_service_names_its_verbs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["status", "--help"])
    out = capsys.readouterr().out
    assert "MC_AGENT_CONFIG" in out and "agent.toml" in out
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "install or uninstall" in capsys.readouterr().out
