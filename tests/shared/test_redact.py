"""``shared.redact``: the early exit (a text that cannot hold a secret is returned without
running the patterns) changes nothing: every text comes out as all six substitutions
would make it, secrets in any letter case or Unicode look-alike included."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import redact as redact_module
from shared.redact import redact


def _every_pattern(text: str) -> str:
    for pattern, repl in redact_module._PATTERNS:
        text = pattern.sub(repl, text)
    return text


FRAGMENTS = [
    "vmc_", "VMC_", "abcdEFGH1234", "bearer ", "BeArEr\t", "eyJ", "eyj", "hbGciOiJIUzI1NiJ9", ".",
    "://", "postgresql", "bob", ":", "@", "/", "password", "PassWd", "pwd", "SECRET", "Token",
    "api_key", "api-key", "ApiKey", "apikey", "api key", "=", " = ", '"', "'", ";", "&", ",",
    " ", "\n", "job_0123abcd", "succeeded: 1 rows", "é", "\u017f", "\u212a", "\u0131", "\u0130", "ß", "x",
]  # fmt: skip


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=14))
def test_redact_equals_running_every_pattern(parts: list[str]) -> None:
    text = "".join(parts)
    assert redact(text) == _every_pattern(text)


@settings(max_examples=1000, deadline=None)
@given(st.text(max_size=60))
def test_redact_equals_running_every_pattern_on_any_text(text: str) -> None:
    assert redact(text) == _every_pattern(text)


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("connecting with PASSWORD=hunter2", "hunter2"),
        ("token: tok4 and more", "tok4"),
        ("pa\u017f\u017fword=hunter2", "hunter2"),  # long s: re's IGNORECASE folds it to "s"
        ("api\u212aey=zzz9", "zzz9"),  # Kelvin sign for "k"
        ("ap\u0131_key=zzz9", "zzz9"),  # dotless i for "i"
        ("url postgresql://bob:pw5@db/x", "pw5"),
        ("Authorization: BEARER abc.def", "abc.def"),
        ('{"apiKey": "k123"}', "k123"),
        ("key vmc_" + "A" * 32, "A" * 32),
        ("jwt eyJhbGciOi.eyJzdWIiOiIx.c2lnbmF0dXJl", "c2lnbmF0dXJl"),
        # a password with "@" in a URL: userinfo ends at the last "@" before the host
        ("cannot connect to postgresql://bob:p@ss9w@db:5432/x", "ss9w"),
        ("proxy http://u:a@b@c@proxy:8080 refused", "b@c"),
        # compound names: libpq's sslpassword, OAuth's client_secret and access_token
        ("sslpassword=hunter2 sslmode=require", "hunter2"),
        ("client_secret=cs9911&grant_type=x", "cs9911"),
        ("GET /odata?access_token=at5511", "at5511"),
        ("clientSecret: cs7722", "cs7722"),
        # ODBC braces (a ";" inside), and a JSON string with an escaped quote
        ("DRIVER={ODBC Driver 18};PWD={ab;cd9};UID=sa", "cd9"),
        ('{"password": "ab\\"cd9"}', "cd9"),
    ],
)
def test_secrets_never_pass(text: str, secret: str) -> None:
    assert secret not in redact(text)


@pytest.mark.parametrize(
    "text",
    [
        "Access denied for user 'bob'@'localhost' (using password: YES)",
        "Access denied for user 'bob'@'localhost' (using password: NO)",
        "GET /metrics needs a bearer token with the admin role",
        "send the Bearer header; Bearer authentication failed",
    ],
)
def test_words_about_credentials_are_not_taken_for_them(text: str) -> None:
    assert redact(text) == text


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("(using password: YESMAN)", "YESMAN"),
        ("password: YES", "YES"),  # not MySQL's phrase: a value like any other
        ("Bearer tokenized123", "tokenized123"),
        ("bearer authx", "authx"),
    ],
)
def test_the_exemptions_are_exact(text: str, secret: str) -> None:
    assert secret not in redact(text)


def test_a_text_without_any_trigger_comes_back_as_it_is() -> None:
    text = "job job_0123456789abcdef0123456789abcdef succeeded: 1 rows in 1 chunks, 3 ms; query on source src (attempt 1)"
    assert redact(text) is text
