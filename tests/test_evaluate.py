"""Tests for captcha_crnn.evaluate: alignment and scores."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from captcha_crnn.evaluate import SURE_LISTED, Report, align, format_report, score, sure_misses

# ---------------------------------------------------------------- align


@pytest.mark.parametrize(
    "truth, pred, dist, matched",
    [
        ("abc", "abc", 0, 3),
        ("abc", "abd", 1, 2),
        ("abc", "ac", 1, 2),  # deletion
        ("ac", "abc", 1, 2),  # insertion
        ("abc", "", 3, 0),
        ("", "xyz", 3, 0),
        ("", "", 0, 0),
        ("kitten", "sitting", 3, 4),
        ("0335", "335", 1, 3),
        ("aaaa", "aa", 2, 2),
    ],
)
def test_align_distances(truth, pred, dist, matched):
    d, m, subs = align(truth, pred)
    assert (d, m) == (dist, matched)
    assert d >= len(subs)
    assert m + len(subs) <= min(len(truth), len(pred))


def test_align_substitution_pairs():
    assert align("abc", "abd")[2] == [("c", "d")]
    assert sorted(align("kitten", "sitting")[2]) == [("e", "i"), ("k", "s")]
    assert align("abc", "ac")[2] == []
    assert sorted(align("ab12", "xb1Z")[2]) == [("2", "Z"), ("a", "x")]


def _levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


@settings(max_examples=150, deadline=None, database=None)
@given(st.text(alphabet="abc01", max_size=9), st.text(alphabet="abc01", max_size=9))
def test_align_property(truth, pred):
    d, m, subs = align(truth, pred)
    assert d == _levenshtein(truth, pred)
    assert all(t != p for t, p in subs)
    # an alignment: matches + substitutions + deletions + insertions accounts for the distance
    dels_ins = len(truth) + len(pred) - 2 * (m + len(subs))
    assert len(subs) + dels_ins == d
    assert (d == 0) == (truth == pred)


# ---------------------------------------------------------------- score


def test_score_known_example():
    truths = ["abc", "abcd", "xy"]
    preds = ["abc", "abed", "x"]
    r = score(truths, preds)
    assert isinstance(r, Report)
    assert r.n == 3
    assert r.sequence_accuracy == pytest.approx(1 / 3)
    assert r.char_accuracy == pytest.approx(7 / 9)  # 3 + 3 + 1 of 9 truth characters
    assert r.cer == pytest.approx(2 / 9)  # one substitution, one deletion
    assert r.by_length == {
        "2": {"n": 1, "sequence_accuracy": 0.0},
        "3": {"n": 1, "sequence_accuracy": 1.0},
        "4": {"n": 1, "sequence_accuracy": 0.0},
    }
    assert r.confusions == [("c", "e", 1)]


def test_score_all_right_and_all_wrong():
    r = score(["ab", "cd"], ["ab", "cd"])
    assert (r.sequence_accuracy, r.char_accuracy, r.cer) == (1.0, 1.0, 0.0)
    assert r.confusions == []
    r = score(["ab", "cd"], ["", ""])
    assert (r.sequence_accuracy, r.char_accuracy, r.cer) == (0.0, 0.0, 1.0)


def test_score_cer_can_exceed_one_with_insertions():
    r = score(["ab"], ["abxyz"])
    assert r.cer == pytest.approx(3 / 2)
    assert r.char_accuracy == 1.0
    assert r.sequence_accuracy == 0.0


def test_score_confusions_count_and_order():
    truths = ["0o0", "o0", "l1", "O"]
    preds = ["ooo", "oo", "11", "0"]
    r = score(truths, preds)
    assert r.confusions[0] == ("0", "o", 3)
    assert set(r.confusions) == {("0", "o", 3), ("l", "1", 1), ("O", "0", 1)}
    counts = [c for _, _, c in r.confusions]
    assert counts == sorted(counts, reverse=True)


def test_score_confusions_keep_at_most_ten():
    truths = [chr(ord("a") + i) for i in range(15)]
    preds = [chr(ord("A") + i) for i in range(15)]
    assert len(score(truths, preds).confusions) == 10


def test_by_length_sorted_numerically():
    r = score(["a" * 10, "a" * 9, "a" * 9, "a"], ["a" * 10, "a" * 9, "b", "a"])
    assert list(r.by_length) == ["1", "9", "10"]
    assert r.by_length["9"] == {"n": 2, "sequence_accuracy": 0.5}


def test_case_insensitive_folding():
    truths = ["AbC", "xY", "Q"]
    preds = ["abc", "XY", "o"]
    strict = score(truths, preds)
    assert strict.sequence_accuracy == 0.0
    folded = score(truths, preds, case_insensitive=True)
    assert folded.sequence_accuracy == pytest.approx(2 / 3)
    assert folded.char_accuracy == pytest.approx(5 / 6)
    assert folded.cer == pytest.approx(1 / 6)
    assert folded.confusions == [("q", "o", 1)]


def test_score_empty_and_mismatched_lengths():
    r = score([], [])
    assert (r.n, r.sequence_accuracy, r.char_accuracy, r.cer) == (0, 0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        score(["a"], ["a", "b"])


def test_report_to_dict_and_format():
    r = score(["abc", "abd"], ["abc", "abe"])
    d = r.to_dict()
    assert d["confusions"] == [{"truth": "d", "pred": "e", "count": 1}]
    assert d["n"] == 2 and d["sequence_accuracy"] == 0.5
    text = format_report(r, "test")
    assert text.startswith("test: n=2")
    assert "50.00%" in text and "d->e x1" in text


def test_selective_accuracy_trades_coverage_for_accuracy() -> None:
    from captcha_crnn.evaluate import selective

    rows = selective(["ab", "cd", "ef", "gh"], ["ab", "cd", "xx", "GH"], [0.99, 0.9, 0.4, 0.7],
                     thresholds=(0.0, 0.5, 0.95, 1.0))
    assert [(r["coverage"], r["accuracy"]) for r in rows] == [(1.0, 0.5), (0.75, 2 / 3), (0.25, 1.0), (0.0, 1.0)]
    assert selective(["gh"], ["GH"], [0.7], case_insensitive=True, thresholds=(0.5,))[0]["accuracy"] == 1.0


def test_sure_misses_are_confident_misreadings_surest_first() -> None:
    paths = ["a.png", "b.png", "c.png", "d.png"]
    found = sure_misses(paths, ["ab", "cd", "ef", "Gh"], ["ab", "cx", "ey", "gh"], [0.999, 0.995, 0.999, 0.999])
    assert [(m["file"], m["read"]) for m in found] == [("c.png", "ey"), ("d.png", "gh"), ("b.png", "cx")]
    assert [m["file"] for m in sure_misses(paths, ["ab", "cd", "ef", "Gh"], ["ab", "cx", "ey", "gh"],
                                           [0.9, 0.5, 0.999, 0.999], case_insensitive=True)] == ["c.png"]
    many = sure_misses([f"{i}.png" for i in range(15)], ["a"] * 15, ["b"] * 15, [1.0] * 15)
    r = score(["a"] * 15, ["b"] * 15)
    r.sure_misses = many
    text = format_report(r)
    assert text.count("read 'b'") == SURE_LISTED and "and 5 more" in text
    assert "sure_misses" in r.to_dict() and "sure_misses" not in score(["a"], ["a"]).to_dict()
