"""How many human corrections labelling takes, with the page's pre-fill and least-sure-first order,
against labelling in file order with nothing pre-filled. The person is simulated by the true labels.

    python benchmarks/labelling.py [--dataset captcha_v2] [--batch 25] [--rounds 8] [--minutes 1.0] [--seed 0]
        [--strategies prefill,order] [--root ../shared/datasets] [--json benchmarks/results/labelling.json]

A seeded 10% is held out. Each round `--batch` more images are labelled: with the pre-fill, those the
reader is least sure of (a wrong pre-fill costs a correction; the first reader is the page's default,
ddddocr zero-shot; a trained model replaces it only when it reads the held-out images at least as well);
in file order, every label is typed. Then `captcha-crnn train --max-minutes M` trains on the labels so
far, as "Train now" does, and reads the held-out images (benchmarks/harness.py). Prints a table and
writes JSON (a row per round).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from harness import DATASETS, Scenario, held_out, markdown, parse, run, samples, save_runs

from captcha_crnn import Recognizer
from captcha_crnn.data.labels import Sample
from captcha_crnn.infer.ddddocr_reader import DdddocrReader
from captcha_crnn.service.labelling import better_reader, load_reader


def simulate(todo: list[Sample], held: list[Sample], tmp: Path, strategy: str, a: argparse.Namespace) -> list[dict]:
    """Rounds of labelling `a.batch` images and training; corrections counted as the person would make them."""
    labelled, corrections, rows = [], 0, []
    charset = "".join(sorted({c for s in todo for c in s.label}))
    reader = load_reader(None, charset)[0] if strategy == "prefill" else None  # the page's default pre-fill
    for r in range(1, a.rounds + 1):
        source = "-" if reader is None else "ddddocr" if isinstance(reader, DdddocrReader) else "trained"
        if reader is not None:
            preds = reader.predict([s.path for s in todo])
            picked = set(sorted(range(len(todo)), key=lambda i: preds[i].confidence)[: a.batch])
            right = sum(preds[i].text == todo[i].label for i in picked)
        else:
            right, picked = None, set(range(min(a.batch, len(todo))))
        corrections += len(picked) - (right or 0)
        labelled += [todo[i] for i in sorted(picked)]
        todo = [s for i, s in enumerate(todo) if i not in picked]
        t = run(Scenario(f"{strategy}-{r}", labelled, held, [], a.minutes, seed=a.seed, overrides=dict(a.set),
                         held_as_test=True), tmp, speed=False)
        if strategy == "prefill":  # as the page does: the new model replaces the pre-fill unless it reads worse
            new = Recognizer.load(t.result.model_path)
            reader = reader if better_reader(reader, new, t.result.model_path) else new
        rows.append({**t.row, "strategy": strategy, "round": r, "corrections": corrections, "prefill_from": source,
                     "prefill_right": right and right / a.batch})
        print(f"{strategy} {r}: {len(labelled)} labels, {corrections} fixes, {t.row['accuracy']:.2%}", file=sys.stderr)
        if t.row["accuracy"] >= 0.99:
            break
    return rows


def table(rows: list[dict]) -> str:
    return markdown(["strategy", "round", "labelled", "corrections", "pre-fill from", "pre-fills right",
                     "held-out accuracy"], ([r["strategy"], r["round"], r["labelled"], r["corrections"],
                                             r.get("prefill_from", "-"), "-" if r["prefill_right"] is None else
                                             f"{r['prefill_right']:.0%}", f"{r['accuracy']:.2%}"] for r in rows))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=list(DATASETS), default="captcha_v2")
    ap.add_argument("--batch", type=int, default=25)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--minutes", type=float, default=1.0, help="training budget per round")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--strategies", default="prefill,order", help="comma-separated: prefill, order")
    a = parse(ap, "benchmarks/results/labelling.json", table)
    rest, held = held_out(samples(a.root, a.dataset), a.seed)  # rest in file order: what a person sees in a folder
    with tempfile.TemporaryDirectory() as tmp:
        rows = [r for k in a.strategies.split(",") for r in simulate(rest, held, Path(tmp), k, a)]
    first = {k: {f"corrections_to_{p}": next((r["corrections"] for r in rows if r["strategy"] == k and r["accuracy"]
                                              >= p / 100), None) for p in (95, 99)} for k in a.strategies.split(",")}
    save_runs(a.json, rows, dataset=a.dataset, batch=a.batch, summary=first)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
