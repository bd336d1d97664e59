"""A verified platform token is remembered until it expires (relay/web/auth.py)."""

from __future__ import annotations

import time

import pytest

from relay.web import auth
from relay.web.auth import TokenVerifier, make_token
from shared.errors import Unauthorized

SECRET = "s" * 64


def test_a_remembered_token_is_not_verified_again_until_it_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    v = TokenVerifier(SECRET)
    token = make_token(SECRET, "acme", "service", ttl=60)
    calls = []
    real = v._verify
    monkeypatch.setattr(v, "_verify", lambda t: calls.append(t) or real(t))
    first = v.verify(token)
    assert v.verify(token) == first and len(calls) == 1  # remembered
    # Past exp (+ the leeway) the cache does not answer: the token is verified again (and
    # PyJWT, on its own clock, then refuses it as expired).
    later = time.time() + 60 + auth.LEEWAY + 1
    monkeypatch.setattr(auth.time, "time", lambda: later)
    v.verify(token)
    assert len(calls) == 2


def test_a_tampered_or_foreign_token_is_refused_even_after_a_good_one() -> None:
    v = TokenVerifier(SECRET)
    good = make_token(SECRET, "acme", "admin")
    v.verify(good)
    head, payload, sig = good.split(".")
    with pytest.raises(Unauthorized):
        v.verify(f"{head}.{payload}.{sig[:-2]}AA")
    with pytest.raises(Unauthorized):
        v.verify(make_token("x" * 64, "acme", "admin"))


def test_the_cache_is_bounded() -> None:
    v = TokenVerifier(SECRET)
    for i in range(TokenVerifier.CACHE_SIZE + 50):
        v.verify(make_token(SECRET, f"t{i}", "service", sub=f"s{i}"))
    assert len(v._verified) == TokenVerifier.CACHE_SIZE
