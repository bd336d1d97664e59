"""CSV cells a spreadsheet shows and does not run (formula neutralising for CSV results)."""

from __future__ import annotations

import re
from typing import Any, Final

# A cell a spreadsheet may run as a formula starts with one of these (OWASP, CSV
# injection): = + - @, and tab or carriage return, which some tools skip before looking.
FORMULA_STARTS: Final = ("=", "+", "-", "@", "\t", "\r")
NUMERIC_TYPES: Final = frozenset({"integer", "number", "decimal"})
PLAIN_NUMBER: Final = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def csv_cell(value: Any, numeric: bool) -> Any:
    """``value`` as a CSV cell a spreadsheet will show, not run: text starting with a
    formula character gets a leading ``'`` (what spreadsheet tools take as "this is
    text"). Left as they are: JSON numbers (``-5`` cannot be a formula) and text that is a
    plain number in ASCII (``"-5.20"``: decimals travel as strings, and SQLite or a text
    column holds amounts as text), which a spreadsheet reads as that number and nothing
    else. ``numeric`` (the column is typed integer/number/decimal) is kept for callers;
    the plain-number test alone decides."""
    del numeric
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        if PLAIN_NUMBER.fullmatch(value):
            return value
        return "'" + value
    return value
