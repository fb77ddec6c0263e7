"""How many human corrections labelling takes, with the page's pre-fill and least-sure-first order,
against labelling in file order with nothing pre-filled. The person is simulated by the true labels.

    python benchmarks/labelling.py [--dataset captcha_v2] [--batch 25] [--rounds 8] [--minutes 1.0]
        [--seed 0] [--root ../shared/datasets] [--json benchmarks/results/labelling.json]

A seeded 10% of the set is held out. Each round, `--batch` more images are labelled: with the
pre-fill, the images the current model is least sure of (confidence of the CTC decode), where a
right pre-fill costs no correction (Enter) and a wrong one costs one; in file order, every label
is typed. Before the first training the pre-fill is the page's default (`captcha-crnn label` with
no --model): ddddocr's own model zero-shot where the pretrained extra is installed, restricted to
the set's alphabet as `--charset` would be; as on the page, a newly trained model replaces the
pre-fill only when it reads the held-out images at least as well. After each round `captcha-crnn train` (defaults,
`--max-minutes`) trains on the labels so far, as "Train now" does, and the held-out accuracy is
measured. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from captcha_crnn import Recognizer
from captcha_crnn.data.labels import Sample, read_samples, write_csv
from captcha_crnn.data.split import split_items
from captcha_crnn.infer.ddddocr_reader import DdddocrReader
from captcha_crnn.service.labelling import better_reader, load_reader
from captcha_crnn.training import TrainConfig, train

sys.path.insert(0, str(Path(__file__).parent))
from datasets import DATASETS  # noqa: E402


def train_round(labelled: list[Sample], test_csv: Path, tmp: Path, name: str, minutes: float, seed: int) -> Any:
    pool = write_csv(labelled, tmp / f"{name}.csv")
    cfg = TrainConfig(out=str(tmp / name), max_minutes=minutes, seed=seed, test_data=str(test_csv),
                      progress=False)
    return train(str(pool), cfg)


def simulate(samples: list[Sample], test_csv: Path, tmp: Path, prefill: bool, a: argparse.Namespace) -> list[dict]:
    """Rounds of labelling `a.batch` images and training; corrections counted as the person would make them."""
    todo, labelled, corrections, rows = list(samples), [], 0, []
    charset = "".join(sorted({c for s in samples for c in s.label}))
    reader = load_reader(None, charset)[0] if prefill else None  # the page's default pre-fill
    for r in range(1, a.rounds + 1):
        source = "-" if reader is None else "ddddocr" if isinstance(reader, DdddocrReader) else "trained"
        if reader is not None:
            preds = reader.predict([s.path for s in todo])
            ranked = sorted(range(len(todo)), key=lambda i: preds[i].confidence)[: a.batch]
            right = sum(preds[i].text == todo[i].label for i in ranked)
            corrections += len(ranked) - right
            picked = set(ranked)
        else:
            right, picked = None, set(range(min(a.batch, len(todo))))
            corrections += len(picked)
        labelled += [todo[i] for i in sorted(picked)]
        todo = [s for i, s in enumerate(todo) if i not in picked]
        res = train_round(labelled, test_csv, tmp, f"{'prefill' if prefill else 'order'}-{r}", a.minutes, a.seed)
        if prefill:  # as the page does: the new model replaces the pre-fill unless it reads worse
            new = Recognizer.load(res.model_path)
            reader = reader if better_reader(reader, new, res.model_path) else new
        acc = res.test.sequence_accuracy if res.test else 0.0
        rows.append({"round": r, "labelled": len(labelled), "corrections": corrections,
                     "prefill_right": None if right is None else right / a.batch, "prefill_from": source,
                     "held_out_accuracy": acc})
        print(f"{'pre-fill' if prefill else 'file order'} round {r}: {len(labelled)} labelled, {corrections} "
              f"corrections, held-out {acc:.2%}", file=sys.stderr, flush=True)
        if acc >= 0.99:
            break
    return rows


def first_reaching(rows: list[dict], target: float) -> int | None:
    return next((r["corrections"] for r in rows if r["held_out_accuracy"] >= target), None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=list(DATASETS), default="captcha_v2")
    ap.add_argument("--root", default="../shared/datasets")
    ap.add_argument("--batch", type=int, default=25)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--minutes", type=float, default=1.0, help="training budget per round")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--strategies", default="prefill,order", help="comma-separated: prefill, order")
    ap.add_argument("--json", default="benchmarks/results/labelling.json")
    a = ap.parse_args()
    ds = DATASETS[a.dataset]
    samples = sorted(read_samples(str(Path(a.root) / ds.path)), key=lambda s: s.path)
    rest, _, held = split_items(samples, a.seed, 0.0, 0.1)
    rest = sorted(rest, key=lambda s: s.path)  # file order: what a person sees in a folder
    with tempfile.TemporaryDirectory() as tmp:
        test_csv = write_csv(held, Path(tmp) / "test.csv")
        runs = {k: simulate(rest, test_csv, Path(tmp), k == "prefill", a) for k in a.strategies.split(",")}
    print("| strategy | round | labelled | corrections | pre-fill from | pre-fills right | held-out accuracy |")
    print("|---|---|---|---|---|---|---|")
    for k, rows in runs.items():
        for r in rows:
            pr = "-" if r["prefill_right"] is None else f"{r['prefill_right']:.0%}"
            acc = f"{r['held_out_accuracy']:.2%}"
            print(f"| {k} | {r['round']} | {r['labelled']} | {r['corrections']} | {r['prefill_from']} | {pr} | {acc} |")
    summary = {k: {"corrections_to_95": first_reaching(v, 0.95), "corrections_to_99": first_reaching(v, 0.99)}
               for k, v in runs.items()}
    print(json.dumps(summary))
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps({"dataset": a.dataset, "batch": a.batch, "minutes": a.minutes,
                                        "seed": a.seed, "runs": runs, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
