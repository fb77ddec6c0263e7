"""Tests for the alphabet (characters <-> class indices) and the train/val/test split."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from captcha_crnn.data.alphabet import Alphabet
from captcha_crnn.data.split import split_indices, split_items
from captcha_crnn.errors import CaptchaError

# ---------------------------------------------------------------- alphabet


def test_from_labels_sorted_unique():
    a = Alphabet.from_labels(["cab", "0335", "bb", "Z"])
    assert a.chars == "035Zabc"
    assert len(a) == 7
    assert a.num_classes == 8  # plus the CTC blank


def test_blank_is_zero_and_indices_start_at_one():
    a = Alphabet.from_labels(["ba"])
    assert a.index == {"a": 1, "b": 2}
    assert 0 not in a.index.values()
    assert a.encode("ab") == [1, 2]


def test_encode_decode_round_trip():
    a = Alphabet.from_labels(["hello", "world", "0042"])
    for text in ("hello", "world", "0042", "", "oooo", "dlrow240"):
        idx = a.encode(text)
        assert all(1 <= i <= len(a) for i in idx)
        assert a.decode(idx) == text


def test_decode_drops_blanks_without_collapsing_repeats():
    a = Alphabet("ab")
    assert a.decode([0, 1, 1, 0, 2, 0]) == "aab"


def test_unknown_character_raises_captcha_error_naming_it():
    a = Alphabet.from_labels(["abc"])
    with pytest.raises(CaptchaError) as ei:
        a.encode("abz")
    assert "'z'" in str(ei.value)
    assert a.unknown("xaby") == {"x", "y"}


def test_bad_alphabets():
    with pytest.raises(CaptchaError):
        Alphabet("")
    with pytest.raises(CaptchaError):
        Alphabet.from_labels([])
    with pytest.raises(ValueError):
        Alphabet("abca")


def test_equality_and_json():
    a = Alphabet.from_labels(["xy"])
    assert a == Alphabet(a.to_json())
    assert a != Alphabet("yx")
    assert a != "xy"


@settings(max_examples=60, deadline=None, database=None)
@given(st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=8))
def test_round_trip_property(labels):
    a = Alphabet.from_labels(labels)
    assert list(a.chars) == sorted(set("".join(labels)))
    for text in labels:
        idx = a.encode(text)
        assert len(idx) == len(text)
        assert all(1 <= i < a.num_classes for i in idx)
        assert a.decode(idx) == text


# ---------------------------------------------------------------- split


def test_split_deterministic_for_a_seed():
    assert split_indices(500, seed=7) == split_indices(500, seed=7)


def test_split_differs_for_another_seed():
    a = split_indices(500, seed=7)
    b = split_indices(500, seed=8)
    assert a[1] != b[1] and a[2] != b[2]


def test_split_disjoint_covering_and_sorted():
    tr, va, te = split_indices(1000, seed=0)
    assert not (set(tr) & set(va)) and not (set(tr) & set(te)) and not (set(va) & set(te))
    assert sorted(tr + va + te) == list(range(1000))
    for part in (tr, va, te):
        assert part == sorted(part)


@pytest.mark.parametrize("n", [100, 1000, 1234])
def test_split_about_80_10_10(n):
    tr, va, te = split_indices(n, seed=3)
    assert abs(len(va) - n * 0.1) <= 1
    assert abs(len(te) - n * 0.1) <= 1
    assert abs(len(tr) - n * 0.8) <= 2


def test_split_custom_fractions():
    tr, va, te = split_indices(200, seed=1, val=0.25, test=0.0)
    assert (len(tr), len(va), len(te)) == (150, 50, 0)


def test_split_small_sets_still_get_val_and_test():
    tr, va, te = split_indices(3, seed=0)
    assert len(va) == 1 and len(te) == 1 and len(tr) == 1
    assert split_indices(0, seed=0) == ([], [], [])


@pytest.mark.parametrize("val, test", [(-0.1, 0.1), (0.1, 1.0), (0.6, 0.4), (1.0, 0.0)])
def test_split_bad_fractions(val, test):
    with pytest.raises(ValueError):
        split_indices(10, seed=0, val=val, test=test)


def test_split_items_matches_indices():
    items = [f"s{i}" for i in range(50)]
    tr, va, te = split_items(items, seed=5)
    itr, iva, ite = split_indices(50, seed=5)
    assert tr == [items[i] for i in itr]
    assert va == [items[i] for i in iva]
    assert te == [items[i] for i in ite]


@settings(max_examples=80, deadline=None, database=None)
@given(
    n=st.integers(min_value=0, max_value=400),
    seed=st.integers(min_value=-(2**31), max_value=2**31),
    val=st.floats(min_value=0.0, max_value=0.45),
    test=st.floats(min_value=0.0, max_value=0.45),
)
def test_split_property_disjoint_covering_deterministic(n, seed, val, test):
    tr, va, te = split_indices(n, seed, val, test)
    assert sorted(tr + va + te) == list(range(n))
    assert len(set(tr) | set(va) | set(te)) == n
    assert (tr, va, te) == split_indices(n, seed, val, test)
    if n >= 3:
        assert (len(va) >= 1) == (val > 0)
        assert (len(te) >= 1) == (test > 0)
