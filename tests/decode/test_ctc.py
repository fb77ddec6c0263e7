"""Tests for captcha_crnn.decode.ctc: greedy and prefix beam search with constraints."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from captcha_crnn.data.alphabet import Alphabet
from captcha_crnn.decode.ctc import (
    allowed_mask,
    beam_decode,
    decode_batch,
    greedy_decode,
)

BLANK = 0


def frames(seq: list[int], num_classes: int, p: float = 0.9) -> np.ndarray:
    """(T, C) log-probabilities: class seq[t] has probability p, the rest share 1 - p."""
    probs = np.full((len(seq), num_classes), (1 - p) / (num_classes - 1))
    probs[np.arange(len(seq)), seq] = p
    return np.log(probs).astype(np.float32)


def from_probs(rows: list[list[float]]) -> np.ndarray:
    p = np.asarray(rows, dtype=np.float64)
    return np.log(p / p.sum(1, keepdims=True)).astype(np.float32)


def random_logp(rng: np.random.Generator, t: int, c: int, scale: float = 1.5) -> np.ndarray:
    """Random log-softmax rows; logits clipped so no class falls below the search's prune level."""
    x = np.clip(rng.normal(size=(t, c)) * scale, -4, 4)
    return log_softmax(x)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return (x - np.log(np.exp(x).sum(-1, keepdims=True))).astype(np.float32)


def collapse(path: tuple[int, ...]) -> tuple[int, ...]:
    out, prev = [], BLANK
    for k in path:
        if k != BLANK and k != prev:
            out.append(k)
        prev = k
    return tuple(out)


def exact_scores(logp: np.ndarray, allowed=None) -> dict[tuple[int, ...], float]:
    """Probability of every string, summed over all its CTC alignments (brute force)."""
    t, c = logp.shape
    lp = logp.astype(np.float64)
    out: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(c), repeat=t):
        if allowed is not None and any(k != BLANK and k not in allowed for k in path):
            continue
        s = collapse(path)
        out[s] = out.get(s, 0.0) + math.exp(sum(lp[i, k] for i, k in enumerate(path)))
    return out


def feasible(indices: list[int], t: int) -> bool:
    """A CTC string fits in t frames iff its length plus its adjacent repeats is at most t."""
    repeats = sum(a == b for a, b in zip(indices, indices[1:], strict=False))
    return len(indices) + repeats <= t


# ---------------------------------------------------------------- greedy


def test_greedy_collapses_repeats_and_drops_blanks():
    alpha = Alphabet("ab")
    lp = frames([1, 1, BLANK, 1], 3)  # a a - a
    d = greedy_decode(lp)
    assert d.indices == [1, 1]
    assert alpha.decode(d.indices) == "aa"

    lp = frames([BLANK, 1, 1, 2, 2, BLANK, BLANK, 1, 2, 2], 3)
    assert alpha.decode(greedy_decode(lp).indices) == "abab"


def test_greedy_all_blank_is_empty():
    d = greedy_decode(frames([BLANK] * 5, 4, p=0.8))
    assert d.indices == [] and d.char_confidences == []
    assert d.confidence == pytest.approx(0.8**5, rel=1e-4)


def test_greedy_char_confidences_take_the_best_frame_of_a_run():
    lp = from_probs([[0.2, 0.6, 0.2], [0.1, 0.8, 0.1], [0.7, 0.2, 0.1], [0.2, 0.7, 0.1]])
    d = greedy_decode(lp)
    assert d.indices == [1, 1]
    assert d.char_confidences == pytest.approx([0.8, 0.7], rel=1e-5)
    assert d.confidence == pytest.approx(0.56, rel=1e-5)


def reference_greedy(lp: np.ndarray) -> list[int]:
    return list(collapse(tuple(int(k) for k in lp.argmax(1))))


def test_greedy_matches_argmax_collapse_on_random_matrices():
    rng = np.random.default_rng(0)
    for _ in range(200):
        lp = random_logp(rng, int(rng.integers(1, 30)), int(rng.integers(2, 12)), scale=3)
        assert greedy_decode(lp).indices == reference_greedy(lp)


# ---------------------------------------------------------------- beam vs greedy


def test_decode_batch_beam_one_is_greedy_on_random_matrices():
    rng = np.random.default_rng(1)
    for _ in range(50):
        b, t, c = 3, int(rng.integers(1, 20)), int(rng.integers(2, 8))
        lp = np.stack([random_logp(rng, t, c, scale=3) for _ in range(b)])
        out = decode_batch(lp, beam=1)
        for i in range(b):
            g = greedy_decode(lp[i])
            assert out[i].indices == g.indices
            assert out[i].confidence == pytest.approx(g.confidence)


