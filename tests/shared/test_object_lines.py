"""The relay's intake check of object lines: its whole-payload proof
(``shared.rows._whole_payload_check``) against the line-by-line check it shortcuts.

The proof may decline (None) whatever it likes, but whenever it answers it must give the
count the line-by-line check gives, and never pass a payload that check refuses. The
payloads are built to fool it: JSON documents joined with and without commas and cut into
lines at any byte, so that newlines fall inside arrays, objects and strings, next to
``],[`` and blanks; strings hold brackets, quotes, escapes and characters beyond the BMP.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import simdjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.rows import _each_line_check, _whole_payload_check, encode_objects, object_lines_count

_text = st.text(alphabet=st.sampled_from(list('ab[]{},:"\\ \t\u00e9\u2028\U0001f600')), max_size=6)
_scalar = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**12), st.floats(allow_nan=False,
                    allow_infinity=False), _text)  # fmt: skip
_json = st.recursive(_scalar, lambda inner: st.one_of(st.lists(inner, max_size=4),
                     st.dictionaries(_text, inner, max_size=4)), max_leaves=12)  # fmt: skip
_separators = st.sampled_from([(",", ":"), (", ", ": "), (" ,\t", "\r:"), ("\t,\r", ":")])
_joins = st.sampled_from(["", ",", " , ", "\t,\r", "],[", "] , [", "}\n{", "\n"])


def _line_by_line(payload: bytes) -> int | None:
    try:
        return _each_line_check(payload, simdjson)
    except ValueError:
        return None


@st.composite
def _tricky_payloads(draw: Any) -> bytes:
    docs = draw(st.lists(st.one_of(st.dictionaries(_text, _json, max_size=4), _json), min_size=1, max_size=6))
    seps = draw(_separators)
    parts = [json.dumps(d, separators=seps, ensure_ascii=draw(st.booleans())) for d in docs]
    text = parts[0]
    for part in parts[1:]:
        text += draw(_joins) + part
    # Newlines anywhere (inside values and strings, next to commas), or in place of a
    # comma (each joint of the proof brings its own comma).
    commas = [i for i, ch in enumerate(text) if ch == ","]
    cuts = draw(st.sets(st.integers(0, len(text)), max_size=4))
    swaps = draw(st.sets(st.sampled_from(commas), max_size=3)) if commas else set()
    for at in sorted(cuts | swaps, reverse=True):
        text = text[:at] + "\n" + text[at + 1 if at in swaps else at :]
    return text.encode("utf-8", "surrogatepass") + b"\n"


# Token soup: short runs of structural tokens with newlines among them, every line opening
# with "{" (anything else is declined before a parse); finds the shapes a random document
# rarely has, such as a line closing an array of arrays and opening the next row.
_tokens = st.sampled_from(["{", "}", "[", "]", ",", '"k":', "1", '"]\\",["', " ", "\t", "\n", "\n{"])
_soup = st.lists(_tokens, min_size=1, max_size=16).map(lambda ts: ("{" + "".join(ts) + "\n").encode())


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_tricky_payloads(), _soup))
def test_the_proof_never_passes_what_the_line_check_refuses(payload: bytes) -> None:
    proved = _whole_payload_check(payload, simdjson)
    if proved is not None:
        assert proved == _line_by_line(payload) == payload.count(b"\n")
    lines = payload.count(b"\n")  # a sender's declared count, right or wrong, changes nothing
    for declared in (lines, lines - 1, lines + 1, 2 * lines):
        given = _whole_payload_check(payload, simdjson, declared)
        assert given is None or given == proved == declared == lines


@settings(max_examples=300, deadline=None)
@given(st.lists(st.dictionaries(_text, _json, min_size=1, max_size=4), min_size=1, max_size=20),
       _separators)  # fmt: skip
def test_well_formed_lines_are_proved_unless_they_hold_the_separator(rows: list[dict[str, Any]],
                                                                     seps: tuple[str, str]) -> None:  # fmt: skip
    """The shortcut is taken on what agents send: every well-formed payload is proved,
    except one that holds ``],[`` (blanks allowed) somewhere, which is checked line by line."""
    payload = "".join(json.dumps(r, separators=seps) + "\n" for r in rows).encode()
    proved = _whole_payload_check(payload, simdjson)
    if proved is None:
        import re

        assert re.search(rb"\][ \t\r]*,[ \t\r]*\[", payload)
    else:
        assert proved == len(rows)
    assert object_lines_count(payload) == len(rows)


def test_both_outcomes_occur_on_the_crafted_cases() -> None:
    """The crafted payloads that fooled a single joined parse are declined and refused."""
    fooling = [
        b'{"id":[1\n2]},{"id":3}\n',  # the old test's case
        b'{"a":[{}\n{}]},{}\n',  # a newline inside an array of objects
        b'{"a":[[{}\n{}]]}],[{}\n',  # and a ],[ on the line after it
        b'{"a":[[{}\n{}]]}] ,\t[{}\n',
        b'{"a":"x\ny"},{}\n',  # a newline inside a string
    ]
    for payload in fooling:
        assert _whole_payload_check(payload, simdjson) is None
        with pytest.raises(ValueError):
            object_lines_count(payload)
    good = encode_objects(["id", "tags", "doc"], [[i, [i, "]"], {"k": [[1], [2]], "s": "],["}] for i in range(50)])
    assert _whole_payload_check(good, simdjson) is None  # holds ],[ in a string: line by line
    plain = encode_objects(["id", "tags"], [[i, [i, 2]] for i in range(50)])
    assert _whole_payload_check(plain, simdjson) == 50 == object_lines_count(plain)
    assert _whole_payload_check(plain, simdjson, 50) == 50 == object_lines_count(plain, expected=50)
    for wrong in (0, 1, 49, 51, 100):  # the declared count is proved, not taken
        assert _whole_payload_check(plain, simdjson, wrong) is None
        assert object_lines_count(plain, expected=wrong) == 50
    for odd in (b'{"a":1}\n\n{"a":2}\n', b'{"a":1}\n {"a":2}\n', b'{"a":1}\n[1]\n'):  # a line not opening with {
        assert _whole_payload_check(odd, simdjson, odd.count(b"\n")) is None


def test_a_chunk_past_a_mebibyte_is_checked_line_by_line() -> None:
    """A parser's memory grows with the document (~120 MiB for 8 MiB of one-number lines)
    and each chunk thread keeps its own: past 1 MiB the proof declines, the lines are
    still checked and counted."""
    big = b'{"c":1}\n' * ((1 << 20) // 8 + 1)
    assert _whole_payload_check(big, simdjson) is None
    assert object_lines_count(big) == (1 << 20) // 8 + 1
    small = big[: 8 * 1000]
    assert _whole_payload_check(small, simdjson) == 1000


@pytest.mark.parametrize("line", [b'{"n":123456789012345678901234567890}', b'{"d":' + b"[" * 1100 + b"]" * 1100 + b"}",
                                  b'{"f":1e400}', b'{"s":"\\ud800"}'])  # fmt: skip
def test_values_the_parser_cannot_hold_are_refused_not_raised(line: bytes) -> None:
    """simdjson raises RuntimeError (not ValueError) for an integer past 64 bits and for
    nesting past 1024 levels: the intake check refuses such a line as it refuses bad JSON
    (a protocol error for the agent) instead of failing inside the relay, where the frame
    was logged as the relay's own failure and its job left waiting."""
    payload = b'{"n":1}\n' + line + b"\n"
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        object_lines_count(payload)
    assert _whole_payload_check(payload, simdjson) is None
