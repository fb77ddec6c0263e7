"""Held-out accuracy against the time budget of the default command, and what the remaining misses are.

    python benchmarks/time_curve.py [--dataset generic_varlen] [--minutes 10 30 60] [--seed 0]
        [--root ../shared/datasets] [--json benchmarks/results/time_curve.json] [--gallery docs/errors_generic.png]

Each budget is one `captcha-crnn train DATA --max-minutes M` (the default recipe; the dataset's case
rule). The output model reads the held-out split; its misses are sorted by kind:

- lookalike: same length, and every differing character is a lookalike of the truth's in some fonts
  (LOOKALIKES: 0/o, 1/l/i/j, 5/s, 2/z, 9/g/q, ...);
- length: a character too many or too few;
- other: same length, some other character read wrong.

"if lookalikes counted" is the accuracy when those misses count as right: how much of what is left
is font ambiguity rather than the model. The longest budget's misses are drawn (--gallery). The output's reading speed
(student.py: reading_speed) is given beside the shipped captcha_v2 model's, on the same bytes.
A budget replaces the same dataset and budget in --json.
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from captcha_crnn import Recognizer
from captcha_crnn.data.images import load_image
from captcha_crnn.evaluate import align, fold
from captcha_crnn.model.modelfile import read_metadata
from captcha_crnn.training import TrainConfig, train
from captcha_crnn.training.data import load_data
from captcha_crnn.viz import errors_gallery

sys.path.insert(0, str(Path(__file__).parent))
from datasets import DATASETS, common_args, save_runs, saved_runs  # noqa: E402
from student import reading_speed  # noqa: E402

LOOKALIKES = ("0oOQD", "1lIij|", "5sS", "2zZ", "9gq", "6b", "8B", "uvUV", "cC", "kK", "wW", "xX", "pP", "yY")


def lookalike(a: str, b: str) -> bool:
    """Whether characters a and b look alike in some fonts (LOOKALIKES)."""
    return any(a in group and b in group for group in LOOKALIKES)


def miss_kind(truth: str, pred: str) -> str:
    """'right', 'length', 'lookalike' or 'other' (see the module docstring)."""
    if truth == pred:
        return "right"
    if len(truth) != len(pred):
        return "length"
    _, _, subs = align(truth, pred)
    return "lookalike" if subs and all(lookalike(t, p) for t, p in subs) else "other"


def breakdown(truths: list[str], preds: list[str]) -> dict[str, Any]:
    """Counts of each kind, the commonest substitutions and the accuracy if lookalikes counted."""
    kinds = Counter(miss_kind(t, p) for t, p in zip(truths, preds))
    subs: Counter[tuple[str, str]] = Counter()
    for t, p in zip(truths, preds):
        if t != p and len(t) == len(p):
            subs.update(align(t, p)[2])
    n = len(truths)
    return {"n": n, "right": kinds["right"], "length": kinds["length"], "lookalike": kinds["lookalike"],
            "other": kinds["other"], "accuracy": kinds["right"] / n,
            "accuracy_if_lookalikes_counted": (kinds["right"] + kinds["lookalike"]) / n,
            "top_substitutions": [f"{t}->{p} x{c}" for (t, p), c in subs.most_common(12)]}


def run(dataset: str, minutes: float, seed: int, root: Path, gallery: Path | None) -> dict[str, Any]:
    """Train with the default command under `minutes`, then score() its output."""
    ds = DATASETS[dataset]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        r = train(str(root / ds.path), TrainConfig(out=tmp, max_minutes=minutes, seed=seed, case=ds.case,
                                                   progress=False))
        recipe = r.recipe or {}
        stages = {k: {f: recipe[k][f] for f in ("val", "epochs", "minutes", "test")}
                  for k in ("student", "teacher") if k in recipe}  # val, test: each stage's own split
        return {**score(dataset, r.model_path, seed, root, gallery), "minutes": minutes,
                "reader": recipe.get("output", {}).get("reader", "single model"), "stages": stages,
                "wall_minutes": (time.perf_counter() - t0) / 60}


def score(dataset: str, model: Path, seed: int, root: Path, gallery: Path | None) -> dict[str, Any]:
    """A model's misses by kind on the seed's test split, its reading speed, and its error gallery."""
    ds = DATASETS[dataset]
    blind = ds.case == "insensitive"
    _, _, held, _ = load_data(TrainConfig(data=str(root / ds.path), seed=seed, case=ds.case))  # train's split
    rec = Recognizer.load(model)
    preds = [fold(p.text, blind) for p in rec.predict([s.path for s in held])]
    truths = [fold(s.label, blind) for s in held]
    sample = [Path(s.path).read_bytes() for s in held[:300]]
    row = {"dataset": dataset, "seed": seed, "architecture": read_metadata(model).get("architecture"),
           "input_height": rec.preprocess.height, "load_avg": os.getloadavg(), **breakdown(truths, preds),
           "images_per_s": round(reading_speed(model, sample), 1),
           "shipped_captcha_v2_images_per_s": round(reading_speed("captcha_v2", sample), 1)}
    if gallery:
        images = [load_image(s.path, rec.preprocess) for s in held]  # (C, H, W) each
        errors_gallery(images, truths, preds, gallery)
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| dataset | budget | held-out | if lookalikes counted | misses: length / lookalike / other | "
             "output, input rows |", "|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["dataset"], r["minutes"])):
        lines.append(f"| {r['dataset']} | {r['minutes']:g} min | {r['accuracy']:.2%} | "
                     f"{r['accuracy_if_lookalikes_counted']:.2%} | {r['length']} / {r['lookalike']} / {r['other']} | "
                     f"{r['reader']}, {r.get('input_height', '-')} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=list(DATASETS), default="generic_varlen")
    ap.add_argument("--minutes", type=float, nargs="+", default=[10, 30, 60])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gallery", default="docs/errors_generic_varlen.png", help="misses of the longest budget")
    ap.add_argument("--evaluate", metavar="MODEL", help="score this model, trained under --minutes, instead")
    ap.add_argument("--reader", default="teacher", help="with --evaluate: which model of the recipe it is")
    common_args(ap, "benchmarks/results/time_curve.json")
    a = ap.parse_args()
    if a.table:
        print(table(saved_runs(a.table)))
        return
    if a.evaluate:  # a model trained earlier under the one budget named
        row = {**score(a.dataset, Path(a.evaluate), a.seed, Path(a.root), Path(a.gallery)), "minutes": a.minutes[0],
               "reader": a.reader}
        rows = [r for r in saved_runs(a.json) if (r["dataset"], r["minutes"]) != (a.dataset, a.minutes[0])] + [row]
        save_runs(a.json, rows)
        print(table(rows))
        return
    for m in a.minutes:
        row = run(a.dataset, m, a.seed, Path(a.root), Path(a.gallery) if m == max(a.minutes) else None)
        print(f"{a.dataset} {m:g} min: {row['accuracy']:.2%}", file=sys.stderr, flush=True)
        rows = [r for r in saved_runs(a.json) if (r["dataset"], r["minutes"]) != (a.dataset, m)] + [row]
        save_runs(a.json, rows)
    print(table(rows))


if __name__ == "__main__":
    main()
