"""API keys (shared/keys.py): form, entropy, checksum against typos, hashing."""

from __future__ import annotations

import math
import random
import re

import pytest

from shared import keys
from shared.errors import KeyFormatError

_FORM = re.compile(r"^vmc_[0-9A-Za-z]{38}$")


def test_generated_keys_have_the_contract_form() -> None:
    """vmc_ + base62, fixed length, valid checksum, all distinct."""
    generated = {keys.generate_key() for _ in range(200)}
    assert len(generated) == 200
    for key in generated:
        assert _FORM.match(key), key
        assert len(key) == keys.KEY_LENGTH
        assert keys.validate_key(key) == key
        assert keys.is_valid_key(key)


def test_random_part_carries_at_least_190_bits() -> None:
    """32 base62 characters: 32 * log2(62) >= 190 bits (the contract asks for 160)."""
    assert keys._RANDOM_LEN * math.log2(len(keys._ALPHABET)) >= 190
    assert len(set(keys._ALPHABET)) == 62


def test_random_part_uses_the_whole_alphabet() -> None:
    """Characters are spread over all 62 symbols (a crude check that nothing is fixed)."""
    seen = set()
    for _ in range(100):
        seen.update(keys.generate_key()[4:36])
    assert len(seen) == 62


def _typos(key: str) -> list[str]:
    out = []
    for i in range(len(key)):
        for c in keys._ALPHABET + "_":
            if c != key[i]:
                out.append(key[:i] + c + key[i + 1 :])
    return out


def _transpositions(key: str) -> list[str]:
    return [
        key[:i] + key[i + 1] + key[i] + key[i + 2 :]
        for i in range(len(key) - 1)
        if key[i] != key[i + 1]
    ]


@pytest.mark.parametrize("seed", range(5))
def test_checksum_catches_every_single_character_typo(seed: int) -> None:
    """Every one-character substitution anywhere in a sample key is refused."""
    random.seed(seed)
    key = keys.generate_key()
    for bad in _typos(key):
        assert not keys.is_valid_key(bad), bad


@pytest.mark.parametrize("seed", range(20))
def test_checksum_catches_every_adjacent_transposition(seed: int) -> None:
    """Swapping any two neighbouring (different) characters is refused."""
    key = keys.generate_key()
    for bad in _transpositions(key):
        assert not keys.is_valid_key(bad), bad


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (None, "text"),
        (123, "text"),
        ("", "vmc_"),
        ("abc_" + "A" * 38, "vmc_"),
        ("vmc_" + "A" * 37, "characters long"),
        ("vmc_" + "A" * 39, "characters long"),
        ("vmc_" + "A" * 37 + "!", "letters or digits"),
    ],
)
def test_malformed_keys_get_a_clear_error(bad: object, match: str) -> None:
    with pytest.raises(KeyFormatError, match=match):
        keys.validate_key(bad)


def test_truncated_key_is_refused() -> None:
    key = keys.generate_key()
    with pytest.raises(KeyFormatError):
        keys.validate_key(key[:-1])


def test_surrounding_whitespace_is_tolerated() -> None:
    """A key pasted with a trailing newline still validates (and comes back stripped)."""
    key = keys.generate_key()
    assert keys.validate_key(f"  {key}\n") == key


def test_key_error_is_unauthorized() -> None:
    """A bad key maps to the 401 code on the relay."""
    with pytest.raises(KeyFormatError) as info:
        keys.validate_key("nope")
    assert info.value.code == "UNAUTHORIZED" and info.value.status == 401


def test_hash_and_compare() -> None:
    """hash_key is SHA-256 hex; key_matches accepts only the right key, never an empty hash."""
    key, other = keys.generate_key(), keys.generate_key()
    h = keys.hash_key(key)
    assert re.fullmatch(r"[0-9a-f]{64}", h)
    assert keys.hash_key(key) == h
    assert keys.key_matches(key, h)
    assert not keys.key_matches(other, h)
    assert not keys.key_matches(key, None)
    assert not keys.key_matches(key, "")
    assert key not in h


def test_prefix_is_short_and_recognisable() -> None:
    key = keys.generate_key()
    prefix = keys.key_prefix(key)
    assert prefix == key[:12] and prefix.startswith("vmc_")