@settings(max_examples=100, deadline=None, database=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    t=st.integers(1, 16),
    c=st.integers(2, 6),
)
def test_beam_width_one_equals_greedy_when_frames_are_confident(seed, t, c):
    # With a dominant class (p >= 0.9) in every frame the best path is also the best prefix,
    # so a beam of one follows greedy. (On flat matrices they may rightly differ.)
    rng = np.random.default_rng(seed)
    top = rng.integers(0, c, size=t)
    probs = rng.dirichlet(np.ones(c), size=t) * 0.1
    probs[np.arange(t), top] += 0.9
    lp = np.log(probs).astype(np.float32)
    assert beam_decode(lp, beam=1).indices == greedy_decode(lp).indices


def test_beam_beats_greedy_on_crafted_case():
    # Two frames, P(blank) = 0.6, P(a) = 0.4 each. Best path is "--" (0.36) -> "",
    # but "a" has aa + a- + -a = 0.16 + 0.24 + 0.24 = 0.64.
    lp = from_probs([[0.6, 0.4], [0.6, 0.4]])
    assert greedy_decode(lp).indices == []
    d = beam_decode(lp, beam=4)
    assert d.indices == [1]
    assert d.confidence == pytest.approx(0.64, rel=1e-4)
    assert [x.indices for x in decode_batch(lp[None], beam=4)] == [[1]]
    assert [x.indices for x in decode_batch(lp[None], beam=1)] == [[]]


def test_beam_beats_greedy_on_three_classes():
    # best path: a, -, b -> "ab" (0.4*0.5*0.4=0.08); but "a" collects a,a,- / a,-,- / -,a,- ...
    lp = from_probs([[0.35, 0.4, 0.25], [0.5, 0.3, 0.2], [0.3, 0.3, 0.4]])
    scores = exact_scores(lp)
    best = max(scores, key=scores.get)
    assert list(best) != greedy_decode(lp).indices  # the case is really crafted
    assert tuple(beam_decode(lp, beam=8).indices) == best


def test_beam_finds_the_exact_most_probable_string():
    rng = np.random.default_rng(2)
    for _ in range(25):
        t, c = int(rng.integers(1, 6)), int(rng.integers(2, 4))
        lp = random_logp(rng, t, c)
        scores = exact_scores(lp)
        best = max(scores, key=scores.get)
        d = beam_decode(lp, beam=256)
        assert tuple(d.indices) == best
        assert d.confidence == pytest.approx(scores[best], rel=1e-3)


# ---------------------------------------------------------------- length constraint


def test_length_constraint_returns_exactly_n_characters():
    lp = frames([1, BLANK, 2, BLANK, BLANK, BLANK], 4, p=0.97)  # clearly "ab"
    assert greedy_decode(lp).indices == [1, 2]
    for n in (1, 2, 3, 4):
        d = beam_decode(lp, beam=8, length=n)
        assert len(d.indices) == n
        assert len(d.char_confidences) == n
        assert feasible(d.indices, len(lp))
    assert beam_decode(lp, beam=8, length=2).indices == [1, 2]
    for n in (1, 3, 5):
        out = decode_batch(lp[None], length=n)  # beam=1 still searches with the constraint
        assert len(out[0].indices) == n


def test_length_constraint_picks_most_probable_string_of_that_length():
    rng = np.random.default_rng(3)
    for _ in range(25):
        t, c = int(rng.integers(2, 6)), 3
        lp = random_logp(rng, t, c)
        scores = exact_scores(lp)
        for n in range(1, t + 1):
            of_len = {s: p for s, p in scores.items() if len(s) == n}
            best = max(of_len, key=of_len.get)
            d = beam_decode(lp, beam=256, length=n)
            assert tuple(d.indices) == best, (n, of_len)
            assert d.confidence == pytest.approx(of_len[best], rel=1e-3)


def test_length_constraint_property_on_random_matrices():
    rng = np.random.default_rng(4)
    for _ in range(60):
        t, c = int(rng.integers(2, 20)), int(rng.integers(3, 10))
        lp = random_logp(rng, t, c, scale=2)
        n = int(rng.integers(1, t + 1))  # always possible with >= 2 distinct characters
        d = decode_batch(lp[None], length=n, beam=int(rng.integers(1, 10)))[0]
        assert len(d.indices) == n
        assert feasible(d.indices, t)


def test_length_constraint_unreachable_falls_back():
    lp = frames([1, 2], 3)
    d = beam_decode(lp, beam=8, length=5)  # 2 frames cannot hold 5 characters
    assert d.indices == [1, 2]
    assert d.confidence < 1.0


def test_length_constraint_unreachable_still_returns_a_decoded():
    d = beam_decode(frames([1, 2], 3), beam=8, length=5)
    assert len(d.char_confidences) == len(d.indices)
    assert 0.0 <= d.confidence <= 1.0


def test_length_constraint_with_very_confident_frames():
    lp = frames([1, 1, 1], 3, p=1 - 2e-6)  # other classes at ~1e-6 (log ~ -13.8)
    d = beam_decode(lp, beam=8, length=3)
    assert feasible(d.indices, 3), d.indices  # 'aaa' needs 5 frames: a - a - a
    assert d.indices == [1, 2, 1]


# ---------------------------------------------------------------- charset constraint


