"""Property tests (hypothesis): the alphabet, CTC decoding and the split, over generated inputs.

Complements test_alphabet_split.py and test_ctc.py (which hold the example-based tests and a first
round-trip / split property): here the properties run over arbitrary alphabets, log-probability
matrices with length, charset and frame-count constraints, and arbitrary item lists.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from captcha_crnn.data.alphabet import Alphabet
from captcha_crnn.data.split import split_indices, split_items
from captcha_crnn.decode.ctc import allowed_mask, beam_decode, decode_batch, greedy_decode
from captcha_crnn.errors import CaptchaError

FAST = settings(max_examples=150, deadline=None, database=None)

# ---------------------------------------------------------------- alphabet

chars_st = st.lists(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40, unique=True).map("".join)


@FAST
@given(chars=chars_st, data=st.data())
def test_alphabet_encode_decode_round_trip_over_any_alphabet(chars: str, data: st.DataObject) -> None:
    a = Alphabet(chars)
    text = data.draw(st.text(alphabet=chars, max_size=30))
    idx = a.encode(text)
    assert idx == [chars.index(c) + 1 for c in text]  # blank = 0, characters from 1 in alphabet order
    assert a.decode(idx) == text
    assert Alphabet(a.to_json()) == a and a.num_classes == len(chars) + 1


@FAST
@given(chars=chars_st, data=st.data())
def test_alphabet_decode_drops_blanks_wherever_they_are(chars: str, data: st.DataObject) -> None:
    a = Alphabet(chars)
    text = data.draw(st.text(alphabet=chars, max_size=20))
    gaps = data.draw(st.lists(st.integers(0, 3), min_size=len(text) + 1, max_size=len(text) + 1))
    idx: list[int] = []
    for c, g in zip(text, gaps):
        idx += [0] * g + [a.index[c]]
    idx += [0] * gaps[-1]
    assert a.decode(idx) == text


@FAST
@given(chars=chars_st, extra=st.characters(blacklist_categories=("Cs",)), data=st.data())
def test_alphabet_rejects_characters_outside_it_by_name(chars: str, extra: str, data: st.DataObject) -> None:
    assume(extra not in chars)
    a = Alphabet(chars)
    text = data.draw(st.text(alphabet=chars, max_size=10))
    pos = data.draw(st.integers(0, len(text)))
    bad = text[:pos] + extra + text[pos:]
    assert a.unknown(bad) == {extra}
    with pytest.raises(CaptchaError, match="not in the alphabet") as ei:
        a.encode(bad)
    assert repr(extra) in str(ei.value)


@FAST
@given(labels=st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=10), data=st.data())
def test_alphabet_from_labels_ignores_order_and_repeats(labels: list[str], data: st.DataObject) -> None:
    shuffled = data.draw(st.permutations(labels))
    assert Alphabet.from_labels(shuffled + labels) == Alphabet.from_labels(labels)


# ---------------------------------------------------------------- CTC decoding


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return (x - np.log(np.exp(x).sum(-1, keepdims=True))).astype(np.float32)


@st.composite
def logp_st(draw: st.DrawFn, t_max: int = 14, c_max: int = 7, min_t: int = 0) -> np.ndarray:
    """(T, C) log-softmax rows from logits anywhere from flat to very peaked."""
    t = draw(st.integers(min_t, t_max))
    c = draw(st.integers(2, c_max))
    logits = draw(hnp.arrays(np.float64, (t, c), elements=st.floats(-8, 8, allow_nan=False)))
    scale = draw(st.sampled_from([0.1, 1.0, 4.0]))
    return log_softmax(logits * scale)


def fits(indices: list[int], frames: int) -> bool:
    """A CTC string fits in `frames` frames iff its length plus adjacent repeats is at most that."""
    repeats = sum(a == b for a, b in zip(indices, indices[1:]))
    return len(indices) + repeats <= frames


def check_decoded(d, num_classes: int, frames: int) -> None:
    """What every decoding must give: no blanks, valid classes, a string that fits, sane confidences."""
    assert 0 not in d.indices
    assert all(1 <= i < num_classes for i in d.indices)
    assert fits(d.indices, frames)
    assert len(d.char_confidences) == len(d.indices)
    assert all(0.0 <= p <= 1.0 + 1e-6 for p in d.char_confidences)
    assert 0.0 <= d.confidence <= 1.0 + 1e-6


@FAST
@given(lp=logp_st(), beam=st.integers(1, 6))
def test_decoded_text_never_holds_blanks_and_always_fits(lp: np.ndarray, beam: int) -> None:
    t, c = lp.shape
    check_decoded(greedy_decode(lp), c, t)
    check_decoded(beam_decode(lp, beam=beam), c, t)
    check_decoded(decode_batch(lp[None], beam=beam)[0], c, t)


@FAST
@given(lp=logp_st())
def test_greedy_confidence_is_the_product_of_character_confidences(lp: np.ndarray) -> None:
    d = greedy_decode(lp)
    if d.indices:
        assert d.confidence == pytest.approx(float(np.prod(d.char_confidences)), rel=1e-5)


@st.composite
def batch_st(draw: st.DrawFn) -> tuple[np.ndarray, list[int], list[int] | None]:
    """(B, T, C) log-probs, valid frames per item and an optional charset (class indices)."""
    b = draw(st.integers(1, 4))
    t = draw(st.integers(1, 12))
    c = draw(st.integers(2, 7))
    logits = draw(hnp.arrays(np.float64, (b, t, c), elements=st.floats(-6, 6, allow_nan=False)))
    lens = draw(st.lists(st.integers(0, t), min_size=b, max_size=b))
    allowed = draw(st.none() | st.lists(st.integers(1, c - 1), min_size=1, max_size=c - 1, unique=True))
    return log_softmax(logits * 2), lens, allowed


@FAST
@given(batch=batch_st())
def test_a_beam_of_one_is_greedy_per_item_with_lengths_and_charset(batch) -> None:
    lp, lens, allowed = batch
    mask = allowed_mask(lp.shape[-1], allowed)
    out = decode_batch(lp, lengths=lens, beam=1, allowed=allowed)
    for i, n in enumerate(lens):
        g = greedy_decode(lp[i, :n], mask=mask)
        assert out[i].indices == g.indices
        assert out[i].confidence == pytest.approx(g.confidence, rel=1e-5, abs=1e-12)
        assert out[i].char_confidences == pytest.approx(g.char_confidences, rel=1e-5)


@st.composite
def confident_st(draw: st.DrawFn) -> np.ndarray:
    """Frames with one class at probability >= 0.9: a beam of one must follow the best path."""
    t = draw(st.integers(1, 14))
    c = draw(st.integers(2, 7))
    top = draw(st.lists(st.integers(0, c - 1), min_size=t, max_size=t))
    rest = draw(hnp.arrays(np.float64, (t, c), elements=st.floats(0.01, 1.0)))
    probs = rest / rest.sum(1, keepdims=True) * 0.1
    probs[np.arange(t), top] += 0.9
    return np.log(probs).astype(np.float32)


@FAST
@given(lp=confident_st())
def test_beam_search_of_width_one_equals_greedy_on_confident_frames(lp: np.ndarray) -> None:
    assert beam_decode(lp, beam=1).indices == greedy_decode(lp).indices
    assert decode_batch(lp[None], beam=1)[0].indices == greedy_decode(lp).indices


@FAST
@given(lp=logp_st(min_t=1), data=st.data())
def test_charset_constraint_is_obeyed_by_every_search(lp: np.ndarray, data: st.DataObject) -> None:
    t, c = lp.shape
    allowed = data.draw(st.lists(st.integers(1, c - 1), min_size=1, max_size=c - 1, unique=True))
    beam = data.draw(st.integers(1, 6))
    length = data.draw(st.none() | st.integers(1, t))
    d = decode_batch(lp[None], beam=beam, length=length, allowed=allowed)[0]
    assert set(d.indices) <= set(allowed)
    check_decoded(d, c, t)


@FAST
@given(lp=logp_st(min_t=1), data=st.data())
def test_length_constraint_gives_exactly_that_many_characters(lp: np.ndarray, data: st.DataObject) -> None:
    t, c = lp.shape
    assume(c >= 3)  # two or more characters: any length up to T fits (alternate them)
    length = data.draw(st.integers(1, t))
    allowed = data.draw(st.none() | st.lists(st.integers(1, c - 1), min_size=2, max_size=c - 1, unique=True))
    d = decode_batch(lp[None], beam=data.draw(st.integers(1, 6)), length=length, allowed=allowed)[0]
    assert len(d.indices) == length
    if allowed is not None:
        assert set(d.indices) <= set(allowed)
    check_decoded(d, c, t)


@FAST
@given(lp=logp_st(min_t=1), length=st.integers(1, 30))
def test_unreachable_length_falls_back_to_a_valid_string(lp: np.ndarray, length: int) -> None:
    t, c = lp.shape
    d = decode_batch(lp[None], beam=4, length=length)[0]
    check_decoded(d, c, t)
    if length <= t and c >= 3:
        assert len(d.indices) == length


# ---------------------------------------------------------------- split


@FAST
@given(
    items=st.lists(st.text(max_size=4), max_size=200),
    seed=st.integers(-(2**40), 2**40),
    val=st.floats(0.0, 0.45),
    test=st.floats(0.0, 0.45),
)
def test_split_items_keeps_order_covers_and_repeats(items: list[str], seed: int, val: float, test: float) -> None:
    parts = split_items(items, seed, val, test)
    assert parts == split_items(list(items), seed, val, test)  # deterministic for a seed
    assert sorted(parts[0] + parts[1] + parts[2]) == sorted(items)  # covering, nothing twice
    idx = split_indices(len(items), seed, val, test)
    for part, ix in zip(parts, idx):
        assert part == [items[i] for i in ix]  # each part keeps the items' order
        assert ix == sorted(ix)
    assert not (set(idx[0]) & set(idx[1]) or set(idx[0]) & set(idx[2]) or set(idx[1]) & set(idx[2]))


@FAST
@given(n=st.integers(0, 300), seed=st.integers(0, 2**31))
def test_split_depends_only_on_count_and_seed(n: int, seed: int) -> None:
    a = list(range(n))
    b = [f"x{i}" for i in range(n)]
    ia = [[a.index(x) for x in part] for part in split_items(a, seed)]
    ib = [[b.index(x) for x in part] for part in split_items(b, seed)]
    assert ia == ib == [list(p) for p in split_indices(n, seed)]


@FAST
@given(n=st.integers(1, 300), seed=st.integers(0, 2**31))
def test_split_sizes_follow_the_fractions(n: int, seed: int) -> None:
    tr, va, te = split_indices(n, seed, 0.1, 0.1)
    for part in (va, te):
        assert abs(len(part) - n * 0.1) <= 1
    assert len(tr) + len(va) + len(te) == n
