"""Held-out accuracy against the time budget of the default command, and what the remaining misses are.

    python benchmarks/time_curve.py [--dataset generic_varlen] [--minutes 10 30 60] [--seed 0] [--set FIELD=VALUE]
        [--root ../shared/datasets] [--json benchmarks/results/time_curve.json] [--gallery PNG] [--table JSON]

Each budget is one `captcha-crnn train DATA --max-minutes M`; the output reads the test split `train` made
(benchmarks/harness.py). Misses by kind: lookalike (same length, every differing character a LOOKALIKES
pair), length, other; "if lookalikes counted" is the accuracy when lookalikes count as right (what is
font ambiguity rather than the model). The longest budget's misses are drawn (--gallery). Prints a table
and writes JSON.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Any

from harness import DATASETS, Scenario, Trained, markdown, measure, parse, whole

from captcha_crnn import Recognizer
from captcha_crnn.data.images import load_image
from captcha_crnn.evaluate import align, fold
from captcha_crnn.viz import errors_gallery

LOOKALIKES = ("0oOQD", "1lIij|", "5sS", "2zZ", "9gq", "6b", "8B", "uvUV", "cC", "kK", "wW", "xX", "pP", "yY")


def miss_kind(truth: str, pred: str) -> str:
    """'right', 'length', 'lookalike' (every differing character a LOOKALIKES pair) or 'other'."""
    if truth == pred or len(truth) != len(pred):
        return "right" if truth == pred else "length"
    subs = align(truth, pred)[2]
    return "lookalike" if subs and all(any(t in g and p in g for g in LOOKALIKES) for t, p in subs) else "other"


def breakdown(truths: list[str], preds: list[str]) -> dict[str, Any]:
    """Counts of each kind, the commonest substitutions and the accuracy if lookalikes counted."""
    kinds = Counter(miss_kind(t, p) for t, p in zip(truths, preds))
    subs = Counter(s for t, p in zip(truths, preds) if t != p and len(t) == len(p) for s in align(t, p)[2])
    return {"n": len(truths), **{k: kinds[k] for k in ("right", "length", "lookalike", "other")},
            "accuracy_if_lookalikes_counted": (kinds["right"] + kinds["lookalike"]) / len(truths),
            "top_substitutions": [f"{t}->{p} x{c}" for (t, p), c in subs.most_common(12)]}


def misses(t: Trained, sc: Scenario, gallery: Path | None) -> dict[str, Any]:
    """The output's misses by kind and its input height; its error gallery where asked."""
    truths, preds = [fold(s.label, sc.case == "insensitive") for s in sc.held], [p or "" for p in t.readings]
    pre = Recognizer.load(t.result.model_path).preprocess
    if gallery:
        errors_gallery([load_image(s.path, pre) for s in sc.held], truths, preds, gallery)
    return {"dataset": sc.name, "input_height": pre.height, **breakdown(truths, preds)}


def table(rows: list[dict[str, Any]]) -> str:
    return markdown(["dataset", "budget", "held-out", "if lookalikes counted", "misses: length / lookalike / other",
                     "output, input rows"], ([r["dataset"], f"{r['budget_minutes']:g} min", f"{r['accuracy']:.2%}",
                                              f"{r['accuracy_if_lookalikes_counted']:.2%}",
                                              f"{r['length']} / {r['lookalike']} / {r['other']}",
                                              f"{r['reader']}, {r['input_height']}"]
                                             for r in sorted(rows, key=lambda r: (r["dataset"], r["budget_minutes"]))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=list(DATASETS), default="generic_varlen")
    ap.add_argument("--minutes", type=float, nargs="+", default=[10, 30, 60])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gallery", default="docs/errors_generic_varlen.png", help="misses of the longest budget")
    a = parse(ap, "benchmarks/results/time_curve.json", table)
    todo = (whole(a.root, a.dataset, a.seed, m) for m in a.minutes)
    print(table(measure(todo, a, extra=lambda t, sc: misses(t, sc, Path(a.gallery) if sc.minutes == max(a.minutes)
                                                             else None))))


if __name__ == "__main__":
    main()