def test_allowed_mask():
    m = allowed_mask(5, [2, 4])
    assert m.tolist() == [True, False, True, False, True]
    assert allowed_mask(5, None) is None


def test_allowed_constraint_replaces_forbidden_best_class():
    lp = from_probs([[0.1, 0.2, 0.1, 0.6], [0.8, 0.05, 0.05, 0.1], [0.1, 0.1, 0.3, 0.5]])
    assert greedy_decode(lp).indices == [3, 3]
    for beam in (1, 8):
        d = decode_batch(lp[None], beam=beam, allowed=[1, 2])[0]
        assert d.indices == [1, 2]


def test_allowed_constraint_never_emits_other_classes():
    rng = np.random.default_rng(5)
    for _ in range(60):
        t, c = int(rng.integers(1, 25)), int(rng.integers(3, 10))
        lp = random_logp(rng, t, c, scale=3)
        size = int(rng.integers(1, c - 1))
        allowed = sorted(rng.choice(np.arange(1, c), size=size, replace=False))
        for kw in ({"beam": 1}, {"beam": 6}, {"beam": 4, "length": int(rng.integers(1, t + 1))}):
            d = decode_batch(lp[None], allowed=allowed, **kw)[0]
            assert set(d.indices) <= set(int(a) for a in allowed), (kw, d.indices, allowed)


def test_allowed_constraint_matches_exact_search():
    rng = np.random.default_rng(6)
    for _ in range(15):
        t, c = int(rng.integers(1, 5)), 4
        lp = random_logp(rng, t, c)
        allowed = [1, 3]
        scores = exact_scores(lp, allowed=set(allowed))
        best = max(scores, key=scores.get)
        d = beam_decode(lp, beam=256, mask=allowed_mask(c, allowed))
        assert tuple(d.indices) == best
        assert d.confidence == pytest.approx(scores[best], rel=1e-3)


# ---------------------------------------------------------------- confidences


def test_confidences_in_unit_interval_and_one_per_character():
    rng = np.random.default_rng(7)
    for _ in range(80):
        t, c = int(rng.integers(1, 25)), int(rng.integers(2, 12))
        lp = log_softmax(rng.normal(size=(t, c)) * float(rng.uniform(0.1, 10)))
        results = [greedy_decode(lp), beam_decode(lp, beam=1), beam_decode(lp, beam=10)]
        results.append(beam_decode(lp, beam=5, length=int(rng.integers(1, t + 1))))
        if c > 2:
            results.append(beam_decode(lp, beam=5, mask=allowed_mask(c, [1])))
        for d in results:
            assert len(d.char_confidences) == len(d.indices)
            assert 0.0 <= d.confidence <= 1.0
            assert all(0.0 <= x <= 1.0 for x in d.char_confidences)


def test_beam_char_confidences_follow_best_alignment():
    lp = from_probs([[0.1, 0.7, 0.2], [0.1, 0.85, 0.05], [0.9, 0.05, 0.05], [0.2, 0.1, 0.7]])
    d = beam_decode(lp, beam=8)
    assert d.indices == [1, 2]
    assert d.char_confidences == pytest.approx([0.85, 0.7], rel=1e-4)


# ---------------------------------------------------------------- batches and torch


def test_decode_batch_accepts_torch_and_respects_lengths():
    c = 4
    seqs = [[1, BLANK, 2, BLANK, 3, 3], [2, 2, BLANK, 3, 3, 3], [1, 1, 1, 1, 1, 1]]
    lp_np = np.stack([frames(s, c) for s in seqs])
    lengths = [6, 3, 0]
    expect = [[1, 2, 3], [2], []]
    tensors = [
        torch.from_numpy(lp_np),
        torch.from_numpy(lp_np).double(),
        torch.from_numpy(lp_np).requires_grad_(True),
    ]
    for lp in tensors:
        for lens in (lengths, torch.tensor(lengths), np.array(lengths)):
            for beam in (1, 5):
                out = decode_batch(lp, lengths=lens, beam=beam)
                assert [d.indices for d in out] == expect
    # without lengths every frame counts
    assert [d.indices for d in decode_batch(torch.from_numpy(lp_np))] == [[1, 2, 3], [2, 3], [1]]


def test_decode_batch_items_match_single_decoding():
    rng = np.random.default_rng(8)
    lp = np.stack([random_logp(rng, 12, 6, scale=3) for _ in range(4)])
    lengths = [12, 7, 1, 9]
    for beam in (1, 4):
        out = decode_batch(torch.from_numpy(lp), lengths=lengths, beam=beam)
        for i, n in enumerate(lengths):
            single = beam_decode(lp[i, :n], beam=beam) if beam > 1 else greedy_decode(lp[i, :n])
            assert out[i].indices == single.indices
            assert out[i].confidence == pytest.approx(single.confidence, rel=1e-5)


def test_greedy_and_beam_accept_torch_tensors():
    lp = frames([1, BLANK, 2, 2], 3)
    t = torch.from_numpy(lp)
    assert greedy_decode(t).indices == [1, 2]
    assert beam_decode(t, beam=4).indices == [1, 2]
