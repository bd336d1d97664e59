"""Remove secrets from text before it is logged: API keys, bearer tokens, JWTs, URL
passwords and ``password=``-style values. Pure functions; the relay's log formatter uses
them (the agent's ``agent.logs`` filter follows the same rules)."""

from __future__ import annotations

import re
from typing import Final

_PATTERNS: Final[list[tuple[re.Pattern[str], str]]] = [
    (re.compile(r"vmc_[A-Za-z0-9]{4,}"), "vmc_****"),
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1****"),
    (re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"), "<jwt ****>"),
    (re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*):[^\s@/]*@"), r"\1:****@"),
    (
        re.compile(r"(?i)\b(password|passwd|pwd|secret|token|api[_-]?key)(\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|[^\s;&,]+)"),
        r"\1\2****",
    ),
    (
        re.compile(r"(?i)(\"(?:password|passwd|pwd|secret|token|apiKey|api_key)\"\s*:\s*)\"[^\"]*\""),
        r'\1"****"',
    ),
]


def redact(text: str) -> str:
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text
