"""The console's files without a browser: no way for text to become markup or code."""

from __future__ import annotations

import re

from relay.api.console import CSP, FOLDER, load

SINKS = re.compile(r"\b(innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval|Function)\b|setTimeout\(\s*[\"'`]")


def _code(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//"))


def test_the_script_has_no_markup_or_code_sinks() -> None:
    assert SINKS.findall(_code((FOLDER / "console.js").read_text())) == []


def test_the_page_has_no_inline_script_or_style_and_names_hashed_assets() -> None:
    bundle = load()
    html = bundle.index.body.decode()
    assert "<script>" not in html and "style=" not in html and "<style" not in html
    assert "{{" not in html  # every asset named by its hash
    names = re.findall(r"/console/assets/([^\"]+)", html)
    assert sorted(names) == sorted(bundle.assets) and len(names) == 2
    assert "'unsafe-inline'" not in CSP and "'unsafe-eval'" not in CSP
