"""The tokens every SQL tokenizer here produces (``sqltext`` for most dialects,
``mysqllex`` for MySQL/MariaDB), and the error they raise."""

from __future__ import annotations

from dataclasses import dataclass

from shared.errors import JobError

WS, COMMENT, STRING, IDENT, WORD, NUMBER, PARAM, PUNCT, SEMI = (
    "ws", "comment", "string", "ident", "word", "number", "param", "punct", "semi",
)  # fmt: skip

class SqlTextError(JobError):
    """The statement cannot be read safely (unterminated literal, hidden code...)."""

    def __init__(self, message: str, code: str = "QUERY_FAILED") -> None:
        super().__init__(code, message, retryable=False)


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    pos: int

    @property
    def upper(self) -> str:
        return self.text.upper()
