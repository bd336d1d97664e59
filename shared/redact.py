"""Remove secrets from text before it is logged: API keys, bearer tokens, JWTs, URL
passwords and ``password=``-style values. Pure functions; the relay's log formatter uses
them (the agent's ``agent.logs`` filter follows the same rules)."""

from __future__ import annotations

import re
from typing import Final

_PATTERNS: Final[list[tuple[re.Pattern[str], str]]] = [
    (re.compile(r"vmc_[A-Za-z0-9]{4,}"), "vmc_****"),
    # "bearer token", "Bearer header": a word about the scheme, not a credential
    (re.compile(r"(?i)(bearer\s+)(?!(?:tokens?|header|scheme|auth|authentication|authorization)\b)[A-Za-z0-9._~+/=-]+"), r"\1****"),
    (re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"), "<jwt ****>"),
    # userinfo ends at the last "@" before the host: a password may hold "@" itself
    (re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*):[^\s/]*@"), r"\1:****@"),
    (
        # MySQL's "(using password: YES)" says whether one was sent, not what it was
        # no word boundary before the name: sslpassword, client_secret, access_token;
        # an ODBC value in braces may hold ";" ("}}" is a literal "}")
        re.compile(r"(?i)(?!password: (?:YES|NO)\))(password|passwd|pwd|secret|token|api[_-]?key)(\s*[=:]\s*)(\{(?:[^}]|\}\})*\}|\"[^\"]*\"|'[^']*'|[^\s;&,]+)"),
        r"\1\2****",
    ),
    (
        re.compile(r"(?i)(\"[A-Za-z0-9_-]*(?:password|passwd|pwd|secret|token|api[_-]?key)\"\s*:\s*)\"(?:[^\"\\]|\\.)*\""),
        r'\1"****"',
    ),
]


# For each pattern above, a substring every match of it contains, lower-cased: "vmc_",
# "bearer", "eyJ", "://", and the names (password and passwd both contain "passw";
# api[_-]?key, apiKey and api_key are "apikey", "api_key" or "api-key"). In ASCII text,
# re's IGNORECASE is exactly ASCII case-insensitivity, so a text whose lower-cased form
# holds none of these matches no pattern and comes back unchanged: redact skips the six
# substitutions (most log lines). Other text (IGNORECASE also folds some non-ASCII letters,
# such as the long s U+017F to "s" or the Kelvin sign to "k") always goes through every pattern.
_TRIGGERS: Final[tuple[str, ...]] = (
    "vmc_", "bearer", "eyj", "://", "passw", "pwd", "secret", "token", "apikey", "api_key", "api-key",
)  # fmt: skip


def redact(text: str) -> str:
    if text.isascii():
        lowered = text.lower()
        for trigger in _TRIGGERS:
            if trigger in lowered:
                break
        else:
            return text  # no pattern can match (see _TRIGGERS)
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text
